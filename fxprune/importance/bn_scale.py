"""BN-scale (network slimming's criterion): |gamma| summed over the group's batch-norm
layers. Groups with no batch norm fall back to L2 magnitude (groups rank on their own)."""

from __future__ import annotations

import numpy as np
import torch

from .base import Calibration, Importance, register
from .magnitude import GroupMagnitude, slice_sums


def batchnorm_weights(graph) -> set[str]:
    return {f"{name}.weight" for name, m in graph.ctx.modules.items()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.weight is not None}


class BNScale(Importance):
    name = "bn_scale"

    def scores(self, graph, calib: Calibration | None = None) -> np.ndarray:
        gammas = batchnorm_weights(graph)
        with torch.no_grad():
            acc = slice_sums(graph, lambda q, t: t.detach().abs() if q in gammas else None)
            has = slice_sums(graph, lambda q, t: torch.ones_like(t) if q in gammas else None)
        return np.where(has > 0, acc, GroupMagnitude(2).scores(graph))


register("bn_scale", BNScale)
