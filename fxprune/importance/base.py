"""The plugin interface. A plugin scores every unit of the channel graph at once (so it can
vectorise over parameters); selection reads the scores of each group's units. Data-driven
plugins declare what they need and receive it as a :class:`Calibration`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..calibrate import TAP_POINTS
from ..errors import OptionError

if TYPE_CHECKING:
    from ..analyze.graph import ChannelGraph

_REGISTRY: dict[str, Callable[..., Importance]] = {}


@dataclass(frozen=True)
class Calibration:
    """What ``compress(calibration=..., ...)`` hands to data-driven plugins (and what
    compensation fits on): the calibration option group."""

    data: Iterable | None = None  # batches: tensors, or (inputs..., target) tuples
    max_batches: int | None = None
    tap: str = "post_act"  # where activations are observed: see calibrate.TAP_POINTS
    loss_fn: Callable[[Any, Any], Any] | None = None  # (output, target) -> scalar, for Taylor

    def __post_init__(self) -> None:
        if self.tap not in TAP_POINTS:
            raise OptionError(f"tap point {self.tap!r}: use one of {', '.join(TAP_POINTS)}")
        if self.max_batches is not None and self.max_batches < 1:
            raise OptionError(f"max_batches must be >= 1, got {self.max_batches}")


class Importance:
    """Subclass and implement :meth:`scores`; register with :func:`register`.

    ``needs`` is ``None`` (weights only), ``"data"`` (unlabelled calibration batches) or
    ``"labels"`` (labelled batches and a ``loss_fn``).
    """

    name = "importance"
    needs: str | None = None

    def scores(self, graph: ChannelGraph, calib: Calibration | None = None) -> np.ndarray:
        """Score per unit label (an array indexed by unit label, length = element count)."""
        raise NotImplementedError


def require(importance: Importance, calib: Calibration | None) -> Calibration:
    """The calibration a data-driven plugin needs, or a ValueError that says what to pass."""
    if calib is None or calib.data is None:
        raise OptionError(f"importance {importance.name!r} ranks channels from activations: pass "
                         "calibration=<iterable of input batches> (a DataLoader or a list of "
                         "tensors)")
    if importance.needs == "labels" and calib.loss_fn is None:
        raise OptionError(f"importance {importance.name!r} needs loss_fn=(output, target) -> "
                         "loss and calibration batches of (inputs, target)")
    return calib


def register(name: str, factory: Callable[..., Importance]) -> None:
    _REGISTRY[name] = factory


def available() -> list[str]:
    """Names of the registered importances (later plugins appear here when imported)."""
    return sorted(_REGISTRY)


def get_importance(spec: str | Importance) -> Importance:
    if isinstance(spec, Importance):
        return spec
    if spec not in _REGISTRY:
        raise OptionError(f"unknown importance {spec!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[spec]()
