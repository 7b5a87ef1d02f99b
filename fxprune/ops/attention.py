"""Rules for contractions between activations: matmul/bmm/@, einsum, scaled_dot_product_attention.

A contracted dim couples both operands (removing k from q and from k together is exact); the
verify oracle zeroes it in one operand before the op. Batch dims that are the head dim of two
reshaped projections (``(H, D)`` comps) need no tie: heads never move, and tying them would
force the same positions in every head.
"""

from __future__ import annotations

import math

import torch.fx as fx

from ..analyze.context import AnalysisContext
from ..analyze.elements import Axis, block_dim, ragged_dim
from ..analyze.rewrite import RewriteContext
from .base import Rule, arg, set_arg


def _pair_batch(ctx: AnalysisContext, a: Axis, b: Axis) -> Axis:
    """Output axis of two corresponding batch dims (b's wins, so ``attn @ v`` keeps v's heads)."""
    if block_dim(a) and block_dim(b):
        ctx.block_ties.append((a, b))  # head h here is head h there: they drop together
        return b
    for x, y in ((a, b), (b, a)):  # heads that stay (q collapsed onto RoPE's positions)
        if block_dim(x) and ctx.kept_whole(y):  # keep the other side's heads, not its dims
            x.comp.fixed.update(x.ldims)
            return b
    ctx.tie(a, b)
    return b


def _contract(ctx: AnalysisContext, a: Axis, b: Axis, batch: list[tuple[Axis, Axis]],
              arg_index: int, dim: int) -> None:
    """Couple the contracted dims; per-head positions stay free when both are head dims."""
    if (ragged_dim(a) and ragged_dim(b) and a.comp.lshape == b.comp.lshape
            and any(x.comp is a.comp and y.comp is b.comp and block_dim(x) and block_dim(y)
                    for x, y in batch)):
        ctx.tie_ids(a.comp.ids, b.comp.ids)  # q and k: same positions within each head
        ids = a.comp.ids
    else:
        ctx.tie(a, b)
        ids = ctx.ids(a)
    ctx.node_consumer(arg_index, dim, ids)


def _batch_axes(ctx: AnalysisContext, xa: list[Axis], ya: list[Axis], out_batch: tuple[int, ...]):
    """Broadcast batch dims of two operands (right-aligned) against the output's batch shape."""
    n = len(out_batch)
    out, pairs = [], []
    for j in range(n):
        i, k = j - (n - len(xa)), j - (n - len(ya))
        a = xa[i] if i >= 0 and xa[i].size == out_batch[j] else None
        b = ya[k] if k >= 0 and ya[k].size == out_batch[j] else None
        if a is not None and b is not None:
            pairs.append((a, b))
            out.append(_pair_batch(ctx, a, b))
        else:
            out.append(a or b or ctx.fresh((out_batch[j],))[0])
    return out, pairs


class MatMul(Rule):
    name = "matmul"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        x, y = node.args[0], node.args[1]
        xa, ya = ctx.axes_of(x), ctx.axes_of(y)
        out_shape = ctx.out_shape()
        if len(xa) < 2 or len(ya) < 2:
            ctx.set_out(ctx.fresh(out_shape))
            ctx.freeze_all("matmul with a vector operand")
            return
        batch, pairs = _batch_axes(ctx, xa[:-2], ya[:-2], out_shape[:-2])
        _contract(ctx, xa[-1], ya[-2], pairs, 0, len(xa) - 1)
        ctx.set_out(batch + [xa[-2], ya[-1]])


class ScaledDotProductAttention(Rule):
    """softmax(q kᵀ · scale + mask) v. The scale is pinned to the original head dim."""

    name = "sdpa"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        q, k, v = node.args[0], node.args[1], node.args[2]
        qa, ka, va = ctx.axes_of(q), ctx.axes_of(k), ctx.axes_of(v)
        out_shape = ctx.out_shape()
        batch_qk, pairs = _batch_axes(ctx, qa[:-2], ka[:-2], out_shape[:-2])
        batch, _ = _batch_axes(ctx, batch_qk, va[:-2], out_shape[:-2])
        _contract(ctx, qa[-1], ka[-1], pairs, 0, len(qa) - 1)
        ctx.tie(ka[-2], va[-2])
        mask = arg(node, 3, "attn_mask")
        if isinstance(mask, fx.Node) and ctx.is_tensor(mask):
            for ax in ctx.axes_of(mask):
                ctx.freeze(ax, "attention mask")
        ctx.set_out(batch + [qa[-2], va[-1]])

    def rewrite(self, rctx: RewriteContext, node: fx.Node) -> None:
        if arg(node, 6, "scale") is None:
            set_arg(node, 6, "scale", 1.0 / math.sqrt(rctx.old_shape(node.args[0])[-1]))


class Einsum(Rule):
    """einsum without ellipsis: letters in the output pass through, the others contract."""

    name = "einsum"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        eq = node.args[0].replace(" ", "")
        operands = list(node.args[1:])
        if "..." in eq or "->" not in eq or any(not isinstance(t, fx.Node) for t in operands):
            ctx.set_out(ctx.fresh(ctx.out_shape()))
            ctx.freeze_all("einsum with implicit output or ellipsis")
            return
        lhs, out = eq.split("->")
        specs = lhs.split(",")
        seen: dict[str, tuple[Axis, int, int]] = {}
        for i, (spec, t) in enumerate(zip(specs, operands)):
            axes = ctx.axes_of(t)
            for d, letter in enumerate(spec):
                ax = axes[d]
                if letter not in seen:
                    seen[letter] = (ax, i, d)
                    continue
                first = seen[letter][0]
                if first.size > 1 and ax.size > 1:
                    ctx.tie(first, ax)
        for letter, (ax, i, d) in seen.items():
            if letter not in out:
                if ax.size > 1:
                    ctx.node_consumer(i + 1, d, ctx.ids(ax))
        ctx.set_out([seen[letter][0] for letter in out])
