"""Analytic cost of a pruned model - parameters or conv/linear FLOPs for a mask of kept
units - cheap enough to evaluate inside a bisection (budgets, SWD's mask)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .analyze.graph import ChannelGraph
from .errors import OptionError

BUDGETS = ("params", "flops")


class CostModel:
    """Kept parameters (or FLOPs) of the analysed tensors for a mask of kept units: each
    tensor costs prod over its dims of the kept positions, times a weight (1 for params;
    output positions per channel of the conv/linear that owns a weight for FLOPs, so FLOPs
    are multiply-adds of conv and linear modules, as flop_counter counts them, halved).
    ``local[label]`` is a unit's position in the mask (-1: never pruned); the default is the
    graph's own labels."""

    def __init__(self, graph: ChannelGraph, local: np.ndarray | None = None,
                 budget: str = "flops"):
        if budget not in BUDGETS:
            raise OptionError(f"budget {budget!r}: use one of {BUDGETS}")
        if local is None:  # the mask is over every unit label of the graph
            local = np.arange(len(graph.labels), dtype=np.int64)
        weights = _flop_weights(graph) if budget == "flops" else None
        segs, labels, fixed, w = [], [], [], []
        tensors = graph.traced.tensors
        counted = set()
        for info in graph.params.values():
            t = tensors.get(info.qualname)
            if not isinstance(t, torch.nn.Parameter) or id(t) in counted:
                continue
            counted.add(id(t))
            weight = 1.0 if weights is None else weights.get(info.qualname, 0.0)
            if weight == 0.0:
                continue
            p = len(w)
            w.append(weight)
            for dim, ax in enumerate(info.axes):
                lab = local[graph.labels[ax.comp.ids]] if dim in info.roles else None
                if lab is None or (lab < 0).all():
                    fixed.append((p, info.shape[dim]))
                else:
                    segs.append((p, lab.size))
                    labels.append(lab)
        self.weight = np.asarray(w, dtype=np.float64)
        self.seg_param = np.asarray([p for p, _ in segs], dtype=np.int64)
        self.labels = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
        self.starts = np.cumsum([0] + [n for _, n in segs[:-1]]).astype(np.int64)
        self.log_fixed = np.zeros(len(w))
        for p, n in fixed:
            self.log_fixed[p] += math.log(n) if n else -np.inf
        self.other = 0.0
        if budget == "params":  # parameters fxprune does not analyse count as they are
            self.other = float(sum(t.numel() for t in graph.traced.gm.parameters()
                                   if id(t) not in counted))

    def __call__(self, keep: np.ndarray) -> float:
        ext = np.append(keep, True)  # label -1 (not prunable) is always kept
        kept = np.add.reduceat(ext[self.labels].astype(np.float64), self.starts) \
            if self.labels.size else np.zeros(0)
        kept = np.maximum(kept, 1.0)  # the rewrite never empties a tensor dim: one unit stays
        logs = self.log_fixed.copy()
        with np.errstate(divide="ignore"):
            np.add.at(logs, self.seg_param, np.log(kept))
        return float((self.weight * np.exp(logs)).sum()) + self.other


def _flop_weights(graph: ChannelGraph) -> dict[str, float]:
    """Per producer weight: output positions per output channel, summed over its calls (a
    conv's N*H*W, a linear's tokens), so weight elements x this = multiply-adds."""
    out: dict[str, float] = {}
    for node in graph.traced.gm.graph.nodes:
        rule = graph.rules.get(node.name)
        weight = rule.weight_of(node) if rule is not None else None
        spec = graph.traced.values.get(node.name)
        if weight is None or getattr(spec, "shape", None) is None or not spec.shape:
            continue
        ch = spec.shape[rule.producer_dim % len(spec.shape)]
        out[weight] = out.get(weight, 0.0) + float(np.prod(spec.shape)) / max(ch, 1)
    return out
