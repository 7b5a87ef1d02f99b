"""Group lasso over coupled units: lam * sum_u ||theta_u||_2, a loss term."""

from __future__ import annotations

import torch

from .units import UnitNorms, graph_of, input_units


class GroupLasso:
    """``loss = task_loss + GroupLasso(model, lam, example_inputs=x)()``.

    Every unit is every parameter slice the rewrite would remove together (producer rows,
    BN scales, consumer columns), so units the penalty drives to zero are exactly removable:
    ``compress(model, x, threshold=eps)`` then removes them. Works under DDP (the penalty is
    the same on every rank, so the averaged gradient is the single-process one).

    ``inputs_only=True`` penalises only the input features' units (the first layer's
    columns), for joint weight + input-feature pruning; it traces with ``prune_inputs``.
    """

    def __init__(self, model_or_graph, lam: float, example_inputs=None, eps: float = 1e-12,
                 inputs_only: bool = False, **trace_kw):
        if inputs_only:
            trace_kw["prune_inputs"] = True
        self.graph = graph_of(model_or_graph, example_inputs, **trace_kw)
        self.lam = lam
        self.eps = eps  # inside the square root: a finite gradient at exactly zero
        self.norms = UnitNorms(self.graph, units=input_units(self.graph) if inputs_only
                               else None)

    def __call__(self) -> torch.Tensor:
        return self.lam * (self.norms.squared() + self.eps).sqrt().sum()

    def unit_norms(self) -> torch.Tensor:
        with torch.no_grad():
            return self.norms.squared().sqrt()
