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
        keep = self.graph.keep_mask(self.removed_units)
        sliced = _sliced_params(self.graph, keep)
        # the copy takes the sliced tensors directly: no parameter is copied twice
        new_gm = copy.deepcopy(graph_module, _memo(graph_module, sliced))
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
        for qual, tensor in rctx.new_params.items():  # rules that build a tensor themselves
            _assign(new_gm, qual, tensor.contiguous())
        modified = bool(rctx.new_params) or any(
            tuple(t.shape) != self.graph.params[q].shape for q, t in sliced.items())
        new_gm.graph.lint()
        new_gm.recompile()
        if self.check:
            check_shapes(rctx, new_gm)
        return PassResult(new_gm, modified)


def _sliced_params(graph: ChannelGraph, keep: np.ndarray) -> dict[str, torch.Tensor]:
    """Every analysed parameter/buffer sliced along its axes, in the order the pruned tensors
    hold the channels."""
    out = {}
    gm = graph.traced.gm
    for qual, info in graph.params.items():
        try:
            new = gm.get_parameter(qual).detach()
        except AttributeError:
            new = gm.get_buffer(qual)
        for dim, ax in enumerate(info.axes):
            pos = kept_positions(info.order.get(dim, ax), keep)
            if len(pos) != info.shape[dim] or not np.array_equal(pos, np.arange(len(pos))):
                new = new.index_select(dim, torch.as_tensor(pos, device=new.device))
        out[qual] = new
    return out


def _memo(gm: fx.GraphModule, sliced: dict[str, torch.Tensor]) -> dict[int, object]:
    """deepcopy memo: each parameter/buffer object maps to its pruned (or cloned) copy."""
    memo: dict[int, object] = {}
    for qual, t in list(gm.named_parameters(remove_duplicate=False)) + list(
            gm.named_buffers(remove_duplicate=False)):
        if id(t) in memo:
            continue
        new = sliced.get(qual)
        new = t.detach().clone() if new is None else new.contiguous().clone()
        memo[id(t)] = torch.nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(
            t, torch.nn.Parameter) else new
    return memo


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
