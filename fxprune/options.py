"""The options of ``compress``, in groups, each validated once when it is made.

``compress``'s keyword arguments, the CLI's flags and a saved artifact's replay options all
become one :class:`CompressOptions`; the pipeline reads nothing else. Errors are
:class:`~fxprune.errors.OptionError` (a ``ValueError``) or, for the selection's own bounds,
:class:`~fxprune.errors.SelectionError`, raised before any work is done.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx

from .cost import BUDGETS
from .errors import OptionError, SelectionError
from .frontends.base import TraceOptions
from .importance.base import Calibration, Importance, get_importance
from .plan import Plan

COMPENSATION_METHODS = ("lstsq", "merge", "mean", "sequential")
Callback = Callable[[fx.GraphModule, int], Any]

__all__ = ["AttentionOptions", "Budget", "Calibration", "CompensationOptions",
           "CompressOptions", "InputOptions", "SelectOptions", "TraceOptions"]


@dataclass(frozen=True)
class SelectOptions:
    """Which units go: ``ratio`` per group (or of all units with ``global_ranking``; None
    means "on when there is a budget"), per-module ``ratios`` overrides (fnmatch), ``ignore``d
    producers, ``min_channels`` / ``round_to`` per group, ``threshold`` on the scores instead
    of ratios, or a saved ``plan`` replayed as it is."""

    ratio: float = 0.5
    ratios: Mapping[str, float] = field(default_factory=dict)
    ignore: tuple = ()
    min_channels: int = 1
    round_to: int = 1
    global_ranking: bool | None = None
    exact_only: bool | None = None  # None: True for Hugging Face models, else False
    threshold: float | None = None
    plan: Plan | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratios", dict(self.ratios or {}))
        object.__setattr__(self, "ignore", tuple(self.ignore))
        for what, r in [("ratio", self.ratio)] + [(f"ratios[{k!r}]", v)
                                                  for k, v in self.ratios.items()]:
            if not 0.0 <= r < 1.0:
                raise SelectionError(f"{what} must be in [0, 1), got {r}")
        if self.min_channels < 0:
            raise SelectionError(f"min_channels must be >= 0, got {self.min_channels}")
        if self.round_to < 1:
            raise SelectionError(f"round_to must be >= 1, got {self.round_to}")


@dataclass(frozen=True)
class AttentionOptions:
    """Attention: remove whole heads and/or head dims (with both, each takes
    1 - sqrt(1 - ratio))."""

    prune_heads: bool = True
    prune_head_dims: bool = True


@dataclass(frozen=True)
class Budget:
    """``kind`` "flops" or "params"; ``value`` a fraction of the dense model (<= 1) or an
    absolute count (> 1; FLOPs as flop_counter counts them, 2 per multiply-add, for the
    example inputs)."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in BUDGETS:
            raise OptionError(f"budget {self.kind!r}: use one of {BUDGETS}")
        if not self.value > 0:
            raise OptionError(f"target_{self.kind} must be > 0, got {self.value}")

    def absolute(self, dense: float) -> float:
        target = self.value * dense if self.value <= 1 else self.value
        if target > dense:
            raise OptionError(f"target_{self.kind}={self.value:g} is above the dense model's "
                              f"{dense:,.0f}")
        return target

    @classmethod
    def from_targets(cls, target_flops: float | None, target_params: float | None
                     ) -> Budget | None:
        if target_flops is not None and target_params is not None:
            raise OptionError("give target_flops or target_params, not both")
        if target_flops is not None:
            return cls("flops", float(target_flops))
        if target_params is not None:
            return cls("params", float(target_params))
        return None


@dataclass(frozen=True)
class CompensationOptions:
    """``method`` "lstsq" or "merge" refits the consumers of removed channels; None takes
    the importance plugin's default, "none" turns that off. ``ridge`` regularises the fit."""

    method: str | None = None
    ridge: float = 1e-3

    def __post_init__(self) -> None:
        if self.method is False:
            object.__setattr__(self, "method", "none")
        if self.method not in (None, "none", *COMPENSATION_METHODS):
            raise OptionError(f"compensate={self.method!r}: use one of "
                              f"{COMPENSATION_METHODS} or 'none'")
        if not self.ridge >= 0:
            raise OptionError(f"ridge must be >= 0, got {self.ridge}")

    def resolve(self, importance: Importance) -> str | None:
        """The method that runs: the explicit one, else the plugin's default; None for off."""
        method = self.method if self.method is not None else getattr(
            importance, "compensate", None)
        return None if method in (None, "none") else method


@dataclass(frozen=True)
class InputOptions:
    """``prune_inputs``: the inputs' feature axis (dim 1) is prunable; the pruned model then
    takes only the kept features, or the full input with ``keep_input_signature``."""

    prune_inputs: bool = False
    keep_input_signature: bool = False


