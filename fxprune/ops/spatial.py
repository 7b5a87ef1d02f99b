"""Rules for pooling/resampling (channels pass, spatial dims fixed) and reductions."""

from __future__ import annotations

from collections.abc import Iterable

import torch.fx as fx

from ..analyze.context import AnalysisContext
from ..analyze.elements import Category
from .base import Rule, arg, norm_dim


class Spatial(Rule):
    """Pooling and interpolation: the last ``nd`` dims are spatial, the rest pass through."""

    name = "spatial"

    def __init__(self, nd: int | None):
        self.nd = nd  # None: every dim after the channel dim (interpolate)

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        x = node.args[0]
        xa = ctx.axes_of(x)
        out_shape = ctx.out_shape()
        if len(out_shape) != len(xa) or not isinstance(ctx.value(node), type(ctx.value(x))):
            ctx.set_out(ctx.fresh(out_shape))
            ctx.freeze_all("pooling with extra outputs")
            return
        nd = self.nd if self.nd is not None else len(xa) - 2
        keep = len(xa) - nd
        for ax in xa[keep:]:
            ctx.freeze(ax, "spatial dim of pooling", Category.LAYOUT)
        ctx.set_out(list(xa[:keep]) + ctx.fresh(out_shape[keep:], frozen="spatial dim of pooling",
                                                category=Category.LAYOUT))


class Reduce(Rule):
    """mean/sum/amax/...: reducing over a channel dim mixes channels, so that dim is frozen
    (CBAM's channel mean/max). Reducing over one factor of a reshaped dim couples its blocks
    (same positions in every block) instead of freezing."""

    name = "reduce"

    def __init__(self, dim_at: int = 1):
        self.dim_at = dim_at  # aten.linalg_vector_norm(x, ord, dim, keepdim): 2

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        x = node.args[0]
        xa = ctx.axes_of(x)
        rank = len(xa)
        dims = arg(node, self.dim_at, "dim", None)
        if dims is None and "axis" in node.kwargs:
            dims = node.kwargs["axis"]
        if dims is None:
            reduced = set(range(rank))
        elif isinstance(dims, Iterable):
            reduced = {norm_dim(int(d), rank) for d in dims}
        else:
            reduced = {norm_dim(int(dims), rank)}
        keepdim = bool(arg(node, self.dim_at + 1, "keepdim", False))
        for d in sorted(reduced):
            ax = xa[d]
            if not ax.full:  # a factor of a reshaped dim: couple the blocks
                others = [ld for k, a in enumerate(xa) if k not in reduced and a.comp is ax.comp
                          for ld in a.ldims]
                if others:
                    comp = ax.comp
                    carrier = comp.ragged if comp.ragged in others else others[0]
                    ctx.space.collapse(comp, carrier)
                    continue
            ctx.freeze(ax, f"reduced over by {_name(node)}")
        out = []
        for d, ax in enumerate(xa):
            if d not in reduced:
                out.append(ax)
            elif keepdim:
                out.extend(ctx.fresh((1,), frozen="reduced dim", category=Category.LAYOUT))
        val = ctx.value(node)
        ctx.set_out(tuple(list(out) for _ in val) if isinstance(val, tuple) else out)


def _name(node: fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "?")


class Softmax(Rule):
    """softmax/log_softmax/softmin over one dim: that dim mixes (frozen), the others pass."""

    name = "softmax"

    def __init__(self, default_dim: int | None = None):
        self.default_dim = default_dim  # Softmax2d: the channel dim, -3

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        xa = ctx.axes_of(node.args[0])
        if node.op == "call_module":
            d = getattr(ctx.modules[node.target], "dim", None)
        else:
            d = arg(node, 1, "dim", None)
        d = self.default_dim if d is None else d
        if d is None:
            ctx.set_out(list(xa))
            ctx.freeze_all("softmax over an implicit dim")
            return
        ctx.freeze(xa[norm_dim(int(d), len(xa))], f"normalised over by {_name(node)}")
        ctx.set_out(list(xa))


class Pad(Rule):
    """F.pad: padded dims change size (kept whole), dims with (0, 0) padding pass through."""

    name = "pad"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        xa = ctx.axes_of(node.args[0])
        pads = list(arg(node, 1, "pad"))
        out_shape = ctx.out_shape()
        out = list(xa)
        for k in range(len(pads) // 2):
            d = len(xa) - 1 - k
            if pads[2 * k] or pads[2 * k + 1]:
                ctx.freeze(xa[d], "padded dim")
                out[d] = ctx.fresh((out_shape[d],), frozen="padded dim")[0]
        ctx.set_out(out)


class Roll(Rule):
    """torch.roll: rolled dims are permuted (kept whole), the others pass through."""

    name = "roll"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        xa = ctx.axes_of(node.args[0])
        dims = arg(node, 2, "dims")
        dims = [dims] if isinstance(dims, int) else list(dims or range(len(xa)))
        for d in dims:
            ctx.freeze(xa[norm_dim(d, len(xa))], "rolled dim")
        ctx.set_out(list(xa))
