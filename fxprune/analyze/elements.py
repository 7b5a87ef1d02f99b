"""Index elements, composites and the vectorised union-find that turns ties into units.

Every tensor dim is described by an :class:`Axis`: a reference into a :class:`Comp` (a block of
element ids with a logical shape). Most comps are 1-D. A reshape that splits one dim into
several makes a multi-dim comp whose elements keep their identity; the split imposes an
*equal-count* constraint (every line along the ``ragged`` dim keeps the same number of
elements, positions may differ), which is what lets channel shuffles and grouped structures
be pruned with different positions per block. Ops that cannot honour a ragged comp
``collapse`` it onto one carrier dim: the other factors then keep their full size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)
class Comp:  # noqa: D101 - documented in the module docstring
    """A block of elements with a logical shape; ``ids[pos]`` is the element at ``pos``."""

    ids: np.ndarray
    ragged: int | None = None  # logical dim whose lines keep equal counts (None: plain)
    carrier: int | None = None  # after collapse: the only logical dim that may shrink
    fixed: set[int] = field(default_factory=set)  # logical dims some op needs at full size
    parent: Comp | None = None  # a block picked out of a larger comp (its lines are the parent's)

    @property
    def lshape(self) -> tuple[int, ...]:
        return tuple(self.ids.shape)

    @property
    def is_ragged(self) -> bool:
        return self.ragged is not None and self.carrier is None and self.ids.ndim > 1


@dataclass(frozen=True, eq=False)
class Axis:
    """One tensor dim: the logical dims ``ldims`` of ``comp`` merged in this order."""

    comp: Comp
    ldims: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod([self.comp.ids.shape[d] for d in self.ldims], dtype=np.int64))

    @property
    def full(self) -> bool:
        return len(self.ldims) == self.comp.ids.ndim


def plain_axis(ids: np.ndarray) -> Axis:
    return Axis(Comp(np.asarray(ids).reshape(-1)), (0,))


@dataclass
class Frozen:
    ids: np.ndarray
    reason: str
    node: str


@dataclass
class ElementSpace:
    """Allocates element ids and records ties, freezes and equal-count constraints."""

    n: int = 0
    _tie_a: list[np.ndarray] = field(default_factory=list)
    _tie_b: list[np.ndarray] = field(default_factory=list)
    frozen: list[Frozen] = field(default_factory=list)
    comps: list[Comp] = field(default_factory=list)

    def alloc(self, shape: tuple[int, ...] | int) -> np.ndarray:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        count = int(np.prod(shape, dtype=np.int64))
        ids = np.arange(self.n, self.n + count, dtype=np.int64).reshape(shape)
        self.n += count
        return ids

    def new_comp(self, ids: np.ndarray, ragged: int | None = None) -> Comp:
        comp = Comp(ids, ragged)
        if comp.is_ragged:
            self.comps.append(comp)
        return comp

    def tie(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
        if a.size:
            self._tie_a.append(a.reshape(-1).astype(np.int64, copy=False))
            self._tie_b.append(b.reshape(-1).astype(np.int64, copy=False))

    def tie_all(self, ids: np.ndarray) -> None:
        flat = np.asarray(ids).reshape(-1)
        if flat.size > 1:
            self.tie(flat[:1], flat[1:])

    def freeze(self, ids: np.ndarray, reason: str, node: str) -> None:
        ids = np.asarray(ids).reshape(-1)
        if ids.size:
            self.frozen.append(Frozen(ids, reason, node))

    def collapse(self, comp: Comp, carrier: int) -> None:
        """Make ``comp`` product-shaped: only ``carrier`` may shrink, same positions everywhere."""
        if comp.carrier is not None:
            if comp.carrier != carrier:  # two ops want different carriers: nothing may shrink
                self.tie_all(comp.ids)
                self.freeze(comp.ids.reshape(-1)[:1], "conflicting uses of a reshaped dim", "")
            return
        comp.carrier = carrier
        moved = np.moveaxis(comp.ids, carrier, 0).reshape(comp.ids.shape[carrier], -1)
        if moved.shape[1] > 1:
            self.tie(moved[:, :1], moved[:, 1:])

    def settle(self) -> None:
        """A comp whose only shrinkable dim must keep its size cannot shrink at all."""
        for comp in self.comps:
            shrink = comp.carrier if comp.carrier is not None else comp.ragged
            if shrink is not None and shrink in comp.fixed:
                self.tie_all(comp.ids)
                self.freeze(comp.ids.reshape(-1)[:1], "reshaped dim needed at full size", "")

    def solve(self) -> np.ndarray:
        """Connected components of the ties: ``labels[e]`` is the smallest id in e's unit."""
        labels = np.arange(self.n, dtype=np.int64)
        if not self._tie_a:
            return labels
        a = np.concatenate(self._tie_a)
        b = np.concatenate(self._tie_b)
        while True:
            ra, rb = labels[a], labels[b]
            differ = ra != rb
            if not differ.any():
                return labels
            ra, rb = ra[differ], rb[differ]
            low = np.minimum(ra, rb)
            np.minimum.at(labels, ra, low)
            np.minimum.at(labels, rb, low)
            while True:  # pointer jumping until every element points at its root
                nxt = labels[labels]
                if np.array_equal(nxt, labels):
                    break
                labels = nxt
            a, b = a[differ], b[differ]


