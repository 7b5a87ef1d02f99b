"""The analyze stage's work: every node's rule applied in graph order, then the units and
groups solved. A rule that raises is contained: its node falls back to the Unknown rule
(every channel it touches kept) and the report says which rule failed."""

from __future__ import annotations

import logging

import numpy as np

from ..analyze.context import AnalysisContext
from ..analyze.elements import Category
from ..analyze.graph import ChannelGraph, NodeRule, solve
from ..errors import first_line
from ..frontends.base import Traced
from ..ops.base import Unknown
from ..ops.table import rule_for

log = logging.getLogger(__name__)


def build(traced: Traced, freeze_nodes: frozenset[str] = frozenset(),
          prune_inputs: bool = False, freeze_elements: np.ndarray | None = None,
          eager: bool = False, table_dims: bool = False) -> ChannelGraph:
    """The channel graph of ``traced``. ``freeze_nodes`` keep all their channels and
    ``freeze_elements`` (element ids of an earlier build: allocation is deterministic) stay
    whole - the rewrite's fallbacks; ``prune_inputs`` leaves the inputs' feature axis
    prunable; ``eager``: the result re-runs the model's own forward (module output);
    ``table_dims``: RoPE-like tables give up their dims rather than the heads."""
    ctx = AnalysisContext(traced, prune_inputs, eager, table_dims)
    rules: dict[str, NodeRule] = {}
    for node in traced.gm.graph.nodes:
        ctx.node = node
        rule = rule_for(node, ctx.modules)
        try:
            rule.analyze(ctx, node)
        except Exception as exc:  # noqa: BLE001 - a rule that cannot cope freezes, never guesses
            log.debug("rule %s failed on %s: %s", rule.name, node.name, exc)
            ctx.axes.pop(node.name, None)
            rule = Unknown(f"rule {rule.name} failed ({first_line(exc)})")
            rule.analyze(ctx, node)
        if node.name in freeze_nodes:
            ctx.freeze_all("the rewrite could not keep this node consistent", Category.REWRITE)
        rules[node.name] = rule
    if freeze_elements is not None and freeze_elements.size:
        ctx.space.freeze(freeze_elements, "a reshaped dim the rewrite could not lay out as "
                         "selected", "", Category.REWRITE)
    return solve(ctx, rules)
