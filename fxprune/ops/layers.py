"""Rules for ops that own parameters: convolutions, linear, normalisations, PReLU."""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from ..analyze.context import AnalysisContext, NodeView
from ..analyze.elements import Category, plain_axis
from ..analyze.rewrite import RewriteContext
from .base import Rule, arg, set_arg


def _param_arg(ctx: AnalysisContext, node: fx.Node, index: int, name: str, local: str):
    """The ParamInfo behind a weight-like argument (module attribute or get_attr), or None."""
    if node.op == "call_module":
        mod = ctx.modules[node.target]
        t = getattr(mod, local, None)
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            return ctx.param(f"{node.target}.{local}")
        return None
    a = arg(node, index, name)
    if isinstance(a, fx.Node) and a.op == "get_attr":
        info = ctx.param(a.target)  # this rule owns the param: dims it does not link stay whole
        info.roles = {d: r for d, r in info.roles.items() if r != "attr"}
        return info
    if isinstance(a, fx.Node) and ctx.is_tensor(a):
        ctx.freeze_all(f"{name} is computed in the graph, not a parameter")
        return None
    return None


def _weight_and_bias(ctx: AnalysisContext, node: fx.Node, what: str):
    """(weight, bias) ParamInfos; None (and every axis frozen) when the weight is computed.
    A computed bias (a slice of a packed parameter) is returned as its node."""
    w = _param_arg(ctx, node, 1, "weight", "weight")
    b = arg(node, 2, "bias") if node.op != "call_module" else None
    if isinstance(b, fx.Node) and b.op != "get_attr" and ctx.is_tensor(b):
        pass  # tied through its own axes by the caller
    else:
        b = _param_arg(ctx, node, 2, "bias", "bias")
    if w is None:
        ctx.set_out(ctx.fresh(ctx.out_shape()))
        ctx.freeze_all(f"{what} weight is not a parameter")
        return None
    return w, b


def _weight_name(node: fx.Node) -> str | None:
    """The weight parameter of a conv/linear call: the module's, or a get_attr argument."""
    if node.op == "call_module":
        return f"{node.target}.weight"
    w = arg(node, 1, "weight")
    return w.target if isinstance(w, fx.Node) and w.op == "get_attr" else None


def _link_bias(ctx: AnalysisContext, b, oc) -> None:
    if isinstance(b, fx.Node):
        ctx.tie(ctx.axes_of(b)[0], oc)
    elif b is not None:
        ctx.link(b, 0, oc, "out")


