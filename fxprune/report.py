"""What compress did, in numbers: params, FLOPs, groups before/after, frozen reasons, verify."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from .analyze.graph import ChannelGraph
from .select import Plan
from .verify import VerifyResult


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: torch.nn.Module, example_inputs: tuple) -> int:
    """FLOPs of one forward pass, by torch.utils.flop_counter (2 per multiply-add)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*example_inputs)
    finally:
        model.train(was)
    return int(counter.get_total_flops())


def count_cost(model: torch.nn.Module, example_inputs: tuple, kind: str) -> float:
    """What a budget counts: ``kind`` "params" or "flops" (flop_counter's)."""
    if kind == "params":
        return float(count_params(model))
    return float(count_flops(model, example_inputs))


@dataclass
class Report:
    params_before: int
    params_after: int
    groups: dict[str, dict[str, int]]
    frozen: list[tuple[str, str, int]]
    notes: list[str]
    verify: VerifyResult | None
    timings: dict[str, float] = field(default_factory=dict)
    models: tuple = field(default=(), repr=False)  # original, pruned, inputs, pruned inputs
    compensation: Any = None  # a CompensationReport when compress(compensate=...) ran
    budget: Any = None  # a budget.BudgetResult when compress(target_flops/params=...) ran

    @cached_property
    def flops_before(self) -> int:
        """FLOPs of the original (counted on first use: compress itself does not pay for it)."""
        return count_flops(self.models[0], self.models[2])

    @cached_property
    def flops_after(self) -> int:
        return count_flops(self.models[1], self.models[-1])

    def layers(self) -> list:
        """Per conv/linear layer: channels and params before and after (deploy.pictures)."""
        from .deploy.pictures import layer_rows

        return layer_rows(self.models[0], self.models[1])

    def to_markdown(self) -> str:
        """The summary plus the per-layer before/after table."""
        from .deploy.pictures import markdown

        return (f"# fxprune report\n\n```\n{self.summary()}\n```\n\n## Layers\n\n"
                + markdown(self.layers()) + "\n")

    def to_dict(self) -> dict[str, Any]:
        from .deploy.pictures import as_json

        return {
            "params": {"before": self.params_before, "after": self.params_after},
            "flops": {"before": self.flops_before, "after": self.flops_after},
            "groups": self.groups, "notes": self.notes,
            "frozen": [{"node": n, "reason": r, "channels": c} for n, r, c in self.frozen],
            "verify": str(self.verify) if self.verify is not None else None,
            "verify_ok": self.verify.ok if self.verify is not None else None,
            "budget": str(self.budget) if self.budget is not None else None,
            "timings": self.timings, "layers": as_json(self.layers()),
        }

    def plot(self, path) -> Any:
        """Bar chart of kept output channels per layer, as a PNG at ``path``."""
        from .deploy.pictures import plot

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
            "time: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()),
        ]
        if self.frozen:
            lines.append(f"frozen: {len(self.frozen)} reason(s), e.g. "
                         + "; ".join(f"{n}: {r}" for n, r, _ in self.frozen[:3]))
        if self.budget is not None:
            lines.append(f"budget: {self.budget}")
        if self.compensation is not None:
            lines.append(str(self.compensation))
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
    options: dict[str, Any] = field(default_factory=dict)  # what a replay needs (save/load)

    def __post_init__(self) -> None:
        if not self.history:
            self.history = [self.plan]

    def __deepcopy__(self, memo: dict) -> CompressResult:
        return self

    def __getstate__(self) -> dict:
        return {"plan": self.plan, "report": None, "graph": None,
                "removed_units": self.removed_units, "extra": {}, "history": self.history,
                "options": self.options}
