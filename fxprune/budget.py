"""Budgets: prune to a FLOPs or parameter target instead of a channel ratio.

The selection's one knob (the ratio; with global ranking, the quantile of the normalised
scores - a global threshold) is found by bisection against the analytic cost model, which
costs a few milliseconds per evaluation. FLOPs the model does not see (attention matmuls,
functional ops) are taken from one flop_counter pass of the dense model as a constant; when
they are not constant (attention matmuls shrink with the head dims) and the pruned model
misses the target, the bisection is redone on the measured cost (a rewrite per step).
CNNs land on the analytic solve.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .analyze.graph import ChannelGraph
from .cost import CostModel
from .errors import SelectionError
from .options import AttentionOptions, Budget, SelectOptions
from .plan import Plan
from .select import select

log = logging.getLogger(__name__)
TOLERANCE = 0.01  # relative: |achieved / target - 1|
BISECTION_STEPS = 30
MAX_RATIO = 0.999  # the selection knob's upper end: everything prunable goes


@dataclass
class BudgetResult:
    kind: str
    target: float  # absolute
    dense: float
    achieved: float  # measured on the pruned model
    ratio: float  # the selection knob that met it

    @property
    def error(self) -> float:
        return self.achieved / self.target - 1.0

    def __str__(self) -> str:
        return (f"{self.kind} target {self.target:,.0f} ({self.target / self.dense:.1%} of "
                f"dense): achieved {self.achieved:,.0f} ({self.error:+.2%})")


def solve(graph: ChannelGraph, scores: np.ndarray, budget: Budget, dense: float,
          measure: Callable[[Plan], float], options: SelectOptions = SelectOptions(),
          attention: AttentionOptions = AttentionOptions()) -> tuple[Plan, BudgetResult]:
    """The plan whose pruned model meets ``budget``. ``dense`` is the measured cost of the
    unpruned model, ``measure(plan)`` that of the model a plan gives (params: a count;
    FLOPs: flop_counter). ``options.ratio`` is the knob that is bisected."""

    def plan_at(ratio: float) -> Plan:
        return select(graph, scores, dataclasses.replace(options, ratio=ratio), attention)

    target = budget.absolute(dense)
    model = CostModel(graph, budget=budget.kind)
    n = len(graph.labels)
    scale = 2.0 if budget.kind == "flops" else 1.0  # flop_counter counts 2 per MAC
    analytic_dense = scale * model(np.ones(n, dtype=bool))
    unmodelled = dense - analytic_dense  # held fixed; corrected below if it is not

    def analytic(ratio: float) -> tuple[Plan, float]:
        plan = plan_at(ratio)
        keep = np.ones(n, dtype=bool)
        keep[plan.removed_units(graph)] = False
        return plan, scale * model(keep) + unmodelled

    ratio, plan = _bisect(analytic, target)
    achieved = measure(plan)
    if abs(achieved / target - 1.0) > TOLERANCE:
        # FLOPs the analytic model does not see shrink too (attention matmuls with the
        # head dims): bisect again on the measured cost, each step a rewrite
        log.info("budget: analytic solve missed by %+.2f%%; bisecting on the measured %s",
                 100 * (achieved / target - 1.0), budget.kind)

        def measured(ratio: float) -> tuple[Plan, float]:
            plan = plan_at(ratio)
            return plan, measure(plan)

        ratio, plan = _bisect(measured, target, stop=TOLERANCE)
        achieved = measure(plan)
    result = BudgetResult(budget.kind, target, dense, achieved, ratio)
    if result.error > TOLERANCE and ratio >= MAX_RATIO:
        raise SelectionError(
            f"cannot reach {result.kind} {target:,.0f}: pruning every group as far as allowed "
            f"leaves {achieved:,.0f} ({result.error:+.1%}). Ignored modules, min_channels, "
            "round_to and frozen ops bound it (see fxprune.analyze(model, x)).")
    if abs(result.error) > TOLERANCE:
        plan.notes.append(f"budget not met within {TOLERANCE:.0%}: {result} (the group "
                          "constraints - min_channels, round_to, head counts - bound it)")
    return plan, result


def _bisect(cost_of: Callable[[float], tuple[Plan, float]], goal: float,
            stop: float = 0.0) -> tuple[float, Plan]:
    """The ratio whose cost is closest to ``goal`` among the bracket ends; ``stop`` ends
    early once a cost is within that relative distance."""
    lo, hi = 0.0, MAX_RATIO
    plan_lo, cost_lo = cost_of(lo)
    if cost_lo <= goal:
        return lo, plan_lo
    plan_hi, cost_hi = cost_of(hi)
    if cost_hi >= goal:
        return hi, plan_hi
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        plan, cost = cost_of(mid)
        if abs(cost / goal - 1.0) <= stop:
            return mid, plan
        if cost > goal:
            lo, plan_lo, cost_lo = mid, plan, cost
        else:
            hi, plan_hi, cost_hi = mid, plan, cost
        if (cost_lo - cost_hi) <= 1e-4 * goal:
            break
    if cost_lo - goal < goal - cost_hi:
        return lo, plan_lo
    return hi, plan_hi
