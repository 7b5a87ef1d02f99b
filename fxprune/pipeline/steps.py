"""Iterative pruning: the pipeline once per step towards one ratio or budget, with a callback
(a fine-tune) between steps; the result reports against the ORIGINAL model."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.fx as fx

from ..budget import BudgetResult
from ..errors import FxPruneError, StageError, first_line
from ..options import Budget, CompressOptions
from ..plan import Plan
from ..report import Models, count_cost, count_params, result_of

Once = Callable[[torch.nn.Module, tuple, CompressOptions], fx.GraphModule]


def _call_back(callback: Callable, gm: fx.GraphModule, step: int) -> torch.nn.Module:
    try:
        return callback(gm, step) or gm
    except FxPruneError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's callback: named, chained
        raise StageError(f"the callback raised after step {step}: {first_line(exc)}",
                         "callback") from exc


def run_steps(model: torch.nn.Module, inputs: tuple, options: CompressOptions, *,
              once: Once) -> fx.GraphModule:
    """``options.steps`` runs of ``once`` (the single-step pipeline), each on the previous
    result. A ratio is split geometrically (every step keeps the same fraction); a budget is
    re-aimed after every step from the cost actually reached, so the steps shrink the model
    evenly and the last one lands on the target. ``result_of(gm).history`` holds every
    step's plan (``fxprune.save`` stores them all)."""
    steps, budget, callback = options.steps, options.budget, options.callback
    keep = 1.0 - options.select.ratio
    if budget is not None:
        dense = count_cost(model, inputs, budget.kind)
        final = budget.absolute(dense)
    history: list[Plan] = []
    current, step_inputs, notes = model, inputs, []
    for step in range(1, steps + 1):
        if budget is not None:
            now = count_cost(current, step_inputs, budget.kind)
            aim = min(now, now * (final / now) ** (1 / (steps - step + 1)))
            step_options = dataclasses.replace(options, steps=1, budget=Budget(budget.kind, aim))
        else:
            step_options = dataclasses.replace(options, steps=1, select=dataclasses.replace(
                options.select, ratio=1.0 - keep ** (1.0 / steps)))
        gm = once(current, step_inputs, step_options)
        meta = result_of(gm)
        history.extend(meta.history)
        notes.extend(f"step {step}: {n}" for n in meta.plan.notes)
        step_inputs = meta.report.models.pruned_inputs
        current = _call_back(callback, gm, step) if step < steps and callback else gm
    meta = result_of(gm)
    last = meta.report
    report = dataclasses.replace(
        last, params_before=count_params(model), notes=notes,
        models=Models(model, gm, inputs, step_inputs),
        groups={k: {"before": history[0].groups.get(k, v)["before"], "after": v["after"]}
                for k, v in last.groups.items()})
    report.__dict__.pop("flops_before", None)  # cached properties: recount on the new models
    report.__dict__.pop("flops_after", None)
    if budget is not None:
        report.budget = BudgetResult(budget.kind, final, dense,
                                     count_cost(gm, step_inputs, budget.kind),
                                     last.budget.ratio if last.budget else 0.0)
    meta.report, meta.history, meta.options = report, history, options
    return gm