@dataclass(frozen=True)
class CompressOptions:
    """Everything one ``compress`` call was asked to do (recorded in ``CompressResult``)."""

    trace: TraceOptions = field(default_factory=TraceOptions)
    select: SelectOptions = field(default_factory=SelectOptions)
    attention: AttentionOptions = field(default_factory=AttentionOptions)
    budget: Budget | None = None
    calibration: Calibration = field(default_factory=Calibration)
    compensation: CompensationOptions = field(default_factory=CompensationOptions)
    inputs: InputOptions = field(default_factory=InputOptions)
    importance: str | Importance = "l2"
    verify: bool = True
    steps: int = 1
    callback: Callback | None = None
    output: str | None = None  # "graph" | "module"; None: the frontend's default
    hf_config: str | None = None  # "uniform": a config from_pretrained can build (fxprune.hf)
    recalibrate: str | None = None  # "bn": re-estimate BatchNorm statistics (passes/recalibrate)

    def __post_init__(self) -> None:
        sel = self.select
        if self.output not in (None, "graph", "module"):
            raise OptionError(f"output must be 'graph' or 'module', got {self.output!r}")
        if sel.global_ranking is None:
            self._set("select", dataclasses.replace(sel, global_ranking=self.budget is not None))
        if sel.plan is not None and sel.plan.inputs and not self.inputs.prune_inputs:
            self._set("inputs", dataclasses.replace(self.inputs, prune_inputs=True))
        plugin = get_importance(self.importance)  # an unknown name fails here
        data = self.calibration.data
        if sel.plan is None and plugin.needs is not None and data is None:
            raise OptionError(f"importance {plugin.name!r} ranks channels from activations: "
                              "pass calibration=<iterable of input batches> (a DataLoader or "
                              "a list of tensors)")
        if plugin.needs == "labels" and sel.plan is None and self.calibration.loss_fn is None:
            raise OptionError(f"importance {plugin.name!r} needs loss_fn=(output, target) -> "
                              "loss and calibration batches of (inputs, target)")
        method = self.compensation.resolve(plugin)
        if method is not None and data is None:
            raise OptionError(f"compensate={method!r} fits the consumers on activations: pass "
                              "calibration=<iterable of input batches>")
        if self.recalibrate not in (None, "bn"):
            raise OptionError(f"recalibrate must be 'bn' or None, got {self.recalibrate!r}")
        if self.recalibrate is not None and data is None:
            raise OptionError("recalibrate='bn' re-estimates BatchNorm statistics on data: pass "
                              "calibration=<iterable of input batches>")
        if self.budget is not None and (sel.threshold is not None or sel.ratios
                                        or sel.plan is not None):
            raise OptionError("a FLOPs/params target sets the selection: do not also pass "
                              "threshold=, ratios= or plan=")
        if self.steps < 1:
            raise OptionError(f"steps must be >= 1, got {self.steps}")
        if self.steps > 1 and (sel.plan is not None or sel.threshold is not None):
            raise OptionError("steps > 1 works with ratio= or a target, not plan=/threshold=")

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def plugin(self) -> Importance:
        return get_importance(self.importance)

    def without_data(self) -> CompressOptions:
        """What can be kept beside a pruned module: no calibration batches, callback, loss
        function or plugin object (a user's plugin is recorded by name)."""
        name = self.importance if isinstance(self.importance, str) else getattr(
            self.importance, "name", "custom")
        plain = copy.copy(self)  # not re-validated: a record of what ran, not a request
        plain._set("calibration", Calibration(None, self.calibration.max_batches,
                                              self.calibration.tap))
        plain._set("callback", None)
        plain._set("importance", name)
        return plain


def replay_options(options: CompressOptions) -> dict[str, Any]:
    """The options an artifact records for replaying its plans (JSON-ready but for the
    leaf module types, which the artifact names itself)."""
    return {"leaf_modules": list(options.trace.leaf_modules),
            "concrete_args": options.trace.concrete_args,
            "prune_inputs": options.inputs.prune_inputs,
            "keep_input_signature": options.inputs.keep_input_signature}


def from_replay(doc: Mapping[str, Any], *, verify: bool = True) -> CompressOptions:
    """The options that replay a recorded plan (``replay_options``'s inverse; the plan is
    set per step by the caller)."""
    return CompressOptions(
        trace=TraceOptions(frontend=doc.get("frontend", "fx"),
                           leaf_modules=tuple(doc.get("leaf_modules", ())),
                           concrete_args=doc.get("concrete_args")),
        inputs=InputOptions(bool(doc.get("prune_inputs", False)),
                            bool(doc.get("keep_input_signature", False))),
        verify=verify, output=doc.get("output"))
