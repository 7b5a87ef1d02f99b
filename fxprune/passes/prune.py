"""The rewriting pass: a new dense GraphModule with sliced parameters, fixed attributes and
literal sizes, checked shape by shape against what the plan promised."""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from ..analyze.graph import ChannelGraph
from ..analyze.layout import kept_positions
from ..errors import RewriteError
from ..ops.table import rule_for
from ..trace import TensorSpec, _Recorder
from .context import RewriteContext

log = logging.getLogger(__name__)


class PruneChannels(PassBase):
    """Remove ``removed_units`` of ``graph`` from the GraphModule it was built from.

    Follows torch.fx's pass convention, so it composes in a ``PassManager``; the input
    module is deep-copied, never modified.
    """

    def __init__(self, graph: ChannelGraph, removed_units: np.ndarray, check: bool = True):
        super().__init__()
        self.graph = graph
        self.removed_units = removed_units
        self.check = check

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        new_gm = copy.deepcopy(graph_module)
        keep = self.graph.keep_mask(self.removed_units)
        rctx = RewriteContext(self.graph, keep, new_gm)
        nodes = {n.name: n for n in new_gm.graph.nodes}
        for node in list(self.graph.traced.gm.graph.nodes):
            if node.op in ("call_module", "call_function", "call_method"):
                rule = rule_for(node, self.graph.ctx.modules)
                if self.graph.rules.get(node.name) != rule.name:
                    continue  # the analysis fell back to Unknown here: nothing to rewrite
                try:
                    rule.rewrite(rctx, nodes[node.name])
                except Exception as exc:  # noqa: BLE001 - the fallback freezes this node
                    raise RewriteError(f"rule {rule.name} could not rewrite {node.name}: {exc}",
                                       node=node.name) from exc
        modified = _slice_params(rctx, new_gm)
        new_gm.graph.lint()
        new_gm.recompile()
        if self.check:
            check_shapes(rctx, new_gm)
        return PassResult(new_gm, modified)


def _slice_params(rctx: RewriteContext, gm: fx.GraphModule) -> bool:
    modified = False
    for qual, info in rctx.graph.params.items():
        if qual in rctx.new_params:
            new = rctx.new_params[qual]
        else:
            new = rctx.original(qual)
            for dim, ax in enumerate(info.axes):
                order_axis = info.order.get(dim, ax)
                pos = kept_positions(order_axis, rctx.keep)
                if len(pos) != info.shape[dim] or not np.array_equal(pos, np.arange(len(pos))):
                    new = new.index_select(dim, torch.as_tensor(pos, device=new.device))
        if tuple(new.shape) == info.shape and qual not in rctx.new_params:
            continue
        modified = True
        _assign(gm, qual, new.contiguous())
    return modified


def _assign(gm: fx.GraphModule, qual: str, tensor: torch.Tensor) -> None:
    owner_name, _, local = qual.rpartition(".")
    owner = gm.get_submodule(owner_name) if owner_name else gm
    old = getattr(owner, local)
    if isinstance(old, torch.nn.Parameter):
        setattr(owner, local, torch.nn.Parameter(tensor.clone(), requires_grad=old.requires_grad))
    else:
        owner._buffers[local] = tensor.clone()


def check_shapes(rctx: RewriteContext, gm: fx.GraphModule) -> None:
    """Run the pruned module once and compare every node's shape with the plan's promise."""
    values: dict = {}
    modes = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        with torch.no_grad():
            _Recorder(gm, values).run(*rctx.graph.traced.example_inputs)
    except Exception as exc:  # noqa: BLE001
        raise RewriteError(f"the pruned module does not run: {exc}",
                           node=getattr(exc, "node", None)) from exc
    finally:
        for m, mode in modes.items():
            m.training = mode
    for name, spec in values.items():
        if not isinstance(spec, TensorSpec) or name not in rctx.graph.ctx.axes:
            continue
        axes = rctx.graph.ctx.axes[name]
        if not isinstance(axes, list):
            continue
        want = rctx.new_shape(_Named(name))
        if tuple(spec.shape) != want:
            raise RewriteError(f"node {name}: pruned shape {tuple(spec.shape)}, expected {want}",
                               node=name)


class _Named:
    def __init__(self, name: str):
        self.name = name
