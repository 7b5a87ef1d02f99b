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
from ..analyze.layout import LayoutError, kept_positions, ragged_layout
from ..analyze.rewrite import RewriteContext
from ..clone import copy_modules
from ..errors import RewriteError
from ..frontends.base import TensorSpec, record
from .inputs import MARK, input_map, inputs_for, keep_signature

log = logging.getLogger(__name__)


class PruneChannels(PassBase):
    """Remove ``removed_units`` of ``graph`` from a GraphModule.

    Follows torch.fx's pass convention, so it composes in a ``PassManager``: the module it is
    given is copied (never modified) and its own tensors are sliced, so an earlier pass that
    changed weights is honoured. The module must have the graph the channel graph was built
    from (same nodes and targets, same tensor shapes); anything else is a ``RewriteError``,
    not a guess: it is not a general pass over arbitrary modules.
    """

    def __init__(self, graph: ChannelGraph, removed_units: np.ndarray, check: bool = True,
                 keep_input_signature: bool = False):
        super().__init__()
        self.graph = graph
        self.removed_units = removed_units
        self.check = check
        self.keep_input_signature = keep_input_signature

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        tensors = _tensors_of(graph_module, self.graph)
        keep = self.graph.keep_mask(self.removed_units)
        check_layouts(self.graph, keep)
        sliced = _sliced_params(self.graph, keep, tensors)
        # a structural copy that takes the sliced tensors directly: no parameter is copied
        # twice, and the GraphModule is compiled once, after the rules have rewritten it
        root = copy_modules(graph_module, _memo(tensors, sliced))
        new_graph = copy.deepcopy(graph_module.graph)
        rctx = RewriteContext(self.graph, keep, root, tensors)
        whole = self.graph.ctx.whole
        for node in new_graph.nodes:
            rule = self.graph.rules.get(node.name)
            if rule is None or rule.fallback or node.name in whole or node.op not in (
                    "call_module", "call_function", "call_method"):
                continue  # Unknown, or every channel it touches kept: nothing to rewrite
            try:
                rule.rewrite(rctx, node)
            except Exception as exc:  # noqa: BLE001 - the fallback freezes this node
                raise RewriteError(f"rule {rule.name} could not rewrite {node.name}: {exc}",
                                   node=node.name) from exc
        for qual, tensor in rctx.new_params.items():  # rules that build a tensor themselves
            _assign(root, qual, tensor.contiguous())
        modified = bool(rctx.new_params) or any(
            tuple(t.shape) != self.graph.params[q].shape for q, t in sliced.items())
        kept_inputs = input_map(self.graph, self.removed_units)
        if kept_inputs and self.keep_input_signature:
            keep_signature(new_graph, root, kept_inputs)
        new_gm = fx.GraphModule(root, new_graph, type(graph_module).__name__)
        if kept_inputs and self.keep_input_signature:
            setattr(new_gm, MARK, True)
        new_gm.graph.lint()
        if self.check:
            check_shapes(rctx, new_gm, self.removed_units)
        return PassResult(new_gm, modified)


def check_layouts(graph: ChannelGraph, keep: np.ndarray) -> None:
    """Every reshaped (multi-dim) comp must lose whole blocks with equal counts per line; the
    comps that would not are named all at once, so one retry keeps them all whole."""
    bad = []
    for comp in graph.ctx.space.comps:
        if comp.parent is None and comp.is_ragged:
            try:
                ragged_layout(comp, keep[comp.ids])
            except LayoutError as exc:
                bad.append((comp, exc))
    if bad:
        where = sorted({c.origin or "?" for c, _ in bad})
        raise RewriteError(f"{len(bad)} reshaped dim(s) cannot be pruned as selected "
                           f"({bad[0][1]}; made at {', '.join(where[:5])})",
                           node=bad[0][0].origin or None,
                           elements=np.concatenate([c.ids.reshape(-1) for c, _ in bad]))


