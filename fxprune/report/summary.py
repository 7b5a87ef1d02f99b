"""What compress did, in numbers: params, FLOPs, groups before/after, frozen reasons, verify;
and the record a pruned module carries (``CompressResult``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
import torch

from ..analyze.graph import ChannelGraph, FrozenReason
from ..budget import BudgetResult
from ..options import CompressOptions
from ..passes.compensate import CompensationReport
from ..passes.recalibrate import RecalibrationReport
from ..plan import Plan
from ..verify import VerifyResult
from .counting import count_flops
from .pictures import as_json, layer_rows, markdown, plot


class Models(NamedTuple):
    """The two models a report compares and the inputs each takes."""

    original: torch.nn.Module
    pruned: torch.nn.Module
    inputs: tuple
    pruned_inputs: tuple  # the inputs sliced to the kept features (input-feature pruning)


@dataclass
class Report:
    params_before: int
    params_after: int
    groups: dict[str, dict[str, int]]
    frozen: list[FrozenReason]
    notes: list[str]
    verify: VerifyResult | None
    timings: dict[str, float] = field(default_factory=dict)
    models: Models | None = field(default=None, repr=False)
    compensation: CompensationReport | None = None  # when compress(compensate=...) ran
    recalibration: RecalibrationReport | None = None  # when compress(recalibrate="bn") ran
    budget: BudgetResult | None = None  # when compress(target_flops/params=...) ran
    fallbacks: list[str] = field(default_factory=list)  # rewrite failures kept whole, retried
    output: str = "graph"  # what compress returned: the pruned graph or the caller's class
    frontend: str = "fx"
    module_verify: VerifyResult | None = None  # module output: the module itself, checked
    attributes: list[str] = field(default_factory=list)  # module attributes updated

    @cached_property
    def flops_before(self) -> int:
        """FLOPs of the original (counted on first use: compress itself does not pay for it)."""
        return count_flops(self.models.original, self.models.inputs)

    @cached_property
    def flops_after(self) -> int:
        return count_flops(self.models.pruned, self.models.pruned_inputs)

    def layers(self) -> list:
        """Per conv/linear layer: channels and params before and after."""
        return layer_rows(self.models.original, self.models.pruned)

    def to_markdown(self) -> str:
        """The summary plus the per-layer before/after table."""
        return (f"# fxprune report\n\n```\n{self.summary()}\n```\n\n## Layers\n\n"
                + markdown(self.layers()) + "\n")

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": {"before": self.params_before, "after": self.params_after},
            "flops": {"before": self.flops_before, "after": self.flops_after},
            "groups": self.groups, "notes": self.notes,
            "frozen": [{"node": f.node, "reason": f.message, "channels": f.units,
                        "category": f.category} for f in self.frozen],
            "verify": str(self.verify) if self.verify is not None else None,
            "verify_ok": self.verify.ok if self.verify is not None else None,
            "budget": str(self.budget) if self.budget is not None else None,
            "timings": self.timings, "fallbacks": self.fallbacks, "output": self.output,
            "frontend": self.frontend, "attributes": self.attributes,
            "module_verify": str(self.module_verify) if self.module_verify else None,
            "layers": as_json(self.layers()),
        }

    def plot(self, path) -> Any:
        """Bar chart of kept output channels per layer, as a PNG at ``path``."""
        return plot(self.layers(), path)

    def summary(self) -> str:
        lines = [
            f"params: {self.params_before:,} -> {self.params_after:,} "
            f"({self.params_after / max(self.params_before, 1):.1%})",
            f"FLOPs:  {self.flops_before:,} -> {self.flops_after:,} "
            f"({self.flops_after / max(self.flops_before, 1):.1%})",
            f"groups pruned: {sum(1 for g in self.groups.values() if g['after'] < g['before'])}"
            f" of {len(self.groups)}",
            f"verify: {self.verify if self.verify is not None else 'skipped'}",
            f"output: {self.output} (frontend {self.frontend})" + (
                f"; the module itself: {self.module_verify}" if self.module_verify else ""),
            "time: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()),
        ]
        if self.frozen:
            lines.append(f"frozen: {len(self.frozen)} reason(s), e.g. "
                         + "; ".join(f"{f.node}: {f.message}" for f in self.frozen[:3]))
        lines.extend(f"fallback: {f}" for f in self.fallbacks)
        if self.attributes:
            lines.append(f"attributes updated ({len(self.attributes)}): "
                         + ", ".join(self.attributes[:8])
                         + (", ..." if len(self.attributes) > 8 else ""))
        if self.budget is not None:
            lines.append(f"budget: {self.budget}")
        if self.compensation is not None:
            lines.append(str(self.compensation))
        if self.recalibration is not None:
            lines.append(str(self.recalibration))
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


@dataclass
class CompressResult:
    """Stored as ``gm.meta["fxprune"]`` on the pruned module.

    It refers to the channel graph and the traced original, so copies of the pruned module
    share it instead of copying the original model along, and pickling keeps only the plan.
    """

    plan: Plan
    report: Report
    graph: ChannelGraph | None
    removed_units: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)
    history: list[Plan] = field(default_factory=list)  # every step's plan, in order
    options: CompressOptions = field(default_factory=CompressOptions)

    def __post_init__(self) -> None:
        if not self.history:
            self.history = [self.plan]

    def __deepcopy__(self, memo: dict) -> CompressResult:
        return self

    def __getstate__(self) -> dict:
        return {"plan": self.plan, "report": None, "graph": None,
                "removed_units": self.removed_units, "extra": {}, "history": self.history,
                "options": self.options.without_data()}
