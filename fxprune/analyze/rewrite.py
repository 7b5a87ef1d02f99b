"""What an op rule sees while the pruned module is written: old and new shapes, the kept
positions of every axis in the order the pruned tensor holds them, and the new module."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx

from .context import DerivedSize, NodeView
from .elements import Axis
from .graph import ChannelGraph
from .layout import kept_positions, new_size


class RewriteContext(NodeView):
    def __init__(self, graph: ChannelGraph, keep: np.ndarray, new_root: torch.nn.Module,
                 tensors: dict[str, torch.Tensor]):
        self.graph = graph
        self.keep = keep
        self.new_root = new_root  # the copied module tree the new GraphModule is built on
        self.values = graph.traced.values
        self.modules = graph.ctx.modules  # the original modules: read attributes here
        self.tensors = tensors  # the rewritten module's own tensors, by qualified name
        self.new_params: dict[str, torch.Tensor] = {}

    # ---- shapes and positions ------------------------------------------------------------
    def axes_of(self, arg: Any) -> list[Axis]:
        return self.graph.ctx.axes[arg.name]

    def old_shape(self, arg: Any) -> tuple[int, ...]:
        return self.shape(arg)

    def new_shape(self, arg: Any) -> tuple[int, ...]:
        return tuple(new_size(ax, self.keep) for ax in self.axes_of(arg))

    def size_changes(self, size_node: fx.Node, want: int) -> bool:
        """Does a size-valued node measure a dim whose pruned size is not ``want``, or is it
        computed from a dim that shrinks?"""
        src = self.graph.ctx.sizes.get(size_node.name)
        if isinstance(src, DerivedSize):
            return any(new_size(ax, self.keep) != ax.size for ax in src.axes)
        return isinstance(src, Axis) and new_size(src, self.keep) != want

    def positions(self, axis: Axis) -> np.ndarray:
        return kept_positions(axis, self.keep)

    def kept_mask(self, axis: Axis) -> np.ndarray:
        mask = np.zeros(axis.size, dtype=bool)
        mask[self.positions(axis)] = True
        return mask

    # ---- parameters and modules ----------------------------------------------------------
    def module(self, target: str) -> torch.nn.Module:
        return self.new_root.get_submodule(target)

    def original(self, qualname: str) -> torch.Tensor:
        """A tensor as the module being rewritten holds it, before slicing."""
        return self.tensors[qualname].detach()

    def weight_name(self, node: fx.Node, index: int) -> str:
        if node.op == "call_module":
            return f"{node.target}.weight"
        return node.args[index].target

    def set_param(self, qualname: str, tensor: torch.Tensor) -> None:
        self.new_params[qualname] = tensor
