"""Rules for graph boundaries, elementwise ops (with broadcasting) and non-tensor values."""

from __future__ import annotations

import torch
import torch.fx as fx

from ..analyze.context import AnalysisContext, DerivedSize
from ..analyze.elements import Axis, Category, plain_axis, ragged_dim
from ..frontends.base import TensorSpec
from .base import Rule

_SYM_SIZE = torch.ops.aten.sym_size.int


class Placeholder(Rule):
    """Graph inputs are pinned (the pruned model takes the same inputs), except their feature
    axis (dim 1) under ``compress(prune_inputs=True)``."""

    name = "placeholder"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        val = ctx.value(node)
        if isinstance(val, TensorSpec) and ctx.prune_inputs and len(
                val.shape) >= 2:
            axes = ctx.fresh(val.shape)
            for d, ax in enumerate(axes):
                if d != 1:
                    ctx.freeze(ax, "graph input", Category.INPUT)
            ctx.set_out(axes)
        elif isinstance(val, TensorSpec):
            ctx.set_out(ctx.fresh(val.shape, frozen="graph input", category=Category.INPUT))
        else:
            ctx.set_out(None)


class Output(Rule):
    """Graph outputs are pinned: the pruned model returns the same shapes."""

    name = "output"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        def visit(a):
            if isinstance(a, fx.Node) and ctx.is_tensor(a):
                for ax in ctx.axes_of(a):
                    ctx.freeze(ax, "graph output", Category.OUTPUT)
            return a

        fx.node.map_aggregate(node.args, visit)
        ctx.set_out(None)


class GetAttr(Rule):
    """A parameter or buffer read directly; its axes are the parameter's own."""

    name = "get_attr"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        if ctx.is_tensor(node):
            info = ctx.param(node.target)
            for d, n in enumerate(info.shape):  # sliced along whatever its users tie it to
                if n > 1:  # a size-1 (broadcast) dim stays
                    info.roles.setdefault(d, "attr")
            ctx.set_out(list(info.axes))
        else:
            ctx.set_out(None)


class NonTensor(Rule):
    """``size()``, ``shape``, ``dim()``: values, not channels. Their uses are checked by the
    rewrite's shape check and by verify."""

    name = "non_tensor"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        if ctx.is_tensor(node):  # e.g. getattr(x, "mT"): not a size query
            ctx.set_out(ctx.fresh(ctx.out_shape()))
            ctx.freeze_all("tensor-valued attribute access")
            return
        ctx.set_out(None)
        x = node.args[0] if node.args else None
        if not (isinstance(x, fx.Node) and ctx.is_tensor(x)):
            return
        axes = ctx.axes_of(x)
        what = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if node.target in ("size", _SYM_SIZE) and isinstance(what, int):
            ctx.sizes[node.name] = axes[what]  # provenance: this int is that dim's size
        elif node.target == "size" or what == "shape":
            ctx.sizes[node.name] = list(axes)


class Unary(Rule):
    """Elementwise in its first tensor argument: output element i depends on input element i.
    With ``first_only`` other tensor arguments are read for their dtype alone (``type_as``)."""

    name = "elementwise"
    channelwise = True

    def __init__(self, first_only: bool = False):
        self.first_only = first_only

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        x = node.args[0] if node.args else next(iter(node.kwargs.values()))
        others = [a for a in list(node.args[1:]) + list(node.kwargs.values())
                  if isinstance(a, fx.Node) and ctx.is_tensor(a) and not self.first_only]
        if others:  # e.g. clamp(x, min=t): tensor operands broadcast like a binary op
            Broadcast().analyze(ctx, node)
            return
        xa = ctx.axes_of(x)
        if ctx.shape(x) != ctx.out_shape():
            ctx.set_out(ctx.fresh(ctx.out_shape()))
            ctx.freeze_all("elementwise op changed the shape")
            return
        ctx.set_out(list(xa))


