"""Channel-dependency analysis: elements, op rules applied node by node, units and groups."""

from .graph import ChannelGraph, Group, build

__all__ = ["ChannelGraph", "Group", "build"]
