"""The Plan: which positions of each group's leader slice are removed. Plain JSON data,
replayable on a fresh instance of the same model because the analysis is deterministic."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from .analyze.elements import unique
from .analyze.graph import ChannelGraph, parse_slice
from .errors import SelectionError


@dataclass
class Plan:
    """Removed positions along each group's leader slice (``"param[dim]"``)."""

    removed: dict[str, list[int]] = field(default_factory=dict)
    groups: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> before/after
    notes: list[str] = field(default_factory=list)
    inputs: dict[str, list[int]] = field(default_factory=dict)  # input -> kept feature indices

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls(**json.loads(text))

    def removed_units(self, graph: ChannelGraph) -> np.ndarray:
        out = []
        for key, positions in self.removed.items():
            qual, dim = parse_slice(key)
            info = graph.params.get(qual)
            if info is None:
                raise SelectionError(f"plan names {qual!r}, which the model does not have")
            out.append(graph.labels[info.axes[dim].comp.ids[np.asarray(positions, int)]])
        return unique(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)