class Broadcast(Rule):
    """add/sub/mul/div/where/...: operands aligned from the right; a size-1 dim that broadcasts
    corresponds to nothing (SE gating ``x * s.view(b, c, 1, 1)``)."""

    name = "broadcast"
    channelwise = True

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        if not ctx.is_tensor(node):  # arithmetic on sizes: remember what it is computed from
            ctx.set_out(None)
            deps = _size_sources(ctx, list(node.args) + list(node.kwargs.values()))
            if deps:
                ctx.sizes[node.name] = DerivedSize(tuple(deps))
            return
        out_shape = ctx.out_shape()
        rank = len(out_shape)
        out: list = [None] * rank
        operands = [a for a in list(node.args) + list(node.kwargs.values())
                    if isinstance(a, fx.Node) and ctx.is_tensor(a)]
        for a in operands:
            shape = ctx.shape(a)
            axes = ctx.axes_of(a)
            for i, (n, ax) in enumerate(zip(shape, axes)):
                j = rank - len(shape) + i
                if n != out_shape[j] or (n == 1 and out[j] is not None):
                    continue
                if out[j] is None:
                    out[j] = ax
                else:
                    _tie_lines(ctx, out[j], ax)
                    ctx.tie(out[j], ax)
        for j in range(rank):
            if out[j] is None:  # every operand broadcasts here (or is a scalar)
                out[j] = ctx.fresh((out_shape[j],))[0]
        ctx.set_out(out)


def _tie_lines(ctx: AnalysisContext, a: Axis, b: Axis) -> None:
    """A per-position table broadcast over the heads of a reshaped dim (RoPE's ``q * cos``)
    is read at the same positions by every head, so one of two things stays whole. By
    default the comp collapses onto the head dim: whole heads may go, the positions (and the
    table) stay. With ``ctx.table_dims`` (``prune_heads=False``) it collapses onto the
    position dim: the same positions go in every head and the table is sliced with them
    (RoPE's rotate-half pairs i with i + d/2 through the ``cat`` that builds cos/sin)."""
    if ragged_dim(b) and not ragged_dim(a):
        a, b = b, a
    comp = a.comp
    if ragged_dim(a) and b.comp is not comp and b.comp.ids.ndim == 1 and comp.ids.ndim == 2:
        ctx.space.collapse(comp, comp.ragged if ctx.table_dims else 1 - comp.ragged)


def _size_sources(ctx: AnalysisContext, args: list) -> list[Axis]:
    """The dims whose sizes the int arguments measure or were computed from."""
    out: list[Axis] = []
    for a in args:
        src = ctx.sizes.get(a.name) if isinstance(a, fx.Node) else None
        if isinstance(src, Axis):
            out.append(src)
        elif isinstance(src, DerivedSize):
            out.extend(src.axes)
        elif isinstance(src, list):
            out.extend(x for x in src if isinstance(x, Axis))
    return out


class GLU(Rule):
    """glu(x, dim) = a * sigmoid(b) for the two halves: element i pairs with i + n/2."""

    name = "glu"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        xa = ctx.axes_of(node.args[0])
        if node.op == "call_module":
            d = ctx.modules[node.target].dim
        else:
            d = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", -1)
        d = d + len(xa) if d < 0 else d
        ids = ctx.ids(xa[d])
        half = len(ids) // 2
        ctx.tie_ids(ids[:half], ids[half:])
        out = list(xa)
        out[d] = plain_axis(ids[:half])
        ctx.set_out(out)


class Creation(Rule):
    """arange / full / new_zeros / meshgrid / scalar_tensor: tensors made from literal sizes,
    not from channels. Their dims stay whole (no rule rewrites those literals), so whatever
    they broadcast with keeps its channels."""

    name = "creation"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        def frozen(val):
            if isinstance(val, TensorSpec):
                return ctx.fresh(val.shape, frozen="made from literal sizes")
            if isinstance(val, (list, tuple)):
                return tuple(frozen(v) for v in val)
            return None

        ctx.set_out(frozen(ctx.value(node)))
