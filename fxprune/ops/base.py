"""The rule interface: how one op's axes correspond (analyze) and what changes when they shrink
(rewrite). Every op fxprune understands is one :class:`Rule` entry in ``ops/table.py``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.fx as fx

if TYPE_CHECKING:
    from ..analyze.context import AnalysisContext
    from ..passes.context import RewriteContext


class Rule:
    """Base rule. ``analyze`` must give the node's output axes (``ctx.set_out``)."""

    name = "rule"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        raise NotImplementedError

    def rewrite(self, rctx: RewriteContext, node: fx.Node) -> None:
        """Fix literal arguments and module attributes; params are sliced generically."""


class Unknown(Rule):
    """No rule: every axis the op touches keeps all its elements (never guessed elementwise)."""

    name = "unknown"

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        val = ctx.value(node)
        ctx.set_out(_fresh_like(ctx, val))
        what = node.target if isinstance(node.target, str) else getattr(
            node.target, "__name__", str(node.target))
        if node.op == "call_module":
            what = type(ctx.modules[node.target]).__name__
        ctx.freeze_all(f"no channel rule for {what}")


def _fresh_like(ctx: AnalysisContext, val: Any) -> Any:
    from ..trace import TensorSpec

    if isinstance(val, TensorSpec):
        return ctx.fresh(val.shape)
    if isinstance(val, (tuple, list)) and not isinstance(val, str):
        return tuple(_fresh_like(ctx, v) for v in val)
    return None


def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Argument by position or keyword, as the traced call wrote it."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def set_arg(node: fx.Node, index: int, name: str, value: Any) -> None:
    if len(node.args) > index:
        args = list(node.args)
        args[index] = value
        node.args = tuple(args)
    else:
        kwargs = dict(node.kwargs)
        kwargs[name] = value
        node.kwargs = kwargs


def norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d
