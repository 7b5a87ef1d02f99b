"""The least-squares fits of sequential reconstruction, from moments streamed over the
calibration batches (float32 products per chunk of rows, summed in float64).

Two fits for a dense layer (conv with groups = 1, linear). The *channel map* regresses the
original input on the pruned one, x ~ A z + c, and the layer becomes W A. For a linear or a
1 x 1 conv that is also the best fit of the layer's output (regressing W x on z is W times
regressing x on z, ridge included), so the two are one fit, computed against whichever side
is smaller: O' kept outputs or C inputs. A k x k conv can do better: the *output fit* (He et
al. 2017, ThiNet) solves W' P(z) + b' ~ y on the pruned input's patches P(z) (K k^2
features), so a removed channel may be replaced from its neighbours' pixels too. Its Gram
costs rows x (K k^2)^2, so it runs where that is small (``OUTPUT_FEATURES``), on a subsample
of positions (``ROWS_PER_FEATURE``). A depthwise conv gets a per-channel affine map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

F64 = torch.float64
CHUNK = 1 << 16  # rows per float32 product
OUTPUT_FEATURES = 512  # an output fit has at most this many features (K k^2) ...
OUTPUT_BYTES = 1 << 25  # ... and accumulators of at most 32 MiB ...
MIN_ROWS_PER_FEATURE = 8  # ... and at least this many sample rows per feature
ROWS_PER_FEATURE = 64  # rows an output fit reads per feature (positions subsampled above)


@dataclass(frozen=True)
class Window:
    """A zero-padded 2-d conv's window (what ``F.unfold`` needs)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @property
    def size(self) -> int:
        return self.kernel[0] * self.kernel[1]


def columns(t: torch.Tensor, dim: int, pick: torch.Tensor | None = None) -> torch.Tensor:
    """(C, samples): channel ``dim`` of ``t`` against every other position (``pick``: those
    flat positions of each batch element only), float32 at least. A view for a linear's
    whole input, else a copy."""
    dtype = torch.promote_types(t.dtype, torch.float32)
    if dim == t.dim() - 1:  # a linear's input: every row a sample
        m = t.reshape(-1, t.shape[dim])
        return (m if pick is None else m.index_select(0, pick)).T.to(dtype)
    v = t.flatten(2)
    v = v if pick is None else v.index_select(2, pick)
    return v.transpose(0, 1).reshape(t.shape[1], -1).to(dtype)


class Sampler:
    """Random positions, at most ``ROWS_PER_FEATURE`` sample rows per feature over all
    batches (the same positions for every element of one batch); None: take them all."""

    def __init__(self, total_rows: int, features: int):  # total_rows 0: take them all
        self.keep = min(1.0, ROWS_PER_FEATURE * features / max(total_rows, 1))
        self.gen = torch.Generator().manual_seed(0)

    def pick(self, size: int) -> torch.Tensor | None:
        if self.keep >= 1.0:
            return None
        return torch.randperm(size, generator=self.gen)[:max(1, round(self.keep * size))]


class Moments:
    """n, sum f, sum t, sum f f^T and sum t f^T of features f against targets t, over
    samples (``diagonal``: only channel c against channel c)."""

    def __init__(self, diagonal: bool = False):
        self.diagonal = diagonal
        self.n, self.f, self.t, self.ff, self.tf = 0, 0.0, 0.0, 0.0, 0.0

    def add(self, f: torch.Tensor, t: torch.Tensor) -> None:
        """``f`` (F, samples) and ``t`` (T, samples): one matrix product over all samples
        (per batch element, with a 7 x 7 map, it would be a sum of thin ones)."""
        for i in range(0, f.shape[1], CHUNK):
            fc, tc = f[:, i:i + CHUNK], t[:, i:i + CHUNK]
            if self.diagonal:
                self.ff = self.ff + (fc * fc).sum(1, dtype=F64)
                self.tf = self.tf + (tc * fc).sum(1, dtype=F64)
            else:
                self.ff = self.ff + (fc @ fc.T).to(F64)
                self.tf = self.tf + (tc @ fc.T).to(F64)
        self.f = self.f + f.sum(1).to(F64)
        self.t = self.t + t.sum(1).to(F64)
        self.n += f.shape[1]

    def solve(self, ridge: float, intercept: bool, prior: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, int]:
        """(T x F + 1) M with t ~ M (f, 1): the ridge shrinks M towards ``prior`` (zero if
        None); the offset column is not shrunk (or is pinned at 0 without ``intercept``).
        Also the accumulators' bytes."""
        k, n = self.ff.shape[0], self.n
        g = torch.zeros(k + 1, k + 1, dtype=F64)  # E[f1 f1^T], f1 = (f, 1)
        h = torch.zeros(self.tf.shape[0], k + 1, dtype=F64)  # E[t f1^T]
        g[:k, :k], h[:, :k] = self.ff / n, self.tf / n
        if intercept:
            g[:k, k] = g[k, :k] = self.f / n
            g[k, k] = 1.0
            h[:, k] = self.t / n
        lam = ridge * float(torch.diagonal(g)[:-1].mean().clamp_min(1e-12))
        reg = lam * torch.eye(k + 1, dtype=F64)
        reg[-1, -1] = 0.0 if intercept else 1.0
        if prior is not None:
            h[:, :k] += lam * prior
        m = None
        try:
            m = torch.linalg.solve(g + reg, h.T).T
        except RuntimeError:  # singular without a ridge (kept features that are collinear)
            pass
        if m is None or not torch.isfinite(m).all():
            m = h @ torch.linalg.pinv(g + reg, hermitian=True)
        return m, (g.numel() + h.numel()) * 8


