"""Base for plugins that rank channels by their feature maps on calibration data: a score
per (image, channel), averaged over the images as a running mean, summed over a group's
tapped members (our aggregation choice: the papers score single layers)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..calibrate import Tap, all_reduce_fields, per_unit, run_taps, tap_points
from .base import Calibration, Importance, require
from .magnitude import GroupMagnitude

log = logging.getLogger(__name__)


class ImageMean:
    """Running mean over images of a per-(image, channel) score: O(C) memory."""

    def __init__(self, fn):
        self.fn = fn
        self.total: torch.Tensor | None = None
        self.count = 0

    def update(self, x: torch.Tensor) -> None:
        s = self.fn(x).sum(0)
        self.total = s if self.total is None else self.total + s
        self.count += x.shape[0]

    def result(self) -> np.ndarray:
        return (self.total / max(self.count, 1)).double().numpy()

    def all_reduce(self) -> None:
        all_reduce_fields(self, ("total", "count"))


def as_maps(x: torch.Tensor) -> torch.Tensor:
    """(N, C, *rest) as (N, C, H, W): 2-D maps stay, anything else is one row of positions."""
    if x.dim() == 4:
        return x
    return x.reshape(x.shape[0], x.shape[1], 1, -1)


class ActivationImportance(Importance):
    """Subclass and implement :meth:`per_image` ((N, C, H, W) -> (N, C) scores)."""

    needs = "data"

    def per_image(self, maps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def new_stat(self, tap: Tap):
        return ImageMean(lambda x: self.per_image(as_maps(x)))

    def channel_values(self, stat) -> np.ndarray:
        return stat.result()

    def scores(self, graph, calib: Calibration | None = None) -> np.ndarray:
        calib = require(self, calib)
        taps = tap_points(graph, calib.tap)
        stats = {t.key: self.new_stat(t) for t in taps}
        seen = run_taps(graph, stats, calib.data, max_batches=calib.max_batches)
        log.info("%s: %d taps over %d calibration batches", self.name, len(taps), seen)
        values = {k: self.channel_values(s) for k, s in stats.items()}
        return per_unit(graph, taps, values, fallback=lambda: GroupMagnitude(2).scores(graph))
