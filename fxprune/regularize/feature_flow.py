"""Feature-flow regularisation (FFR) - a *reconstruction* (methods.md 2: no code or full
text is public): the block outputs x_0 ... x_L of a mini-batch form a trajectory; penalise
its length, sum ||x_{l+1} - x_l||, and its curvature, sum ||x_{l+1} - 2 x_l + x_{l-1}||
(the arXiv reading), over runs of consecutive outputs of equal shape (per-sample L2 norms,
averaged over the batch). Short, straight flows let whole filters fall to zero."""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from ..calibrate import follow, tap_points, tapped_module
from ..errors import FxPruneError, OptionError
from .units import graph_of

_ADDS = (operator.add, operator.iadd, torch.add, "add", "add_")


class _Keep(torch.nn.Module):
    def __init__(self, store: list):
        super().__init__()
        self.store = store

    def forward(self, x: torch.Tensor) -> None:
        self.store.append(x)


class FeatureFlow:
    """Train ``ffr.model`` (a GraphModule sharing the model's parameters, with taps that keep
    the block outputs) and add ``ffr()`` to the loss after each forward::

        ffr = FeatureFlow(model, example_inputs=x, lam_length=1e-4, lam_curvature=1e-4)
        loss = F.cross_entropy(ffr.model(x), y) + ffr()

    ``nodes="auto"`` observes residual block outputs (after the add and its activation), or
    every producer's post-activation output in a net without residual adds; or pass node
    names. Wrap ``ffr.model`` in DDP as any module.
    """

    def __init__(self, model_or_graph, lam_length: float, lam_curvature: float, *,
                 example_inputs=None, nodes="auto", **trace_kw):
        self.graph = graph_of(model_or_graph, example_inputs, **trace_kw)
        self.lam_length, self.lam_curvature = lam_length, lam_curvature
        names = self._auto_nodes() if nodes == "auto" else list(nodes)
        values = self.graph.traced.values
        unknown = [n for n in names if n not in values]
        if unknown:
            raise OptionError(f"unknown nodes {unknown}")
        self.nodes = names
        self.runs = _runs(names, [tuple(values[n].shape[1:]) for n in names])
        self._store: list[torch.Tensor] = []
        self.model = tapped_module(self.graph.traced.gm, [(n, _Keep(self._store)) for n in names])

    def _auto_nodes(self) -> list[str]:
        g = self.graph
        order = {n.name: i for i, n in enumerate(g.traced.gm.graph.nodes)}
        outs = []
        for node in g.traced.gm.graph.nodes:
            if _is_residual_add(node, g.traced.values):
                outs.append(follow(g, node).name)
        if not outs:
            outs = [t.node for t in tap_points(g)]
        return sorted(set(outs), key=order.__getitem__)

    def __call__(self) -> torch.Tensor:
        """The penalty of the last forward of ``self.model``; clears the kept outputs."""
        if len(self._store) != len(self.nodes):
            raise FxPruneError(f"FeatureFlow expected {len(self.nodes)} kept outputs, got "
                               f"{len(self._store)}: call it once after each ffr.model(...)")
        xs = [x.flatten(1) for x in self._store]
        self._store.clear()
        length = curvature = xs[0].new_zeros(())
        for run in self.runs:
            seq = [xs[i] for i in run]
            for a, b in zip(seq, seq[1:]):
                length = length + (b - a).norm(dim=1).mean()
            for a, b, c in zip(seq, seq[1:], seq[2:]):
                curvature = curvature + (c - 2 * b + a).norm(dim=1).mean()
        return self.lam_length * length + self.lam_curvature * curvature


def _is_residual_add(node: fx.Node, values: dict) -> bool:
    if node.op not in ("call_function", "call_method") or node.target not in _ADDS:
        return False
    args = [a for a in node.args[:2] if isinstance(a, fx.Node)]
    shapes = [getattr(values.get(a.name), "shape", None) for a in args]
    return len(args) == 2 and shapes[0] is not None and shapes[0] == shapes[1]


def _runs(names: list[str], shapes: list[tuple]) -> list[list[int]]:
    """Maximal runs of consecutive nodes with the same (per-sample) shape, length >= 2."""
    runs, cur = [], [0] if names else []
    for i in range(1, len(names)):
        if shapes[i] == shapes[cur[-1]]:
            cur.append(i)
        else:
            runs.append(cur)
            cur = [i]
    if cur:
        runs.append(cur)
    return [r for r in runs if len(r) >= 2]