def channel_map(xs: list, zs: list, dim: int, cols: torch.Tensor, ridge: float,
                intercept: bool) -> tuple[torch.Tensor, int]:
    """C x (K + 1) A_aug with x ~ (A + S) z + c, S placing z at its own positions: fitted on
    d = x - S z so that the ridge shrinks the correction A towards plain pruning."""
    mom = Moments()
    for x, z in zip(xs, zs):
        zc, d = columns(z, dim), columns(x, dim)
        d = d.clone() if d.data_ptr() == x.data_ptr() else d
        d.index_add_(0, cols, zc, alpha=-1)
        mom.add(zc, d)
    return mom.solve(ridge, intercept)


def affine_map(xs: list, zs: list, dim: int, intercept: bool
               ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per channel, x_c ~ a_c z_c + c_c (``xs`` already at the kept channels)."""
    mom = Moments(diagonal=True)
    for x, z in zip(xs, zs):
        mom.add(columns(z, dim), columns(x, dim))
    n = mom.n
    mz, mx = mom.f / n, mom.t / n
    var = (mom.ff / n - mz * mz).clamp_min(1e-12)
    a = (mom.tf / n - mx * mz) / var
    c = (mx - a * mz) if intercept else torch.zeros_like(a)
    return a, c, (mom.ff.numel() + mom.tf.numel()) * 8


def _patches(z: torch.Tensor, window: Window, pick: torch.Tensor | None) -> torch.Tensor:
    """(K k^2, samples): the conv's input window at every output position of every batch
    element (``pick``: at those flat output positions only, gathered tap by tap rather than
    unfolded whole)."""
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    if pick is None:
        f = F.unfold(z, window.kernel, window.dilation, window.padding, window.stride)
    else:
        (ph, pw), (sh, sw), (dh, dw) = window.padding, window.stride, window.dilation
        width = output_shape(z, window)[1]
        r, c = (pick // width) * sh, (pick % width) * sw
        zp = F.pad(z, (pw, pw, ph, ph))
        f = torch.stack([zp[:, :, r + i * dh, c + j * dw] for i in range(window.kernel[0])
                         for j in range(window.kernel[1])], 2).flatten(1, 2)
    return f.transpose(0, 1).reshape(f.shape[1], -1)


def output_shape(z: torch.Tensor, window: Window) -> list[int]:
    return [(size + 2 * p - d * (k - 1) - 1) // s + 1 for size, k, s, p, d in zip(
        z.shape[2:], window.kernel, window.stride, window.padding, window.dilation)]


def output_rows(z: torch.Tensor, window: Window) -> int:
    """Sample rows of the conv's output for the input ``z``."""
    hw = output_shape(z, window)
    return z.shape[0] * hw[0] * hw[1]


def pointwise(window: Window | None) -> bool:
    """A linear or a 1 x 1 conv without padding: each output pixel reads one input pixel."""
    return window is None or (window.size == 1 and window.padding == (0, 0))


def output_fit_fits(features: int, outputs: int, inputs: int, rows: int,
                    window: Window | None) -> bool:
    """Whether to fit the layer on its output. For a pointwise layer that is the channel
    map's fit itself, on the smaller side (O' outputs against C inputs); a k x k conv's
    must be affordable and determined."""
    if pointwise(window):
        return outputs < inputs
    return (features <= OUTPUT_FEATURES and rows >= MIN_ROWS_PER_FEATURE * features
            and ((features + 1) ** 2 + outputs * (features + 1)) * 8 <= OUTPUT_BYTES)


def output_fit(ys: list, zs: list, dim: int, rows: torch.Tensor, window: Window | None,
               w_plain: torch.Tensor, ridge: float, intercept: bool
               ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """The layer refitted on its output: (weight, bias or None, bytes). ``ys`` the original
    layer's outputs, ``zs`` the pruned layer's inputs; a k x k conv's on a subsample of
    positions, a pointwise layer's on all."""
    point = pointwise(window)
    sampler = Sampler(0 if point else sum(y.numel() // y.shape[1] for y in ys),
                      w_plain[0].numel() + 1)
    mom = Moments()
    for y, z in zip(ys, zs):
        pick = sampler.pick(y[0, 0].numel())
        if point:
            f = columns(z if window is None else z[..., ::window.stride[0], ::window.stride[1]],
                        dim)
        else:
            f = _patches(z, window, pick)
        mom.add(f, columns(y, dim, pick).index_select(0, rows))
    m, used = mom.solve(ridge, intercept, w_plain.flatten(1).to(F64))
    bias = m[:, -1] if intercept else None
    return m[:, :-1].reshape(w_plain.shape), bias, used
