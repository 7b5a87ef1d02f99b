"""Differentiable per-unit norms over the channel graph: a unit is every parameter slice the
rewrite removes together, so a regulariser built on these norms pushes exactly removable
structures to zero. One ``index_add`` per parameter axis, on the live parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..analyze.graph import ChannelGraph
from ..errors import OptionError


@dataclass
class _Slice:
    qualname: str
    keep_dims: tuple[int, ...]  # dims that index units; the others are summed over
    index: torch.Tensor  # compact unit index per position of ``keep_dims`` (flattened)


class UnitNorms:
    """Squared L2 norm of every prunable unit (units of the graph's groups), as a torch
    vector over ``self.units`` (unit labels, sorted)."""

    def __init__(self, graph: ChannelGraph, which: str = "all",
                 units: np.ndarray | None = None):
        self.graph = graph
        if units is None:
            units = np.unique(np.concatenate([g.units for g in graph.groups])) if graph.groups \
                else np.zeros(0, dtype=np.int64)
        self.units = units
        local = np.full(len(graph.labels), -1, dtype=np.int64)
        local[units] = np.arange(units.size)
        self.local = local  # unit label -> position in the vector (-1: not prunable)
        tensors = graph.traced.tensors
        bn = _batchnorm_params(graph)
        self.slices: list[_Slice] = []
        for info in graph.params.values():
            t = tensors.get(info.qualname)
            if not _trainable(t) or (which == "bn" and info.qualname not in bn):
                continue
            for dim, ax in enumerate(info.axes):
                if dim in info.roles and info.shape[dim]:
                    self._add(info.qualname, (dim,), graph.labels[ax.comp.ids])
        if which == "all":
            for c in graph.ctx.consumers:
                if len(c.dims) >= 2 and _trainable(tensors.get(c.qualname)):
                    self._add(c.qualname, tuple(c.dims), graph.labels[c.ids.reshape(-1)])
        self.params = {s.qualname: tensors[s.qualname] for s in self.slices}

    def _add(self, qualname: str, dims: tuple[int, ...], labels: np.ndarray) -> None:
        idx = self.local[labels]
        if (idx >= 0).any():
            self.slices.append(_Slice(qualname, dims, torch.as_tensor(idx)))

    def squared(self, transform: Any = None) -> torch.Tensor:
        """Per unit, the sum of squares of its slices (``transform(qualname, p)`` may replace
        the parameter, e.g. by a masked or detached view)."""
        out = None
        for s in self.slices:
            p = self.params[s.qualname]
            p = transform(s.qualname, p) if transform is not None else p
            other = [d for d in range(p.dim()) if d not in s.keep_dims]
            sq = (p * p).sum(dim=other) if other else p * p
            sq = sq.reshape(-1)
            keep = s.index >= 0
            if out is None:
                out = torch.zeros(self.units.size, dtype=sq.dtype, device=sq.device)
            out = out.index_add(0, s.index[keep], sq[keep])
        if out is None:
            return torch.zeros(self.units.size)
        return out


def input_units(graph: ChannelGraph) -> np.ndarray:
    """Units of the inputs' feature axis (a graph built with ``prune_inputs=True``)."""
    from ..analyze.elements import axis_ids

    out = [graph.labels[axis_ids(graph.ctx.axes[n.name][1])]
           for n in graph.traced.gm.graph.nodes
           if n.op == "placeholder" and isinstance(graph.ctx.axes.get(n.name), list)
           and len(graph.ctx.axes[n.name]) >= 2]
    if not out or not graph.ctx.prune_inputs:
        raise OptionError("input units need a graph built with prune_inputs=True")
    return np.unique(np.concatenate(out))


def _trainable(t) -> bool:
    return isinstance(t, torch.nn.Parameter) and t.is_floating_point() and t.requires_grad


def _batchnorm_params(graph: ChannelGraph) -> set[str]:
    out = set()
    for name, m in graph.ctx.modules.items():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.affine:
            out |= {f"{name}.weight", f"{name}.bias"}
    return out


def graph_of(model_or_graph, example_inputs=None, **trace_kw) -> ChannelGraph:
    """A channel graph over the *live* parameters of ``model`` (tracing shares them)."""
    if isinstance(model_or_graph, ChannelGraph):
        return model_or_graph
    if example_inputs is None:
        raise OptionError("pass example_inputs= with a model (or pass fxprune.analyze(...))")
    from ..api import analyze

    model = getattr(model_or_graph, "module", model_or_graph)  # unwrap DDP/DataParallel
    return analyze(model, example_inputs, **trace_kw)
