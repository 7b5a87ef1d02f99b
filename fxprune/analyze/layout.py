"""Where each kept element sits in the pruned tensor, and how big each dim becomes.

Plain and collapsed comps keep sorted order. A ragged comp drops whole lines (removed heads)
and compacts the kept lines along the ragged dim: exactly the order the rewritten
reshape/transpose ops produce, so parameters read by such a dim are gathered in that order.
"""

from __future__ import annotations

import numpy as np

from .elements import Axis


class LayoutError(ValueError):
    """A selection that a reshaped dim cannot hold (lines not in whole blocks, or uneven)."""


def ragged_layout(comp, mask: np.ndarray) -> tuple[list[np.ndarray], int]:
    """Kept coordinates of every block dim and the common per-line count of a ragged comp."""
    r = comp.ragged
    moved = np.moveaxis(mask, r, -1)
    counts = moved.sum(axis=-1)
    alive = counts > 0
    per_dim = []
    for d in range(alive.ndim):
        other = tuple(x for x in range(alive.ndim) if x != d)
        per_dim.append(alive.any(axis=other) if other else alive)
    product = np.ones_like(alive)
    for d, kept in enumerate(per_dim):
        shape = [1] * alive.ndim
        shape[d] = kept.size
        product = product & kept.reshape(shape)
    if not np.array_equal(product, alive):
        raise LayoutError("removed lines of a reshaped dim do not form whole blocks")
    live = counts[alive]
    if live.size and not (live == live[0]).all():
        raise LayoutError("equal-count constraint violated on a reshaped dim")
    return per_dim, int(live[0]) if live.size else 0


def kept_positions(axis: Axis, keep: np.ndarray) -> np.ndarray:
    """Original indices along a tensor dim, in the order the pruned tensor holds them."""
    comp = axis.comp
    mask = keep[comp.ids]
    if not comp.is_ragged:
        if axis.full:
            return np.flatnonzero(np.transpose(mask, axis.ldims).reshape(-1))
        other = tuple(d for d in range(mask.ndim) if d not in axis.ldims)
        sub = mask.any(axis=other)  # product form: the other factors are all-or-nothing
        rest = [d for d in range(mask.ndim) if d in axis.ldims]
        order = tuple(rest.index(d) for d in axis.ldims)
        return np.flatnonzero(np.transpose(sub, order).reshape(-1))
    r, lshape = comp.ragged, comp.lshape
    per_dim, count = ragged_layout(comp, mask)
    if not axis.full:
        if len(axis.ldims) == 1 and axis.ldims[0] != r:  # a block dim: its kept blocks
            blocks = [d for d in range(len(lshape)) if d != r]
            return np.flatnonzero(per_dim[blocks.index(axis.ldims[0])])
        raise ValueError("partial dim of a ragged comp has no positions of its own")
    native = np.moveaxis(np.arange(mask.size).reshape(lshape), r, -1)
    moved = np.moveaxis(mask, r, -1)
    sel = np.ix_(*per_dim, np.arange(lshape[r]))
    rows_native = native[sel].reshape(-1, lshape[r])
    rows_mask = moved[sel].reshape(-1, lshape[r])
    cols = np.nonzero(rows_mask)[1].reshape(rows_native.shape[0], count)
    new_blocks = [int(k.sum()) for k in per_dim]
    picked = np.take_along_axis(rows_native, cols, axis=1).reshape(new_blocks + [count])
    picked = np.moveaxis(picked, -1, r)
    coords = np.unravel_index(np.transpose(picked, axis.ldims).reshape(-1), lshape)
    return np.ravel_multi_index(tuple(coords[d] for d in axis.ldims),
                                [lshape[d] for d in axis.ldims])


def new_size(axis: Axis, keep: np.ndarray) -> int:
    """Size of the tensor dim after pruning."""
    comp = axis.comp
    mask = keep[comp.ids]
    if comp.is_ragged:
        per_dim, count = ragged_layout(comp, mask)
        blocks = [d for d in range(mask.ndim) if d != comp.ragged]
        sizes = [count if d == comp.ragged else int(per_dim[blocks.index(d)].sum())
                 for d in axis.ldims]
        return int(np.prod(sizes))
    if comp.ids.ndim == 1:
        return int(mask.sum())
    sizes = []
    for d in axis.ldims:
        if d == comp.carrier:
            other = tuple(x for x in range(mask.ndim) if x != d)
            sizes.append(int(mask.any(axis=other).sum()))
        else:
            sizes.append(comp.lshape[d])
    return int(np.prod(sizes))
