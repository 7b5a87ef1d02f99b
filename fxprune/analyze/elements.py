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
    picked: int = 0  # the parent's logical dim that was indexed to make this comp
    origin: str = ""  # the node whose reshape made it

    def root(self, ldim: int) -> tuple[Comp, int]:
        """The outermost comp and its logical dim that ``ldim`` of this comp is."""
        comp = self
        while comp.parent is not None:
            ldim = ldim + (1 if ldim >= comp.picked else 0)
            comp = comp.parent
        return comp, ldim

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


def block_dim(ax: Axis) -> bool:
    """A head-like dim: a non-ragged factor of a still-ragged reshaped dim."""
    return ax.comp.is_ragged and len(ax.ldims) == 1 and ax.ldims[0] != ax.comp.ragged


def ragged_dim(ax: Axis) -> bool:
    """The dim whose lines keep equal counts (a head's dims) of a still-ragged comp."""
    return ax.comp.is_ragged and ax.ldims == (ax.comp.ragged,)


def plain_axis(ids: np.ndarray) -> Axis:
    return Axis(Comp(np.asarray(ids).reshape(-1)), (0,))


class Category:
    """Why elements are frozen, in kinds a report can filter on (``QUIET`` ones are dims that
    are never channels, or the model's inputs: not worth a line in the report)."""

    INPUT = "input"  # a graph input's dims (the pruned model takes the same inputs)
    OUTPUT = "output"  # a graph output's dims
    LAYOUT = "layout"  # spatial, kernel, reduced or new dims: not channels
    OP = "op"  # what an op's rule cannot shrink (depthwise weight dim, softmax dim, ...)
    UNSUPPORTED = "unsupported"  # no rule, a rule that failed, a computed weight
    REWRITE = "rewrite"  # the rewrite could not keep the node consistent
    QUIET = frozenset({INPUT, LAYOUT})


@dataclass
class Frozen:
    ids: np.ndarray
    reason: str
    node: str
    category: str = Category.OP


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

    def new_comp(self, ids: np.ndarray, ragged: int | None = None, origin: str = "") -> Comp:
        comp = Comp(ids, ragged, origin=origin)
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

    def freeze(self, ids: np.ndarray, reason: str, node: str,
               category: str = Category.OP) -> None:
        ids = np.asarray(ids).reshape(-1)
        if ids.size:
            self.frozen.append(Frozen(ids, reason, node, category))

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


def unique(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values. (numpy 2's hash-based ``np.unique`` is several times slower on
    the large integer arrays of the channel graph than sorting.)"""
    s = np.sort(np.asarray(a).reshape(-1))
    if s.size < 2:
        return s
    keep = np.empty(s.size, dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]
