"""Where the record of a compress call lives: ``gm.meta["fxprune"]`` on a graph output, and
beside (not in) a module output, so pickling, ``deepcopy`` and trainers (ultralytics' EMA)
see the user's class exactly. No fxprune imports: every layer may look a record up."""

from __future__ import annotations

import weakref
from typing import Any

import torch

_RESULTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def remember(module: torch.nn.Module, result: Any) -> None:
    _RESULTS[module] = result


def result_of(module: torch.nn.Module) -> Any:
    """The ``CompressResult`` of a module :func:`fxprune.compress` returned (graph or module
    output): plan, report, options and channel graph."""
    meta = getattr(module, "meta", None)
    if isinstance(meta, dict) and "fxprune" in meta:
        return meta["fxprune"]
    if module in _RESULTS:
        return _RESULTS[module]
    raise KeyError(f"{type(module).__name__} was not returned by fxprune.compress (or is a "
                   "copy of it)")
