"""addmm with a parameter weight: Hugging Face's ``Conv1D`` (GPT-2) stores W as (in, out)."""

from __future__ import annotations

import torch.fx as fx

from ..analyze.context import AnalysisContext
from ..analyze.elements import plain_axis
from .base import Rule
from .layers import _param_arg


class Addmm(Rule):
    """addmm(bias, x, W) with W stored (in, out): Hugging Face's ``Conv1D`` (GPT-2). The
    weight's dim 0 reads the input channels, dim 1 makes the output ones."""

    name = "addmm"
    producer_dim = -1

    def weight_of(self, node: fx.Node) -> str | None:
        w = node.args[2]
        return w.target if isinstance(w, fx.Node) and w.op == "get_attr" else None

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        bias, x = node.args[0], node.args[1]
        xa = ctx.axes_of(x)
        if self.weight_of(node) is None or any(k in node.kwargs for k in ("beta", "alpha")):
            ctx.set_out(ctx.fresh(ctx.out_shape()))
            ctx.freeze_all("addmm whose weight is not a parameter (or scaled)")
            return
        info = _param_arg(ctx, node, 2, "mat2", "weight")
        ctx.link(info, 0, xa[-1], "in")
        oc = plain_axis(ctx.space.alloc(ctx.out_shape()[-1]))
        ctx.link(info, 1, oc, "out")
        if isinstance(bias, fx.Node) and bias.op == "get_attr" and len(ctx.shape(bias)) == 1:
            ctx.link(_param_arg(ctx, node, 0, "self", "bias"), 0, oc, "out")
        elif isinstance(bias, fx.Node) and ctx.is_tensor(bias):
            for ax in ctx.axes_of(bias):
                ctx.freeze(ax, "addmm bias is computed in the graph")
            ctx.freeze(oc, "addmm bias is computed in the graph")
        ctx.set_out([xa[0], oc])
