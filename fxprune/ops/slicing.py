"""Rules for ops that join, split and slice dims; the sizes they name are rewritten."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import torch.fx as fx

from ..analyze.context import AnalysisContext, NodeView
from ..analyze.elements import Axis, Category, plain_axis
from ..analyze.rewrite import RewriteContext
from .base import Rule, arg, norm_dim, set_arg


class Cat(Rule):
    name = "cat"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        tensors = [t for t in arg(node, 0, "tensors") if ctx.shape(t)]
        d = norm_dim(int(arg(node, 1, "dim", 0)), len(ctx.out_shape()))
        axes = [ctx.axes_of(t) for t in tensors]
        out = list(axes[0])
        for other in axes[1:]:
            for k in range(len(out)):
                if k != d:
                    ctx.tie(out[k], other[k])
        out[d] = plain_axis(np.concatenate([ctx.ids(a[d]) for a in axes]))
        ctx.set_out(out)


class Stack(Rule):
    name = "stack"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        tensors = list(arg(node, 0, "tensors"))
        d = norm_dim(int(arg(node, 1, "dim", 0)), len(ctx.out_shape()))
        axes = [ctx.axes_of(t) for t in tensors]
        out = list(axes[0])
        for other in axes[1:]:
            for k in range(len(out)):
                ctx.tie(out[k], other[k])
        out.insert(d, ctx.fresh((len(tensors),), frozen="stacked dim")[0])
        ctx.set_out(out)


class Split(Rule):
    """split/chunk/split_with_sizes: the pieces' sizes are recomputed (chunk becomes split)."""

    name = "split"

    def _dim(self, ctx: NodeView, node: fx.Node) -> int:
        return norm_dim(int(arg(node, 2, "dim", 0)), len(ctx.shape(node.args[0])))

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        xa = ctx.axes_of(node.args[0])
        d = self._dim(ctx, node)
        ids = ctx.ids(xa[d])
        parts, by_size = [], defaultdict(list)
        start = 0
        for spec in ctx.value(node):
            n = spec.shape[d]
            piece = list(xa)
            piece[d] = plain_axis(ids[start:start + n])
            parts.append(piece)
            by_size[n].append(ids[start:start + n])
            start += n
        if ctx.eager:  # the forward computes these sizes again, from one number each
            for pieces in by_size.values():
                ctx.equal_count(np.stack(pieces), "pieces the forward splits by one size",
                                False)
        ctx.set_out(tuple(parts))

    def rewrite(self, rctx: RewriteContext, node: fx.Node) -> None:
        d = self._dim(rctx, node)
        mask = rctx.kept_mask(rctx.axes_of(node.args[0])[d])
        bounds = np.cumsum([0] + [spec.shape[d] for spec in rctx.value(node)])
        sizes = [int(mask[a:b].sum()) for a, b in zip(bounds[:-1], bounds[1:])]
        if sizes == [int(b - a) for a, b in zip(bounds[:-1], bounds[1:])]:
            return
        if node.op == "call_method":
            node.target = "split"
        elif isinstance(node.target, torch._ops.OpOverload):  # an ATen graph stays ATen
            node.target = torch.ops.aten.split_with_sizes.default
        else:
            node.target = torch.split
        node.args = (node.args[0], sizes, d)
        node.kwargs = {}


class Unbind(Rule):
    name = "unbind"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        xa = ctx.axes_of(node.args[0])
        d = norm_dim(int(arg(node, 1, "dim", 0)), len(xa))
        n = ctx.shape(node.args[0])[d]
        blocks = [ctx.select_block(xa, d, i) for i in range(n)]
        if blocks[0] is not None:  # q, k, v of one reshaped qkv projection
            ctx.set_out(tuple(blocks))
            return
        ctx.freeze(xa[d], "unbound dim")
        rest = [ax for k, ax in enumerate(xa) if k != d]
        ctx.set_out(tuple(list(rest) for _ in range(n)))


class Narrow(Rule):
    name = "narrow"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        xa = ctx.axes_of(node.args[0])
        d = norm_dim(int(arg(node, 1, "dim")), len(xa))
        start, length = int(arg(node, 2, "start")), int(arg(node, 3, "length"))
        out = list(xa)
        out[d] = plain_axis(ctx.ids(xa[d])[start:start + length])
        ctx.set_out(out)

    def rewrite(self, rctx: RewriteContext, node: fx.Node) -> None:
        xa = rctx.axes_of(node.args[0])
        d = norm_dim(int(arg(node, 1, "dim")), len(xa))
        start, length = int(arg(node, 2, "start")), int(arg(node, 3, "length"))
        mask = rctx.kept_mask(xa[d])
        set_arg(node, 2, "start", int(mask[:start].sum()))
        set_arg(node, 3, "length", int(mask[start:start + length].sum()))


