"""The one value the stages read and write: what was asked (``options``), what each stage
produced so far, and the timings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from ..analyze.graph import ChannelGraph
from ..budget import BudgetResult
from ..frontends.base import Traced
from ..importance.base import Importance
from ..options import CompressOptions
from ..passes.compensate import CompensationReport
from ..passes.module_output import ModuleOutput
from ..passes.recalibrate import RecalibrationReport
from ..plan import Plan
from ..verify import VerifyResult


@dataclass(frozen=True)
class Fallback:
    """One freeze-and-retry: what failed where, and what was kept whole because of it."""

    node: str | None
    rule: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.node} ({self.rule})" if self.node else "-"
        return f"{where}: {self.reason}"


@dataclass
class State:
    model: torch.nn.Module
    inputs: tuple
    options: CompressOptions
    plugin: Importance
    timings: dict[str, float] = field(default_factory=dict)
    traced: Traced | None = None  # capture
    frozen_nodes: frozenset[str] = frozenset()  # nodes the rewrite could not keep consistent
    frozen_elements: np.ndarray | None = None  # reshaped dims it could not lay out
    fallbacks: list[Fallback] = field(default_factory=list)  # each retry, for the report
    graph: ChannelGraph | None = None  # analyze
    scores: np.ndarray | None = None  # score: per unit label of ``scored_on``
    scored_on: ChannelGraph | None = None
    plan: Plan | None = None  # select
    budget: BudgetResult | None = None
    removed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pruned: fx.GraphModule | None = None  # rewrite
    pruned_inputs: tuple = ()
    verify: VerifyResult | None = None  # verify
    compensation: CompensationReport | None = None  # compensate
    uncompensated: dict[str, Any] | None = None  # tensors before compensate / recalibrate
    recalibration: RecalibrationReport | None = None  # recalibrate
    output: str = "graph"  # capture: "graph" or "module"
    module_out: ModuleOutput | None = None  # materialize
    module_verify: VerifyResult | None = None
    module_notes: list[str] = field(default_factory=list)
    result: torch.nn.Module | None = None  # report: what compress returns
