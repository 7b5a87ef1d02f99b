"""The plugin interface. A plugin scores every unit of the channel graph at once (so it can
vectorise over parameters); selection reads the scores of each group's units."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..analyze.graph import ChannelGraph

_REGISTRY: dict[str, Callable[..., Importance]] = {}


class Importance:
    """Subclass and implement :meth:`scores`; register with :func:`register`."""

    name = "importance"

    def scores(self, graph: ChannelGraph) -> np.ndarray:
        """Score per unit label (an array indexed by unit label, length = element count)."""
        raise NotImplementedError


def register(name: str, factory: Callable[..., Importance]) -> None:
    _REGISTRY[name] = factory


def available() -> list[str]:
    """Names of the registered importances (later plugins appear here when imported)."""
    return sorted(_REGISTRY)


def get_importance(spec: str | Importance) -> Importance:
    if isinstance(spec, Importance):
        return spec
    if spec not in _REGISTRY:
        raise ValueError(f"unknown importance {spec!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[spec]()
