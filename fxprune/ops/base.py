"""The rule interface: how one op's axes correspond (analyze) and what changes when they shrink
(rewrite). Every op fxprune understands is one :class:`Rule` entry in ``ops/table.py``.

What later stages need to know about a rule is declared here as attributes, never read off
its name: calibration follows ``channelwise`` ops from a ``producer_dim`` op, the cost model
counts the FLOPs of ``weight_of`` producers, compensation refits ``refits`` rules' weights,
and the rewrite skips the ``fallback`` rule."""

from __future__ import annotations

from typing import Any

import torch.fx as fx

from ..analyze.context import AnalysisContext, NodeView
from ..analyze.elements import Category
from ..analyze.rewrite import RewriteContext
from ..frontends.base import TensorSpec


class Rule:
    """Base rule. ``analyze`` must give the node's output axes (``ctx.set_out``)."""

    name = "rule"
    channelwise = False  # output channel c is a function of input channel c alone
    producer_dim: int | None = None  # makes new channels along this output dim (conv 1, linear -1)
    refits = False  # a least-squares refit of its weight's input columns is exact to apply
    fallback = False  # the rule of ops fxprune does not understand

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        raise NotImplementedError

    def rewrite(self, rctx: RewriteContext, node: fx.Node) -> None:
        """Fix literal arguments and module attributes; params are sliced generically."""

    def weight_of(self, node: fx.Node) -> str | None:
        """Qualified name of the parameter whose rows make a producer's output channels."""
        return None


class Unknown(Rule):
    """No rule: every axis the op touches keeps all its elements (never guessed elementwise)."""

    name = "unknown"
    fallback = True

    def __init__(self, reason: str | None = None):
        self.reason = reason  # why a known op fell back here (its rule failed)

    def analyze(self, ctx: AnalysisContext, node: fx.Node) -> None:
        ctx.set_out(_fresh_like(ctx, ctx.value(node)))
        ctx.freeze_all(self.reason or f"no channel rule for {op_name(ctx, node)}",
                       Category.UNSUPPORTED)


def op_name(view: NodeView, node: fx.Node) -> str:
    """The op as a user would name it: module class, function or method name."""
    if node.op == "call_module":
        return type(view.modules[node.target]).__name__
    if isinstance(node.target, str):
        return node.target
    return getattr(node.target, "__name__", str(node.target))


def _fresh_like(ctx: AnalysisContext, val: Any) -> Any:
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
