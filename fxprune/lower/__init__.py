"""Lowering pre-passes: composite leaves and wrapped functions become primitive subgraphs with
the same numerics, so heads and head dims are ordinary structure for the generic rules.

``lower`` runs before the example run (shape-independent); ``lower_shaped`` after it, for
wrapped functions whose control flow depends on shapes (torchvision Swin), using the recorded
sizes as literals (which the rewrite then recomputes).
"""

from __future__ import annotations

import logging

import torch.fx as fx
import torch.nn as nn

from .mha import lower_multihead_attention
from .swin import SHAPED_LOWERINGS

log = logging.getLogger(__name__)


def _finish(gm: fx.GraphModule) -> None:
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()


def lower(gm: fx.GraphModule) -> fx.GraphModule:
    """Shape-independent lowerings (``nn.MultiheadAttention``), in place."""
    changed = False
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target),
                                                   nn.MultiheadAttention):
            if lower_multihead_attention(gm, node.target, gm.get_submodule(node.target), node):
                changed = True
            else:
                log.info("kept %s as a leaf (unsupported MultiheadAttention options)",
                         node.target)
    if changed:
        _finish(gm)
    return gm


def lower_shaped(gm: fx.GraphModule, values: dict) -> bool:
    """Lowerings that need the recorded shapes; True when the graph changed."""
    changed = False
    for node in list(gm.graph.nodes):
        fn = SHAPED_LOWERINGS.get(node.target) if node.op == "call_function" else None
        if fn is not None and fn(gm, node, values):
            changed = True
    if changed:
        _finish(gm)
    return changed


__all__ = ["lower", "lower_shaped"]