def axis_ids(axis: Axis) -> np.ndarray:
    """Element ids of a *full* axis in tensor-dim order (transposed to ``ldims``, flattened)."""
    ids = axis.comp.ids
    return np.transpose(ids, axis.ldims).reshape(-1)


def kept_positions(axis: Axis, keep: np.ndarray) -> np.ndarray:
    """Original indices along a tensor dim, in the order the pruned tensor holds them.

    ``keep`` is a boolean mask over element ids. Plain and collapsed comps keep sorted order;
    a ragged comp compacts every line along its ragged dim, which is exactly the order the
    rewritten reshape/transpose ops produce.
    """
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
    r = comp.ragged
    lshape = comp.lshape
    moved = np.moveaxis(mask, r, -1).reshape(-1, lshape[r])
    counts = moved.sum(axis=1)
    if not (counts == counts[0]).all():
        raise ValueError("equal-count constraint violated on a reshaped dim")
    cols = np.nonzero(moved)[1].reshape(moved.shape[0], counts[0])
    new_shape = list(np.moveaxis(np.empty(lshape, dtype=np.int8), r, -1).shape)
    new_shape[-1] = int(counts[0])
    # position in the native layout of every kept element, compacted along the ragged dim
    native = np.arange(mask.size).reshape(lshape)
    moved_native = np.moveaxis(native, r, -1).reshape(-1, lshape[r])
    picked = np.take_along_axis(moved_native, cols, axis=1).reshape(new_shape)
    picked = np.moveaxis(picked, -1, r)
    if not axis.full:
        raise ValueError("partial dim of a ragged comp has no positions of its own")
    # convert native flat positions into indices along the tensor dim (ldims order)
    coords = np.unravel_index(np.transpose(picked, axis.ldims).reshape(-1), lshape)
    sizes = [lshape[d] for d in axis.ldims]
    return np.ravel_multi_index(tuple(coords[d] for d in axis.ldims), sizes)


def new_size(axis: Axis, keep: np.ndarray) -> int:
    """Size of the tensor dim after pruning."""
    comp = axis.comp
    mask = keep[comp.ids]
    if comp.is_ragged:
        r = comp.ragged
        per_line = int(np.moveaxis(mask, r, -1).reshape(-1, comp.lshape[r]).sum(axis=1)[0])
        return int(np.prod([per_line if d == r else comp.lshape[d] for d in axis.ldims]))
    if comp.ids.ndim == 1:
        return int(mask.sum())
    car = comp.carrier
    sizes = []
    for d in axis.ldims:
        if d == car:
            other = tuple(x for x in range(mask.ndim) if x != d)
            sizes.append(int(mask.any(axis=other).sum()))
        else:
            sizes.append(comp.lshape[d])
    return int(np.prod(sizes))
