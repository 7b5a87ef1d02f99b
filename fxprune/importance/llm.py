"""Scores from the *input* features of the layers that read a unit, as the LLM pruners do:
a unit is worth what its columns of the consumer weight carry on real data.

- ``wanda_sp`` (Wanda, structured; An et al. 2024's baseline): sum over the unit's input
  columns j of ``||X_j||_2 * sum_i |W_ij|``.
- ``flap`` (An et al., AAAI 2024): the fluctuation ``Var(X_j) * ||W_:,j||_2^2`` (variance over
  every token / position, population form), and by default its bias compensation
  (``compensate="mean"``: ``b += W_:,R mean(X_R)``, the removed columns' average output).

Consumers are linear layers (also ``addmm`` with GPT-2's (in, out) weights) and convolutions
with groups = 1; running sums of x and x^2 per input channel: O(C) memory per consumer.
Units no consumer reads fall back to L2 magnitude.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx

from ..analyze.elements import axis_ids
from ..calibrate import Tap, all_reduce_fields, run_taps
from .base import Calibration, Importance, register, require
from .magnitude import GroupMagnitude

log = logging.getLogger(__name__)


class InputMoments:
    """Per channel (dim 1) running sums of x and x^2 over every other position."""

    def __init__(self):
        self.s1: torch.Tensor | None = None
        self.s2: torch.Tensor | None = None
        self.count = 0

    def update(self, x: torch.Tensor) -> None:
        f = x.movedim(1, -1).reshape(-1, x.shape[1]).double()
        s1, s2 = f.sum(0), (f * f).sum(0)
        self.s1 = s1 if self.s1 is None else self.s1 + s1
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.count += f.shape[0]

    def all_reduce(self) -> None:
        all_reduce_fields(self, ("s1", "s2", "count"))

    def norm(self) -> torch.Tensor:
        return self.s2.sqrt()

    def variance(self) -> torch.Tensor:
        mu = self.s1 / max(self.count, 1)
        return (self.s2 / max(self.count, 1) - mu * mu).clamp_min(0)


@dataclass
class ConsumerInput:
    """A weight reading an activation: ``weight`` dim ``in_dim`` is the input channel that sits
    on dim ``dim`` of node ``input``; ``tap`` observes it."""

    node: str
    weight: str
    in_dim: int
    tap: Tap


def consumer_inputs(graph) -> list[ConsumerInput]:
    out = []
    for node in graph.traced.gm.graph.nodes:
        rule = graph.rules.get(node.name)
        name = getattr(rule, "name", None)
        if name not in ("linear", "addmm", "conv") or node.op not in ("call_function",
                                                                     "call_module"):
            continue
        weight = rule.weight_of(node)
        if weight is None or weight not in graph.params:
            continue
        if name == "conv" and (type(rule).__name__ != "Conv" or _groups(graph, node) != 1):
            continue
        x = node.args[1] if name == "addmm" else node.args[0]
        axes = graph.ctx.axes.get(x.name) if isinstance(x, fx.Node) else None
        if not isinstance(axes, list) or not axes:
            continue
        dim = 1 if name == "conv" else len(axes) - 1
        if not axes[dim].full:
            continue
        tap = Tap(x.name, dim, graph.labels[axis_ids(axes[dim])])
        out.append(ConsumerInput(node.name, weight, 0 if name == "addmm" else 1, tap))
    return out


def _groups(graph, node: fx.Node) -> int:
    """groups of a plain (not transposed) convolution; 0 for anything else."""
    if node.op == "call_module":
        mod = graph.ctx.modules[node.target]
        return 0 if getattr(mod, "transposed", True) else int(mod.groups)
    if "transpose" in str(node.target):
        return 0
    g = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
    return int(g) if isinstance(g, int) else 0


class InputFeatureImportance(Importance):
    """Subclass and implement :meth:`column_scores` (one value per input channel)."""

    needs = "data"

    def column_scores(self, w_abs_sum: torch.Tensor, w_sq_sum: torch.Tensor,
                      stat: InputMoments) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, graph, calib: Calibration | None = None) -> np.ndarray:
        calib = require(self, calib)
        sites = consumer_inputs(graph)
        stats = {s.tap.key: InputMoments() for s in sites}
        seen = run_taps(graph, stats, calib.data, max_batches=calib.max_batches)
        log.info("%s: %d consumer inputs over %d calibration batches", self.name, len(stats),
                 seen)
        n = len(graph.labels)
        acc, covered = np.zeros(n), np.zeros(n, dtype=bool)
        with torch.no_grad():
            for s in sites:
                w = graph.traced.tensors[s.weight].detach().double()
                other = [d for d in range(w.dim()) if d != s.in_dim]
                col = self.column_scores(w.abs().sum(other), (w * w).sum(other),
                                         stats[s.tap.key]).numpy()
                acc += np.bincount(s.tap.labels, col, n)
                covered[s.tap.labels] = True
        if not covered.all():
            acc = np.where(covered, acc, GroupMagnitude(2).scores(graph))
        return acc


class WandaSP(InputFeatureImportance):
    name = "wanda_sp"

    def column_scores(self, w_abs_sum, w_sq_sum, stat):
        return stat.norm() * w_abs_sum


class FLAP(InputFeatureImportance):
    name = "flap"
    compensate = "mean"

    def column_scores(self, w_abs_sum, w_sq_sum, stat):
        return stat.variance() * w_sq_sum


register("wanda_sp", WandaSP)
register("flap", FLAP)
