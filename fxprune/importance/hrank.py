"""HRank: the mean matrix rank of a channel's feature maps over calibration images (the
baseline CFDP's code base descends from)."""

from __future__ import annotations

import torch

from .activation import ActivationImportance
from .base import register


class HRank(ActivationImportance):
    name = "hrank"

    def per_image(self, maps: torch.Tensor) -> torch.Tensor:
        return torch.linalg.matrix_rank(maps.float()).double()


register("hrank", HRank)
