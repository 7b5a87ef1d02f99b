"""CFDP (common frequency domain pruning), as its released code computes it (methods.md 1):
per image and channel, an orthonormal 2x2-tile DCT-II, each tile blurred with a Gaussian
(sigma 10, SciPy's reflect mode, truncate 4), written into an HxW map M; then
``||M||_F * frac(M > mean M) + alpha * ||F||_F``, averaged over images.

The DCT and blur of a tile are one fixed 4x4 linear operator, built once in float64 and
applied to all tiles at once; scores are computed in float64 so the operator's ~1e-5 tilts
decide near-constant maps exactly as the reference does.
"""

from __future__ import annotations

import functools
import math

import torch

from .activation import ActivationImportance
from .base import register


@functools.lru_cache(maxsize=8)
def tile_operator(tile: int = 2, sigma: float = 10.0, truncate: float = 4.0) -> torch.Tensor:
    """The (tile^2 x tile^2) map from a row-major tile to its blurred DCT coefficients."""
    n = tile
    k = torch.arange(n, dtype=torch.float64)
    dct = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))
    dct[0] *= math.sqrt(1 / n)
    dct[1:] *= math.sqrt(2 / n)
    radius = int(truncate * sigma + 0.5)
    offs = torch.arange(-radius, radius + 1)
    w = torch.exp(-0.5 * (offs.double() / sigma) ** 2)
    w /= w.sum()
    blur = torch.zeros(n, n, dtype=torch.float64)  # 1-D filter on a length-n signal, reflect
    for j in range(n):
        p = (j + offs) % (2 * n)
        src = torch.where(p < n, p, 2 * n - 1 - p)
        blur[j].index_add_(0, src, w)
    op = blur @ dct
    return torch.kron(op, op)


def cfdp_scores(maps: torch.Tensor, alpha: float = 0.03, tile: int = 2,
                sigma: float = 10.0) -> torch.Tensor:
    """(N, C, H, W) feature maps -> (N, C) CFDP scores (float64)."""
    x = maps.double()
    n, c, h, w = x.shape
    norm_f = x.flatten(2).norm(dim=2)
    if min(h, w) < tile:  # the released code's special case: M is the map itself
        m = x.flatten(2)
        above = (m > m.mean(dim=2, keepdim=True)).sum(2)
        return m.norm(dim=2) * above / (h * w) + alpha * norm_f
    bh, bw = h // tile, w // tile
    tiles = x[:, :, :bh * tile, :bw * tile].reshape(n, c, bh, tile, bw, tile)
    tiles = tiles.permute(0, 1, 2, 4, 3, 5).reshape(n, c, bh * bw, tile * tile)
    m = tiles @ tile_operator(tile, sigma).T
    mean = m.sum(dim=(2, 3)) / (h * w)  # uncovered rows/columns of M are zeros
    uncovered = h * w - bh * bw * tile * tile
    above = (m > mean[:, :, None, None]).sum(dim=(2, 3)) + uncovered * (mean < 0)
    norm_m = m.flatten(2).norm(dim=2)
    return norm_m * above / (h * w) + alpha * norm_f


class CFDP(ActivationImportance):
    """``alpha`` weighs the plain map norm; ``tile`` and ``sigma`` are the released code's
    2 and 10 (advanced: other values are not the paper's method)."""

    name = "cfdp"

    def __init__(self, alpha: float = 0.03, tile: int = 2, sigma: float = 10.0):
        self.alpha, self.tile, self.sigma = alpha, tile, sigma

    def per_image(self, maps: torch.Tensor) -> torch.Tensor:
        return cfdp_scores(maps, self.alpha, self.tile, self.sigma)


register("cfdp", CFDP)
