"""The errors fxprune raises: each names what failed and what to try."""

from __future__ import annotations


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
    """The rewritten module does not have the shapes the plan promised. ``node`` names the
    node to keep whole, or ``elements`` (element ids) the coupled channels to keep whole,
    when compress retries without them."""

    def __init__(self, message: str, node: str | None = None, elements=None):
        super().__init__(message)
        self.node = node
        self.elements = elements


class VerificationError(FxPruneError):
    """The pruned model does not match the masked original: fxprune refuses to return it."""


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` - for wrapping a foreign error in one line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
