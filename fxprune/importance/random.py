"""Random importance: the baseline every criterion has to beat."""

from __future__ import annotations

import numpy as np

from .base import Importance, register


class RandomImportance(Importance):
    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def scores(self, graph, calib=None) -> np.ndarray:
        return np.random.default_rng(self.seed).random(len(graph.labels))


register("random", RandomImportance)