class GetItem(Rule):
    """``x[i]`` on tuples (split results) and basic tensor indexing with ints, slices, None and
    Ellipsis; slice bounds along shrunk dims are recomputed, advanced indexing freezes."""

    name = "getitem"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        x, idx = node.args[0], node.args[1]
        if not ctx.is_tensor(x):
            src = ctx.sizes.get(x.name) if isinstance(x, fx.Node) else None
            if isinstance(src, list) and isinstance(idx, (int, slice)):
                ctx.sizes[node.name] = src[idx]  # x.shape[1], x.shape[:2]
            got = ctx.axes.get(x.name) if isinstance(x, fx.Node) else None
            if isinstance(got, (tuple, list)) and not (got and isinstance(got[0], Axis)) and (
                    isinstance(idx, int)):
                ctx.set_out(got[idx])
            else:
                ctx.set_out(None if not ctx.is_tensor(node) else ctx.fresh(ctx.out_shape()))
                if ctx.is_tensor(node):
                    ctx.freeze_all("item of an untracked container")
            return
        xa = ctx.axes_of(x)
        plan = _index_plan(idx, ctx.shape(x))
        if plan is None and isinstance(idx, fx.Node) and ctx.is_tensor(idx):
            # table[index]: dim 0 is gathered (kept whole), the other dims pass through
            ctx.freeze(xa[0], "gathered by a tensor index")
            for ax in ctx.axes_of(idx):
                ctx.freeze(ax, "index tensor")
            n_idx = len(ctx.shape(idx))
            ctx.set_out(ctx.fresh(ctx.out_shape()[:n_idx], frozen="gathered dim") + xa[1:])
            return
        if plan is None:
            ctx.set_out(ctx.fresh(ctx.out_shape()))
            ctx.freeze_all("advanced indexing")
            return
        ints = [(d, i) for (kind, d, _), i in zip(plan, _items(idx)) if kind == "int"]
        if len(ints) == 1 and all(k in ("int", "full") for k, _, _ in _flat_plan(plan)):
            picked = ctx.select_block(xa, ints[0][0], ints[0][1])
            if picked is not None:  # qkv[0]: a block of a reshaped projection
                ctx.set_out(picked)
                return
        out = []
        for kind, d, sl in _flat_plan(plan):
            if kind == "new":
                out.extend(ctx.fresh((1,), frozen="new dim", category=Category.LAYOUT))
            elif kind == "int":
                ctx.freeze(xa[d], "indexed by an integer")
            elif kind == "full":
                out.append(xa[d])
            else:
                start, stop, step = sl
                ids = ctx.ids(xa[d])
                if step != 1:
                    ctx.freeze(xa[d], "strided slice")
                out.append(plain_axis(ids[start:stop:step]))
        ctx.set_out(out)

    def rewrite(self, rctx: RewriteContext, node: fx.Node) -> None:
        x, idx = node.args[0], node.args[1]
        if not rctx.is_tensor(x):
            return
        xa = rctx.axes_of(x)
        plan = _index_plan(idx, rctx.old_shape(x))
        if plan is None:  # advanced indexing: frozen, nothing to rewrite
            return
        items = list(idx) if isinstance(idx, tuple) else [idx]
        changed = False
        for k, entry in enumerate(plan):
            kind, d, sl = entry if entry[0] != "ellipsis" else ("ellipsis", None, None)
            if kind == "slice" and sl[2] == 1:
                start, stop, _ = sl
                mask = rctx.kept_mask(xa[d])
                a = int(mask[:start].sum())
                items[k] = slice(a, a + int(mask[start:stop].sum()))
                changed = True
        if changed:
            node.args = (x, tuple(items) if isinstance(idx, tuple) else items[0])


def _items(idx) -> list:
    return list(idx) if isinstance(idx, tuple) else [idx]


def _flat_plan(plan):
    for entry in plan:
        if entry[0] == "ellipsis":
            yield from entry[1]
        else:
            yield entry


