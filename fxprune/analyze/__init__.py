"""The channel model: index elements and their union-find (elements.py), what rules see while
analysing (context.py) and rewriting (rewrite.py), kept positions (layout.py), and the
resulting units and groups (graph.py). Nothing here imports a rule."""

from .graph import ChannelGraph, FrozenReason, Group

__all__ = ["ChannelGraph", "FrozenReason", "Group"]