def _tensors_of(gm: fx.GraphModule, graph: ChannelGraph) -> dict[str, torch.Tensor]:
    """``gm``'s tensors by qualified name, once ``gm`` is known to be the analysed module (or
    a copy of it with the same graph and tensor shapes)."""
    if gm is graph.traced.gm:
        return graph.traced.tensors
    analysed = [(n.name, n.op, str(n.target)) for n in graph.traced.gm.graph.nodes]
    given = [(n.name, n.op, str(n.target)) for n in gm.graph.nodes]
    if given != analysed:
        raise RewriteError("PruneChannels rewrites the module its channel graph was built from "
                           f"(or a copy with the same graph); {type(gm).__name__} has a "
                           "different graph: run fxprune.analyze on it first")
    tensors = dict(gm.named_buffers(remove_duplicate=False))
    tensors.update(gm.named_parameters(remove_duplicate=False))
    for qual, info in graph.params.items():
        if qual not in tensors or tuple(tensors[qual].shape) != info.shape:
            raise RewriteError(f"PruneChannels: {qual} is missing or has another shape than "
                               "when the channel graph was built")
    return tensors


def _sliced_params(graph: ChannelGraph, keep: np.ndarray,
                   tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every analysed parameter/buffer sliced along its axes, in the order the pruned tensors
    hold the channels."""
    out = {}
    for qual, info in graph.params.items():
        new = tensors[qual].detach()
        for dim, ax in enumerate(info.axes):
            pos = kept_positions(info.order.get(dim, ax), keep)
            if len(pos) != info.shape[dim] or not np.array_equal(pos, np.arange(len(pos))):
                new = new.index_select(dim, torch.as_tensor(pos, device=new.device))
        out[qual] = new
    return out


def _memo(tensors: dict[str, torch.Tensor], sliced: dict[str, torch.Tensor]) -> dict[int, object]:
    """Each parameter/buffer object mapped to its pruned (or cloned) copy: a slice is a new
    tensor already (cloning it again would hold the pruned model twice at the peak); an
    unsliced one is cloned, so the result never aliases the original."""
    memo: dict[int, object] = {}
    for qual, t in tensors.items():
        if id(t) in memo:
            continue
        new = sliced.get(qual)
        if new is None or _aliases(new, t):
            new = t.detach().clone()
        elif not new.is_contiguous():
            new = new.contiguous()
        memo[id(t)] = torch.nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(
            t, torch.nn.Parameter) else new
    return memo


def _aliases(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _assign(gm: torch.nn.Module, qual: str, tensor: torch.Tensor) -> None:
    owner_name, _, local = qual.rpartition(".")
    owner = gm.get_submodule(owner_name) if owner_name else gm
    old = getattr(owner, local)
    if isinstance(old, torch.nn.Parameter):
        setattr(owner, local, torch.nn.Parameter(tensor.clone(), requires_grad=old.requires_grad))
    else:
        owner._buffers[local] = tensor.clone()


def check_shapes(rctx: RewriteContext, gm: fx.GraphModule, removed_units: np.ndarray) -> None:
    """Run the pruned module once and compare every node's shape with the plan's promise."""
    inputs = inputs_for(gm, rctx.graph, removed_units, rctx.graph.traced.example_inputs)
    try:
        values = record(gm, inputs)
    except Exception as exc:  # noqa: BLE001
        raise RewriteError(f"the pruned module does not run: {exc}",
                           node=getattr(exc, "node", None)) from exc
    signature_kept = getattr(gm, MARK, False)
    placeholders = {n.name for n in gm.graph.nodes if n.op == "placeholder"}
    gathered = {n.name for n in gm.graph.nodes if n.op == "get_attr" and getattr(
        rctx.graph.params.get(n.target), "custom", False)}  # grouped-conv weights: own layout
    for name, spec in values.items():
        if not isinstance(spec, TensorSpec) or name not in rctx.graph.ctx.axes or \
                name in gathered:
            continue
        if signature_kept and name in placeholders:
            continue  # the full input, selected right after
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
