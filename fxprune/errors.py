"""The errors fxprune raises: each names what failed and what to try."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class FxPruneError(RuntimeError):
    """Base class of every error fxprune raises on purpose."""


class TraceError(FxPruneError):
    """torch.fx could not trace the model, or shapes could not be propagated."""

    def __init__(self, message: str, node: str | None = None):
        super().__init__(message)
        self.node = node


class OptionError(FxPruneError, ValueError):
    """An option of ``compress`` (or the CLI) is out of range or contradicts another."""


class SelectionError(FxPruneError):
    """The selection options cannot be met (bad ratio, unknown plan entry, ...)."""


class RewriteError(FxPruneError):
    """The rewritten module does not have the shapes the plan promised. ``node`` (or
    ``nodes``) names what to keep whole, or ``elements`` (element ids) the coupled channels
    to keep whole, when compress retries without them."""

    def __init__(self, message: str, node: str | None = None, elements=None,
                 nodes: frozenset[str] = frozenset()):
        super().__init__(message)
        self.node = node
        self.elements = elements
        self.nodes = frozenset(nodes)  # several nodes to keep whole (module output)


class VerificationError(FxPruneError):
    """The pruned model does not match the masked original: fxprune refuses to return it."""


class StageError(FxPruneError):
    """An error fxprune did not anticipate, contained: ``stage`` names where it happened
    (a stage of the pipeline, or a public function) and the message what to try."""

    def __init__(self, message: str, stage: str | None = None):
        super().__init__(message)
        self.stage = stage


def contained(what: str, hint: str = "") -> Callable[[F], F]:
    """Decorate a public entry point: anything but an :class:`FxPruneError` leaving it is
    re-raised as a :class:`StageError` naming ``what`` failed (the cause stays chained)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except FxPruneError:
                raise
            except Exception as exc:  # noqa: BLE001 - contained, the cause chained
                raise StageError(f"{what} failed: {first_line(exc)}. "
                                 f"{hint or BUG_HINT}", what) from exc
        return inner  # type: ignore[return-value]

    return wrap


BUG_HINT = ("This is a bug in fxprune or in a plugin or callback you passed: please report "
            "it with the model; ignore=[...] the layers involved, or leaf_modules=[...] for "
            "the code that fails, may work around it.")


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` - for wrapping a foreign error in one line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
