"""Rules for ops that move, merge, split, slice or join dims; their literal sizes are rewritten."""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from ..analyze.context import AnalysisContext
from ..analyze.elements import Axis, Category, Comp, block_dim, plain_axis
from ..analyze.layout import new_size
from ..analyze.rewrite import RewriteContext
from ..util import owner_of
from .base import Rule, arg, norm_dim, set_arg


def dim_groups(s_in: tuple[int, ...], s_out: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Minimal runs of input and output dims with equal products (size-1 dims stand alone)."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(s_in) or j < len(s_out):
        if i < len(s_in) and s_in[i] == 1:
            groups.append(([i], []))
            i += 1
            continue
        if j < len(s_out) and s_out[j] == 1:
            groups.append(([], [j]))
            j += 1
            continue
        gi, gj = [i], [j]
        pi, pj = s_in[i], s_out[j]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                pi *= s_in[i]
                gi.append(i)
                i += 1
            else:
                pj *= s_out[j]
                gj.append(j)
                j += 1
        groups.append((gi, gj))
    return groups


def _merge(ctx: AnalysisContext, axes: list[Axis]) -> Axis:
    """One axis for several merged dims: a whole comp keeps its identity (and order);
    independent dims merge onto a carrier (the outermost) and the inner ones keep their size."""
    if len(axes) == 1:
        return axes[0]
    comp = axes[0].comp
    ldims = tuple(ld for a in axes for ld in a.ldims)
    if all(a.comp is comp for a in axes) and sorted(ldims) == list(range(comp.ids.ndim)):
        return Axis(comp, ldims)
    carrier = next((a for a in axes if a.comp.carrier in a.ldims and len(a.ldims) == 1), axes[0])
    ids = ctx.ids(carrier)
    pos = axes.index(carrier)
    for a in axes:
        if a is not carrier:
            ctx.freeze(a, "merged into another dim by a reshape")
    before = int(np.prod([a.size for a in axes[:pos]], dtype=np.int64))
    after = int(np.prod([a.size for a in axes[pos + 1:]], dtype=np.int64))
    return plain_axis(np.tile(np.repeat(ids, after), before))


def _repeated_heads(ctx: AnalysisContext, node: fx.Node, xa: list[Axis], gi: list[int]):
    """``repeat_kv``: kv heads (a head dim of a still-ragged comp) merged with a dim that an
    expand broadcast from size 1. Under ``table_dims`` the query heads stay, so each kv head's
    dims may still shrink: the result is the kv comp with every head repeated (same
    elements), not a collapse onto the heads. Returns (axis, the comp that replaces it)."""
    head = xa[gi[0]]
    src = node.args[0]
    if not (ctx.table_dims and len(gi) == 2 and block_dim(head) and isinstance(src, fx.Node)
            and src.target in (_aten.expand.default, "expand")):
        return None
    if ctx.shape(src.args[0])[gi[1]] != 1:
        return None
    comp, ld = head.comp, head.ldims[0]
    rep = Comp(np.repeat(comp.ids, ctx.shape(src)[gi[1]], axis=ld), ragged=comp.ragged,
               origin=node.name)  # not registered: its lines are the kv comp's own
    rep.fixed.add(ld)
    return Axis(rep, (ld,)), rep


_aten = torch.ops.aten
_SHAPE_TARGETS = ("view", "reshape", torch.reshape, _aten.view.default, _aten.reshape.default,
                  _aten._unsafe_view.default)  # sizes follow the input: view(x, *sizes)
_UNFLATTEN_TARGETS = ("unflatten", torch.unflatten, _aten.unflatten.int)


class Reshape(Rule):
    """view/reshape/flatten/unflatten/squeeze/unsqueeze: merges and splits of dims.

    A split makes a comp whose lines along the innermost factor keep equal counts (channel
    shuffle, heads); merging the same comp back keeps element identity and order.
    """

    name = "reshape"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        x = node.args[0]
        xa = ctx.axes_of(x)
        s_in, s_out = ctx.shape(x), ctx.out_shape()
        out: list[Axis | None] = [None] * len(s_out)
        remap: dict[int, Comp] = {}
        for gi, gj in dim_groups(s_in, s_out):
            for j in gj:
                if s_out[j] == 1:
                    out[j] = ctx.fresh((1,))[0]
            gi = [i for i in gi if s_in[i] != 1]
            gj = [j for j in gj if s_out[j] != 1]
            if not gi or not gj:
                continue
            repeated = _repeated_heads(ctx, node, xa, gi) if len(gj) == 1 else None
            if repeated is not None:
                out[gj[0]], remap[id(xa[gi[0]].comp)] = repeated
                continue
            merged = _merge(ctx, [xa[i] for i in gi])
            if len(gj) == 1:
                out[gj[0]] = merged
                continue
            ids = ctx.ids(merged)
            comp = ctx.new_comp(ids.reshape([s_out[j] for j in gj]), ragged=len(gj) - 1)
            for t, j in enumerate(gj):
                out[j] = Axis(comp, (t,))
            owner = owner_of(node)
            if ctx.eager and owner is not None and _literal_sizes(node).get(gj[-1]):
                # view(b, s, -1, self.head_dim): every split this module sizes by the same
                # number must keep the same count per line (q, k and v's head dims)
                ctx.split_sizes.setdefault((owner, s_out[gj[-1]]), []).append(comp)
        ctx.set_out([Axis(remap[id(ax.comp)], ax.ldims) if id(ax.comp) in remap else ax
                     for ax in out])

    def rewrite(self, rctx: RewriteContext, node: fx.Node) -> None:
        new = rctx.new_shape(node)
        old = rctx.old_shape(node)
        target = node.target
        if node.op == "call_module":
            mod = rctx.module(node.target)
            if hasattr(mod, "unflattened_size"):
                d = norm_dim(mod.dim, len(new))
                mod.unflattened_size = tuple(new[d:d + len(mod.unflattened_size)])
            return
        if target in _SHAPE_TARGETS:
            shape_args = node.args[1:]
            if len(shape_args) == 1 and isinstance(shape_args[0], (tuple, list)):
                fixed = _fix_sizes(shape_args[0], new, old, rctx)
                node.args = (node.args[0], type(shape_args[0])(fixed))
            elif shape_args:
                node.args = (node.args[0], *_fix_sizes(shape_args, new, old, rctx))
            elif "shape" in node.kwargs:
                set_arg(node, 1, "shape", tuple(_fix_sizes(node.kwargs["shape"], new, old, rctx)))
        elif target in _UNFLATTEN_TARGETS:
            d = norm_dim(arg(node, 1, "dim"), len(old) - len(arg(node, 2, "sizes")) + 1)
            sizes = arg(node, 2, "sizes")
            set_arg(node, 2, "sizes", tuple(_fix_sizes(sizes, new[d:d + len(sizes)])))


def _literal_sizes(node: fx.Node) -> dict[int, bool]:
    """Output dim -> its size is a literal int of a view/reshape (not -1, not a size node)."""
    if node.target not in _SHAPE_TARGETS or node.op == "call_module":
        return {}
    sizes = node.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = sizes[0]
    elif not sizes:
        sizes = node.kwargs.get("shape", ())
    return {j: isinstance(v, int) and v != -1 for j, v in enumerate(sizes)}


def _fix_sizes(sizes, new, old=None, rctx=None) -> list:
    """New literal sizes. A size node (``C`` from ``x.shape``) is replaced by the literal too
    when its dim shrinks or when the dim it measures shrinks differently: the pruned model
    must not compute a width from another tensor's (pruned) size. Unchanged dims keep their
    size nodes, so batch and token counts stay dynamic."""
    out = []
    for j, s in enumerate(sizes):
        if isinstance(s, int) and s != -1:
            out.append(new[j])
        elif isinstance(s, fx.Node) and rctx is not None and old is not None and (
                new[j] != old[j] or rctx.size_changes(s, new[j])):
            out.append(new[j])
        else:
            out.append(s)
    return out


class Permute(Rule):
    name = "permute"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        xa = ctx.axes_of(node.args[0])
        n = len(xa)
        t = node.target
        rest = node.args[1:]
        if t in ("permute", torch.permute, _aten.permute.default):
            perm = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
            if not rest:
                perm = node.kwargs.get("dims")
            perm = [norm_dim(int(p), n) for p in perm]
        elif t in ("transpose", torch.transpose, "swapaxes", "swapdims", _aten.transpose.int,
                   _aten.swapaxes.default):
            a = norm_dim(int(arg(node, 1, "dim0")), n)
            b = norm_dim(int(arg(node, 2, "dim1")), n)
            perm = list(range(n))
            perm[a], perm[b] = perm[b], perm[a]
        elif t in ("t", torch.t, _aten.t.default):
            perm = list(range(n))[::-1]
        else:  # movedim
            src, dst = arg(node, 1, "source"), arg(node, 2, "destination")
            perm = _movedim_perm(n, src, dst)
        ctx.set_out([xa[p] for p in perm])


def _movedim_perm(n: int, src, dst) -> list[int]:
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    order = list(range(n))
    src = [norm_dim(s, n) for s in src]
    dst = [norm_dim(d, n) for d in dst]
    rest = [d for d in order if d not in src]
    out = [-1] * n
    for s, d in zip(src, dst):
        out[d] = s
    it = iter(rest)
    return [o if o != -1 else next(it) for o in out]


class Expand(Rule):
    """expand: broadcast dims follow the op's output; literal sizes are rewritten."""

    name = "expand"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        xa = ctx.axes_of(node.args[0])
        s_in, s_out = ctx.shape(node.args[0]), ctx.out_shape()
        lead = len(s_out) - len(s_in)
        out = ctx.fresh(s_out[:lead], frozen="dim added by expand")
        for i, ax in enumerate(xa):
            out.append(ax if s_in[i] == s_out[lead + i] else ctx.fresh((s_out[lead + i],))[0])
        ctx.set_out(out)

    def rewrite(self, rctx: RewriteContext, node: fx.Node) -> None:
        new = rctx.new_shape(node)
        rest = node.args[1:]
        if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
            node.args = (node.args[0], tuple(_fix_sizes(rest[0], new)))
        else:
            node.args = (node.args[0], *_fix_sizes(rest, new))


class ExpandAs(Rule):
    name = "expand_as"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        xa, oa = ctx.axes_of(node.args[0]), ctx.axes_of(node.args[1])
        s_in = ctx.shape(node.args[0])
        lead = len(oa) - len(xa)
        for i, ax in enumerate(xa):
            if s_in[i] == ctx.out_shape()[lead + i]:
                ctx.tie(ax, oa[lead + i])
        ctx.set_out(list(oa))


class Repeat(Rule):
    """repeat/tile: output element k of a dim is input element k mod n (same positions)."""

    name = "repeat"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        xa = ctx.axes_of(node.args[0])
        rest = node.args[1:]
        reps = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else list(
            rest)
        reps = [1] * (len(xa) - len(reps)) + reps
        lead = len(reps) - len(xa)
        out = ctx.fresh(tuple(reps[:lead]), frozen="dim added by repeat")
        for ax, r in zip(xa, reps[lead:]):
            out.append(ax if r == 1 else plain_axis(np.tile(ctx.ids(ax), int(r))))
        ctx.set_out(out)


class ChannelShuffle(Rule):
    """channel_shuffle(x, g): a (g, C/g) split transposed and merged; every group keeps the same
    count, positions may differ per group."""

    name = "channel_shuffle"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        xa = ctx.axes_of(node.args[0])
        if node.op == "call_module":
            g = int(ctx.modules[node.target].groups)
        else:
            g = int(arg(node, 1, "groups"))
        ids = ctx.ids(xa[1])
        comp = ctx.new_comp(ids.reshape(g, -1), ragged=1)
        out = list(xa)
        out[1] = Axis(comp, (1, 0))
        ctx.set_out(out)

    def rewrite(self, rctx: RewriteContext, node: fx.Node) -> None:
        """A group whose every channel went leaves fewer groups to shuffle."""
        comp = rctx.axes_of(node)[1].comp
        groups = new_size(Axis(comp, (0,)), rctx.keep)
        if groups == comp.lshape[0]:
            return
        if node.op == "call_module":
            rctx.module(node.target).groups = groups
        else:
            set_arg(node, 1, "groups", groups)



class PixelShuffle(Rule):
    """pixel_shuffle(x, r): input channel ``c * r^2 + k`` becomes output channel ``c`` at
    sub-pixel ``k``, so an output channel and its r^2 input channels go together.
    pixel_unshuffle is the inverse: output channels ``c * r^2 .. c * r^2 + r^2 - 1`` all come
    from input channel ``c``. Nothing to rewrite: the op names no channel count."""

    name = "pixel_shuffle"

    def __init__(self, inverse: bool = False):
        self.inverse = inverse

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        xa = ctx.axes_of(node.args[0])
        if node.op == "call_module":
            mod = ctx.modules[node.target]
            r = int(mod.downscale_factor if self.inverse else mod.upscale_factor)
        else:
            r = int(arg(node, 1, "downscale_factor" if self.inverse else "upscale_factor"))
        out_shape = ctx.out_shape()
        ids = ctx.ids(xa[-3])
        if self.inverse:
            channels = plain_axis(np.repeat(ids, r * r))
        else:
            blocks = ids.reshape(-1, r * r)
            ctx.tie_ids(blocks[:, :1], blocks[:, 1:])
            channels = plain_axis(blocks[:, 0])
        for ax in xa[-2:]:
            ctx.freeze(ax, "spatial dim of a pixel shuffle", Category.LAYOUT)
        spatial = ctx.fresh(out_shape[-2:], frozen="spatial dim of a pixel shuffle",
                            category=Category.LAYOUT)
        ctx.set_out(list(xa[:-3]) + [channels] + spatial)
