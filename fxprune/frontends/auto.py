"""The default frontend: symbolic trace (Python-level graph, the model's own modules), and
when torch.fx cannot enter the model, torch.export (ATen graph). Both failures are reported
together, so the user sees why neither worked."""

from __future__ import annotations

import dataclasses
import logging

import torch

from ..errors import TraceError
from . import export, fx
from .base import Traced, TraceOptions

NAME = "auto"
log = logging.getLogger(__name__)


def capture(model: torch.nn.Module, inputs: tuple, options: TraceOptions) -> Traced:
    if options.example_kwargs:  # symbolic_trace has no keyword example inputs
        return export.capture(model, inputs, options)
    try:
        return fx.capture(model, inputs, options)
    except TraceError as fx_error:
        if options.leaf_modules or options.concrete_args:
            raise  # fx options were given: the user meant the fx frontend
        log.info("fxprune: symbolic trace failed (%s); trying torch.export", fx_error)
        try:
            return export.capture(model, inputs, dataclasses.replace(options))
        except TraceError as export_error:
            raise TraceError(f"neither frontend captured {type(model).__name__}. fx: "
                             f"{fx_error} -- export: {export_error}") from export_error
