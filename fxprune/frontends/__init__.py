"""Frontends capture a model as a :class:`~fxprune.frontends.base.Traced` graph. Every module
of this package that defines ``NAME`` and ``capture(model, inputs, options)`` is a frontend;
``TraceOptions.frontend`` picks one by name. Nothing is imported until a frontend is asked
for, so the package itself depends on nothing."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from ..errors import TraceError

_SKIP = {"base"}


def available() -> dict[str, ModuleType]:
    """Frontend name -> its module."""
    out = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name in _SKIP or info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(mod, "capture") and hasattr(mod, "NAME"):
            out[mod.NAME] = mod
    return out


def get(name: str) -> ModuleType:
    found = available()
    if name not in found:
        raise TraceError(f"unknown frontend {name!r}; available: {sorted(found)}")
    return found[name]
