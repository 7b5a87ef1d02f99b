"""QSFM (quantified similarity of feature maps) - a reconstruction, documented as such: no
code or full text is public (methods.md 3). Pairwise similarity of a group's channels,
averaged over calibration images from a streamed C x C accumulator, then greedy redundancy
elimination: repeatedly drop the kept channel most similar to another kept one (of that pair,
the one with less energy). A unit's score is how long it survives, so keeping the top k is
the greedy's answer for k. ``merge=True`` asks compress for merge compensation: each removed
channel is folded into its most correlated kept one in the consumers' weights, with the
least-squares scale and offset (see passes/compensate.py)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..calibrate import Tap, all_reduce_fields, run_taps, tap_points
from ..errors import OptionError
from .activation import as_maps
from .base import Calibration, Importance, register, require
from .magnitude import GroupMagnitude

log = logging.getLogger(__name__)
_CHUNK = 1 << 24  # elements of the (images, C, C) transient per step of SSIM/PSNR
_GRAM_BLOCK = 1 << 20  # elements of normalised maps per Gram product (stays in cache)


class Similarity:
    """Streamed sum over images of a (C, C) similarity, plus per-channel energy."""

    def __init__(self, kind: str):
        self.kind = kind
        self.total: torch.Tensor | None = None
        self.energy: torch.Tensor | None = None
        self.count = 0

    def update(self, x: torch.Tensor) -> None:
        f = as_maps(x).flatten(2).float()  # (N, C, P); per-image sums are short: float32
        n, c, p = f.shape
        norms = torch.linalg.vector_norm(f, dim=2)  # (N, C)
        if self.kind == "cosine":
            s = _cosine_sum(f, norms).double()
        else:
            step = max(1, _CHUNK // max(c * c, 1))
            s = sum(self._pairwise(f[i:i + step]).sum(0) for i in range(0, n, step)).double()
        e = norms.double().square().sum(0) / p
        self.total = s if self.total is None else self.total + s
        self.energy = e if self.energy is None else self.energy + e
        self.count += n

    def all_reduce(self) -> None:
        all_reduce_fields(self, ("total", "energy", "count"))

    def _pairwise(self, f: torch.Tensor) -> torch.Tensor:
        p = f.shape[2]
        rng = (f.amax(dim=(1, 2)) - f.amin(dim=(1, 2))).clamp_min(1e-12)[:, None, None]
        if self.kind == "psnr":
            sq = (f * f).sum(2)
            mse = (sq[:, :, None] + sq[:, None, :] - 2 * f @ f.transpose(1, 2)) / p
            return 10 * torch.log10(rng ** 2 / mse.clamp_min(1e-10 * rng ** 2))
        mu = f.mean(2)
        d = f - mu[:, :, None]
        cov = d @ d.transpose(1, 2) / p
        var = torch.diagonal(cov, dim1=1, dim2=2)
        c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2  # SSIM's constants, global (no window)
        num = (2 * mu[:, :, None] * mu[:, None, :] + c1) * (2 * cov + c2)
        den = (mu[:, :, None] ** 2 + mu[:, None, :] ** 2 + c1) * (
            var[:, :, None] + var[:, None, :] + c2)
        return num / den

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        k = max(self.count, 1)
        return (self.total / k).numpy(), (self.energy / k).numpy()


def _cosine_sum(f: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """Sum over images of the per-image cosine Gram of (N, C, P) maps: the sum of per-image
    Grams is the Gram of the normalised images laid side by side, one (C x kP) product per
    cache-sized block of k images (3x faster than N small GEMMs on 1280 channels of 7x7,
    1.7x on 96 of 112x112). From 64 channels up the product runs in numpy, whose
    ``A @ A.T`` is a BLAS syrk - half the multiply-adds; torch has no symmetric product."""
    n, c, p = f.shape
    inv = norms.clamp_min(1e-12).reciprocal_()
    k = max(1, min(n, _GRAM_BLOCK // max(c * p, 1)))
    buf = torch.empty(c, k, p, dtype=f.dtype)
    total = torch.zeros(c, c, dtype=f.dtype)
    for i in range(0, n, k):  # blocks of images, not a loop over images
        m = min(k, n - i)
        g = buf[:, :m]
        torch.mul(f[i:i + m].transpose(0, 1), inv[i:i + m].T[:, :, None], out=g)
        g = g.reshape(c, m * p)
        if c < 64:
            total.addmm_(g, g.T)
        else:
            a = g.numpy()
            total += torch.from_numpy(a @ a.T)
    return total


def elimination_order(sim: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """Survival rank per channel (0 = dropped first) under greedy redundancy elimination.
    Sequential by nature; each step is a few O(C) numpy calls plus a refresh of the channels
    whose nearest neighbour was just dropped. ``sim`` is read, never written."""
    m = sim.shape[0]
    s = np.asarray(sim, dtype=np.float64)
    penalty = np.zeros(m)  # -inf once dropped (and on the diagonal via `own`)
    own = np.arange(m)
    masked = s.copy()
    masked[own, own] = -np.inf
    nn_idx = masked.argmax(1)
    nn_val = masked[own, nn_idx]
    rank = np.full(m, m - 1, dtype=np.int64)
    for step in range(m - 1):
        i = int(nn_val.argmax())  # dropped channels hold -inf
        j = int(nn_idx[i])
        drop = i if (energy[i], i) <= (energy[j], j) else j
        rank[drop] = step
        penalty[drop] = nn_val[drop] = -np.inf
        nn_idx[drop] = -1  # a dropped channel is never refreshed again
        stale = np.flatnonzero(nn_idx == drop)
        if stale.size:
            rows = masked[stale] + penalty
            nn_idx[stale] = rows.argmax(1)
            nn_val[stale] = rows[np.arange(stale.size), nn_idx[stale]]
    return rank


class QSFM(Importance):
    """``similarity``: "cosine" (default, streamed Gram), "ssim" (global SSIM per map pair)
    or "psnr"; ``merge``: fold removed channels into their twins (compensation)."""

    needs = "data"

    def __init__(self, similarity: str = "cosine", merge: bool = False):
        if similarity not in ("cosine", "ssim", "psnr"):
            raise OptionError(f"similarity {similarity!r}: use cosine, ssim or psnr")
        self.similarity = similarity
        self.compensate = "merge" if merge else None
        self.name = "qsfm_merge" if merge else "qsfm"

    def scores(self, graph, calib: Calibration | None = None) -> np.ndarray:
        calib = require(self, calib)
        taps = tap_points(graph, calib.tap)
        stats = {t.key: Similarity(self.similarity) for t in taps}
        run_taps(graph, stats, calib.data, max_batches=calib.max_batches)
        n = len(graph.labels)
        scores = GroupMagnitude(2).scores(graph)  # groups no tap observes
        unit_group = np.full(n, -1, dtype=np.int64)
        for g in graph.groups:
            unit_group[g.units] = g.gid
        by_group: dict[int, list[Tap]] = {}
        for t in taps:  # a tap whose channels all belong to one group informs that group
            gids = np.unique(unit_group[t.labels])
            if gids.size == 1 and gids[0] >= 0:
                by_group.setdefault(int(gids[0]), []).append(t)
        for g in graph.groups:
            mine = by_group.get(g.gid)
            if not mine:
                continue
            local = np.full(n, -1, dtype=np.int64)
            local[g.units] = np.arange(g.size)
            sim, energy = np.zeros((g.size, g.size)), np.zeros(g.size)
            for t in mine:
                s, e = stats[t.key].result()
                idx = local[t.labels]
                if np.unique(idx).size == idx.size:  # the usual case: no repeated channel
                    sim[np.ix_(idx, idx)] += s
                    energy[idx] += e
                else:
                    np.add.at(sim, (idx[:, None], idx[None, :]), s)
                    np.add.at(energy, idx, e)
            scores[g.units] = (elimination_order(sim, energy) + 1) / g.size
        return scores


register("qsfm", QSFM)
register("qsfm_merge", lambda: QSFM(merge=True))