class Conv(Rule):
    """Conv{1,2,3}d: groups=1, depthwise (with channel multiplier) and grouped convolution.

    Grouped conv needs no common positions across groups: each group keeps the same *count*
    of input channels (equal-count constraint) and the weight is gathered per group.
    """

    name = "conv"
    producer_dim = 1

    def __init__(self, transposed: bool = False, groups_at: int | None = None):
        self.transposed = transposed
        self.refits = not transposed  # compensation refits conv weights with groups == 1
        self.groups_at = groups_at if groups_at is not None else 6  # F.conv*/aten.conv*

    def weight_of(self, node: fx.Node) -> str | None:
        return _weight_name(node)

    def _groups(self, ctx: NodeView, node: fx.Node) -> int:
        if node.op == "call_module":
            return int(ctx.modules[node.target].groups)
        return int(arg(node, self.groups_at, "groups", 1))

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        x = node.args[0]
        xa = ctx.axes_of(x)
        params = _weight_and_bias(ctx, node, "convolution")
        if params is None:
            return
        w, b = params
        out_shape = ctx.out_shape()
        nd = len(w.shape) - 2
        cdim = len(xa) - nd - 1
        out = list(xa[:cdim])
        for ax in xa[cdim + 1:]:
            ctx.freeze(ax, "spatial dim read by a convolution", Category.LAYOUT)
        g = self._groups(ctx, node)
        c_in = ctx.shape(x)[cdim]
        c_out = out_shape[cdim]
        in_pg, out_pg = c_in // g, c_out // g
        xc = xa[cdim]
        if g == 1:
            ctx.link(w, 0 if self.transposed else 1, xc, "in")
            oc = plain_axis(ctx.space.alloc(c_out))
            ctx.link(w, 1 if self.transposed else 0, oc, "out")
        elif in_pg == 1 and out_pg == 1:  # depthwise: channel c in, channel c out
            oc = xc
            ctx.link(w, 0, xc, "out")
            ctx.freeze(w.axes[1], "depthwise weight dim")
        elif in_pg == 1 and not self.transposed:  # depthwise with channel multiplier k
            k = out_pg
            ids = ctx.ids(xc)
            oc = plain_axis(ctx.space.alloc(c_out))
            ctx.tie_ids(np.repeat(ids, k), oc.comp.ids)
            ctx.link(w, 0, oc, "out")
            ctx.freeze(w.axes[1], "depthwise weight dim")
        elif not self.transposed:  # grouped: equal counts per group, positions free
            ids = ctx.ids(xc)
            oc = plain_axis(ctx.space.alloc(c_out))
            ctx.link(w, 0, oc, "out")
            w.custom = True
            ctx.freeze(w.axes[1], "grouped-conv weight dim (gathered per group)")
            ctx.equal_count(ids.reshape(g, in_pg), "input channels of a grouped conv", False)
            ctx.equal_count(oc.comp.ids.reshape(g, out_pg), "output channels of a grouped conv",
                            False)
            if out_pg == 1:  # equal counts of one per group: all or none, and none is empty
                ctx.freeze(oc, "grouped conv with one output channel per group")
            rows = np.arange(c_out) // out_pg
            ctx.consumer(w.qualname, (0, 1), ids[rows[:, None] * in_pg + np.arange(in_pg)])
        else:
            ctx.set_out(ctx.fresh(out_shape))
            ctx.freeze_all("grouped transposed convolution")
            return
        _link_bias(ctx, b, oc)
        out.append(oc)
        out.extend(ctx.fresh(out_shape[cdim + 1:], frozen="spatial dim of a convolution",
                             category=Category.LAYOUT))
        ctx.set_out(out)

    def rewrite(self, rctx: RewriteContext, node: fx.Node) -> None:
        xa = rctx.axes_of(node.args[0])
        w_name = rctx.weight_name(node, 1)
        w = rctx.original(w_name)
        nd = w.dim() - 2
        cdim = len(xa) - nd - 1
        g = self._groups(rctx, node)
        c_in = rctx.old_shape(node.args[0])[cdim]
        new_in = rctx.new_shape(node.args[0])[cdim]
        new_out = rctx.new_shape(node)[cdim]
        in_pg = c_in // g
        new_g = g
        if g > 1 and in_pg == 1:
            new_g = new_in
        elif g > 1:
            pos = rctx.positions(xa[cdim]).reshape(g, -1)
            if not (pos // in_pg == np.arange(g)[:, None]).all():
                raise RuntimeError(f"grouped conv {node.name}: kept inputs cross group bounds")
            out_pos = rctx.positions(rctx.axes_of(node)[cdim])
            row_group = np.arange(len(out_pos)) // (len(out_pos) // g)
            rows = torch.as_tensor(out_pos)
            cols = torch.as_tensor((pos % in_pg)[row_group])
            rctx.set_param(w_name, w[rows[:, None], cols])
        if node.op == "call_module":
            mod = rctx.module(node.target)
            mod.groups = new_g
            mod.in_channels = new_in
            mod.out_channels = new_out
        elif new_g != g:
            set_arg(node, self.groups_at, "groups", new_g)


class Convolution(Rule):
    """``aten.convolution(x, w, b, stride, padding, dilation, transposed, output_padding,
    groups)``: a conv or a transposed conv, as its ``transposed`` argument says."""

    name = "conv"
    producer_dim = 1
    refits = False  # only known per node; compensation leaves it alone

    def __init__(self):
        self._plain, self._transposed = Conv(False, 8), Conv(True, 8)

    def _rule(self, node: fx.Node) -> Conv:
        return self._transposed if arg(node, 6, "transposed", False) else self._plain

    def weight_of(self, node: fx.Node) -> str | None:
        return _weight_name(node)

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        self._rule(node).analyze(ctx, node)

    def rewrite(self, rctx: RewriteContext, node: fx.Node) -> None:
        self._rule(node).rewrite(rctx, node)


class Linear(Rule):
    name = "linear"
    producer_dim = -1
    refits = True

    def weight_of(self, node: fx.Node) -> str | None:
        return _weight_name(node)

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        xa = ctx.axes_of(node.args[0])
        w_arg = arg(node, 1, "weight") if node.op != "call_module" else None
        if isinstance(w_arg, fx.Node) and w_arg.op != "get_attr" and ctx.is_tensor(w_arg):
            self._computed_weight(ctx, node, xa, w_arg)
            return
        params = _weight_and_bias(ctx, node, "linear")
        if params is None:
            return
        w, b = params
        out_shape = ctx.out_shape()
        ctx.link(w, 1, xa[-1], "in")
        oc = plain_axis(ctx.space.alloc(out_shape[-1]))
        ctx.link(w, 0, oc, "out")
        _link_bias(ctx, b, oc)
        ctx.set_out(list(xa[:-1]) + [oc])

    def _computed_weight(self, ctx: AnalysisContext, node: fx.Node, xa, w_arg) -> None:
        """F.linear(x, W[a:b]) - a slice of a packed parameter: tie through its own axes (the
        parameter itself is sliced where its get_attr is), contract like a matmul."""
        wa = ctx.axes_of(w_arg)
        ctx.tie(wa[1], xa[-1])  # collapses a reshaped input: the slice follows sorted order
        ctx.node_consumer(0, len(xa) - 1, ctx.ids(xa[-1]))
        b = arg(node, 2, "bias")
        if isinstance(b, fx.Node) and ctx.is_tensor(b):
            ctx.tie(ctx.axes_of(b)[0], wa[0])
        ctx.set_out(list(xa[:-1]) + [wa[0]])

    def rewrite(self, rctx: RewriteContext, node: fx.Node) -> None:
        if node.op == "call_module":
            mod = rctx.module(node.target)
            mod.in_features = rctx.new_shape(node.args[0])[-1]
            mod.out_features = rctx.new_shape(node)[-1]


class ChannelNorm(Rule):
    """BatchNorm / InstanceNorm / PReLU: per-channel parameters and statistics along dim 1."""

    name = "channel_norm"
    channelwise = True

    def __init__(self, names: tuple[tuple[int, str], ...], attr: str | None):
        self.names = names  # (functional arg index, name)
        self.attr = attr  # module attribute holding the channel count

    def _cdim(self, ctx: NodeView, node: fx.Node) -> int:
        return 1 if len(ctx.shape(node.args[0])) > 1 else 0

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        xa = ctx.axes_of(node.args[0])
        cdim = self._cdim(ctx, node)
        for index, name in self.names:
            info = _param_arg(ctx, node, index, name, name)
            if info is not None and info.shape[0] == ctx.shape(node.args[0])[cdim]:
                ctx.link(info, 0, xa[cdim], "norm")
        val = ctx.value(node)
        if isinstance(val, tuple):  # ATen's (out, saved mean, saved rstd): only out is read
            extra = tuple(ctx.fresh(v.shape, frozen="saved statistics") for v in val[1:])
            ctx.set_out((list(xa),) + extra)
        else:
            ctx.set_out(list(xa))

    def rewrite(self, rctx: RewriteContext, node: fx.Node) -> None:
        if node.op == "call_module" and self.attr:
            mod = rctx.module(node.target)
            if getattr(mod, self.attr, 1) != 1:
                setattr(mod, self.attr, rctx.new_shape(node)[self._cdim(rctx, node)])


class GroupNorm(Rule):
    """GroupNorm is exact only when whole groups go: the channels of a group form one unit."""

    name = "group_norm"

    def _groups(self, ctx: NodeView, node: fx.Node) -> int:
        if node.op == "call_module":
            return int(ctx.modules[node.target].num_groups)
        return int(arg(node, 1, "num_groups"))

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        xa = ctx.axes_of(node.args[0])
        groups = self._groups(ctx, node)
        ids = ctx.ids(xa[1]).reshape(groups, -1)
        ctx.tie_ids(ids[:, :1], ids[:, 1:])
        for index, name in ((2, "weight"), (3, "bias")):
            info = _param_arg(ctx, node, index, name, name)
            if info is not None:
                ctx.link(info, 0, xa[1], "norm")
        ctx.set_out(list(xa))

    def rewrite(self, rctx: RewriteContext, node: fx.Node) -> None:
        old_c = rctx.old_shape(node.args[0])[1]
        new_c = rctx.new_shape(node.args[0])[1]
        per = old_c // self._groups(rctx, node)
        if node.op == "call_module":
            mod = rctx.module(node.target)
            mod.num_groups = new_c // per
            mod.num_channels = new_c
        else:
            set_arg(node, 1, "num_groups", new_c // per)


class LayerNorm(Rule):
    """LayerNorm over the last dim: weight/bias follow the channels, but removing a channel
    changes the mean and variance of the others, so its units are *approximate*."""

    name = "layer_norm"

    def _normalized(self, ctx: NodeView, node: fx.Node) -> tuple[int, ...]:
        if node.op == "call_module":
            return tuple(ctx.modules[node.target].normalized_shape)
        shape = arg(node, 1, "normalized_shape")
        return (shape,) if isinstance(shape, int) else tuple(shape)

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        xa = ctx.axes_of(node.args[0])
        k = len(self._normalized(ctx, node))
        for ax in xa[len(xa) - k:-1]:
            ctx.freeze(ax, "LayerNorm over several dims")
        last = xa[-1]
        for index, name in ((2, "weight"), (3, "bias")):
            info = _param_arg(ctx, node, index, name, name)
            if info is not None:
                ctx.link(info, len(info.shape) - 1, last, "norm")
                for d in range(len(info.shape) - 1):
                    ctx.freeze(info.axes[d], "LayerNorm over several dims")
        ctx.approximate(ctx.ids(last, keep_order=True), "normalised by LayerNorm")
        ctx.set_out(list(xa))

    def rewrite(self, rctx: RewriteContext, node: fx.Node) -> None:
        shape = tuple(rctx.new_shape(node)[-len(self._normalized(rctx, node)):])
        if node.op == "call_module":
            rctx.module(node.target).normalized_shape = shape
        else:
            set_arg(node, 1, "normalized_shape", list(shape))


class Embedding(Rule):
    """Embedding: the vocabulary dim is indexed (kept); the embedding dim is a fresh channel
    axis owned by the weight."""

    name = "embedding"

    def __init__(self, weight_at: int = 1):
        self.weight_at = weight_at  # F.embedding(input, weight); aten.embedding(weight, input)

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        idx = ctx.axes_of(node.args[1 - self.weight_at] if node.op != "call_module"
                          else node.args[0])
        w = _param_arg(ctx, node, self.weight_at, "weight", "weight")
        out_shape = ctx.out_shape()
        if w is None:
            ctx.set_out(ctx.fresh(out_shape))
            ctx.freeze_all("embedding weight is not a parameter")
            return
        ctx.freeze(w.axes[0], "embedding rows are looked up by index")
        oc = plain_axis(ctx.space.alloc(out_shape[-1]))
        ctx.link(w, 1, oc, "out")
        ctx.set_out(list(idx) + [oc])

    def rewrite(self, rctx: RewriteContext, node: fx.Node) -> None:
        if node.op == "call_module":
            rctx.module(node.target).embedding_dim = rctx.new_shape(node)[-1]
