"""Input-feature pruning: the input's feature axis (dim 1: input channels of a conv net,
features of a flat MLP input) becomes prunable, so input features the network does not need
go with the first layer's weight columns. The pruned model then takes only the kept features
(the index map is in the Plan), or, with ``keep_input_signature``, selects them itself."""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from ..analyze.graph import ChannelGraph
from ..analyze.layout import kept_positions

MARK = "_fxprune_keeps_input_signature"


def input_map(graph: ChannelGraph, removed_units: np.ndarray) -> dict[str, np.ndarray]:
    """Kept feature indices (dim 1) of every graph input that lost some."""
    if not graph.ctx.prune_inputs:
        return {}
    keep = graph.keep_mask(removed_units)
    out = {}
    for node in graph.traced.gm.graph.nodes:
        axes = graph.ctx.axes.get(node.name)
        if node.op != "placeholder" or not isinstance(axes, list) or len(axes) < 2:
            continue
        pos = kept_positions(axes[1], keep)
        if len(pos) < axes[1].size:
            out[node.name] = np.asarray(pos, dtype=np.int64)
    return out


def keep_signature(graph: fx.Graph, root: torch.nn.Module, kept: dict[str, np.ndarray]) -> None:
    """Insert ``index_select(x, 1, kept)`` after each pruned input, so the full input works."""
    for node in list(graph.nodes):
        if node.op != "placeholder" or node.name not in kept:
            continue
        buf = f"_fxprune_input_{node.name}"
        root.register_buffer(buf, torch.as_tensor(kept[node.name]))
        users = list(node.users)
        with graph.inserting_after(node):
            idx = graph.get_attr(buf)
        with graph.inserting_after(idx):
            sel = graph.call_function(torch.index_select, (node, 1, idx))
        for u in users:
            u.replace_input_with(node, sel)
    setattr(root, MARK, True)


def inputs_for(pruned: torch.nn.Module, graph: ChannelGraph, removed_units: np.ndarray,
               inputs: tuple) -> tuple:
    """The example inputs as the pruned module takes them (sliced unless it selects them)."""
    kept = input_map(graph, removed_units)
    if not kept or getattr(pruned, MARK, False):
        return inputs
    names = [n.name for n in graph.traced.gm.graph.nodes if n.op == "placeholder"]
    return tuple(x.index_select(1, torch.as_tensor(kept[name], device=x.device))
                 if name in kept and isinstance(x, torch.Tensor) else x
                 for name, x in zip(names, inputs))