def _index_plan(idx, shape):
    """Per index item: (kind, input dim, (start, stop, step)); ("ellipsis", [entries]) for ...;
    trailing dims not indexed come last as "full". None means advanced indexing."""
    items = list(idx) if isinstance(idx, tuple) else [idx]
    if any(isinstance(i, (fx.Node, list, bool, torch.Tensor)) for i in items):
        return None
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    plan: list = []
    d = 0
    for i in items:
        if i is None:
            plan.append(("new", d, None))
        elif i is Ellipsis:
            span = [("full", d + k, None) for k in range(len(shape) - consumed)]
            plan.append(("ellipsis", span, None))
            d += len(span)
        elif isinstance(i, int):
            plan.append(("int", d, None))
            d += 1
        elif isinstance(i, slice):
            if any(isinstance(v, fx.Node) for v in (i.start, i.stop, i.step)):
                return None
            start, stop, step = i.indices(shape[d])
            kind = "full" if (start, stop, step) == (0, shape[d], 1) else "slice"
            plan.append((kind, d, (start, stop, step)))
            d += 1
        else:
            return None
    while d < len(shape):
        plan.append(("full", d, None))
        d += 1
    return plan


class Slice(Rule):
    """``aten.slice(x, dim, start, end, step)``: ``x[..., a:b]`` as ATen writes it (a full
    slice, ``end = 2**63 - 1``, is the identity); bounds along a shrunk dim are recomputed."""

    name = "slice"

    def _bounds(self, view: NodeView, node: fx.Node) -> tuple[int, int, int, int]:
        n = len(view.shape(node.args[0]))
        d = norm_dim(int(arg(node, 1, "dim", 0)), n)
        size = view.shape(node.args[0])[d]
        start, stop, step = slice(arg(node, 2, "start"), arg(node, 3, "end"),
                                  arg(node, 4, "step", 1)).indices(size)
        return d, start, stop, step

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        xa = ctx.axes_of(node.args[0])
        d, start, stop, step = self._bounds(ctx, node)
        out = list(xa)
        if (start, stop, step) != (0, ctx.shape(node.args[0])[d], 1):
            if step != 1:
                ctx.freeze(xa[d], "strided slice")
            out[d] = plain_axis(ctx.ids(xa[d])[start:stop:step])
        ctx.set_out(out)

    def rewrite(self, rctx: RewriteContext, node: fx.Node) -> None:
        d, start, stop, step = self._bounds(rctx, node)
        if step != 1 or (start, stop) == (0, rctx.old_shape(node.args[0])[d]):
            return
        mask = rctx.kept_mask(rctx.axes_of(node.args[0])[d])
        a = int(mask[:start].sum())
        set_arg(node, 2, "start", a)
        set_arg(node, 3, "end", a + int(mask[start:stop].sum()))


class Select(Rule):
    """``aten.select(x, dim, i)`` = ``x[..., i]``: one block of a reshaped projection (q of
    qkv), else the indexed dim is kept whole."""

    name = "select"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        xa = ctx.axes_of(node.args[0])
        d = norm_dim(int(arg(node, 1, "dim")), len(xa))
        i = int(arg(node, 2, "index"))
        picked = ctx.select_block(xa, d, i)
        if picked is not None:
            ctx.set_out(picked)
            return
        ctx.freeze(xa[d], "indexed by an integer")
        ctx.set_out([ax for k, ax in enumerate(xa) if k != d])


class Index(Rule):
    """``aten.index(x, [None, idx, ...])``: one tensor index gathers along its dim (kept
    whole; the index's own dims replace it); more than one is frozen whole."""

    name = "index"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        xa = ctx.axes_of(node.args[0])
        indices = list(arg(node, 1, "indices"))
        used = [d for d, i in enumerate(indices) if i is not None]
        out_shape = ctx.out_shape()
        if len(used) != 1 or not isinstance(indices[used[0]], fx.Node):
            ctx.set_out(ctx.fresh(out_shape))
            ctx.freeze_all("advanced indexing with several index tensors")
            return
        d = used[0]
        ctx.freeze(xa[d], "gathered by a tensor index")
        for ax in ctx.axes_of(indices[d]):
            ctx.freeze(ax, "index tensor")
        n_idx = len(ctx.shape(indices[d]))
        ctx.set_out(list(xa[:d]) + ctx.fresh(out_shape[d:d + n_idx], frozen="gathered dim")
                    + list(xa[d + 1:]))
