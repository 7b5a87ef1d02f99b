"""The channel graph: units (what must go together), groups (what a ratio applies to),
equal-count constraints, and the frozen set with its reasons. ``solve`` turns an analysis
context whose rules have all run into a graph; applying the rules is the pipeline's
``analyze`` stage (``fxprune/pipeline/build.py``), so this package never imports a rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch.fx as fx

from ..frontends.base import Traced
from .context import AnalysisContext, EqualCount, ParamInfo
from .elements import Category, Comp, unique

if TYPE_CHECKING:
    from .rewrite import RewriteContext


def slice_key(qualname: str, dim: int) -> str:
    """The name of one parameter dim, ``"layer.weight[0]"``: group members and plan keys."""
    return f"{qualname}[{dim}]"


def parse_slice(key: str) -> tuple[str, int]:
    """``"layer.weight[0]"`` -> ``("layer.weight", 0)``."""
    qual, dim = key[:-1].rsplit("[", 1)
    return qual, int(dim)


class NodeRule(Protocol):
    """What the stages after the analysis need of an op's rule (see ``ops/base.py``)."""

    name: str
    channelwise: bool
    producer_dim: int | None
    refits: bool
    fallback: bool

    def rewrite(self, rctx: RewriteContext, node: fx.Node) -> None: ...

    def weight_of(self, node: fx.Node) -> str | None: ...


@dataclass(frozen=True)
class FrozenReason:
    """Units kept whole by one node for one reason."""

    node: str
    category: str  # an ``elements.Category``
    message: str
    units: int

    def __str__(self) -> str:
        return f"{self.node or '-'}: {self.message} ({self.units} units)"


@dataclass
class Group:
    """Units with the same members (e.g. one conv's output channels, or a residual stream)."""

    gid: int
    name: str  # its leader slice (the first producer slice), made unique with "#gid"
    units: np.ndarray  # unit labels (root element ids), sorted by position on the leader axis
    members: list[str]  # "param[dim]" slices touched, the leader first among the producers
    constraints: list[EqualCount] = field(default_factory=list)
    approximate: bool = False  # removing a unit changes other channels (LayerNorm statistics)

    @property
    def size(self) -> int:
        return len(self.units)


@dataclass
class HeadFamily:
    """Head dims of reshaped projections that matmul/attention pair: whole heads can go,
    removing head h from every member at once."""

    members: list[tuple[Comp, int]]  # (comp, logical head dim)
    size: int

    def head_units(self, labels: np.ndarray) -> list[np.ndarray]:
        out = []
        for h in range(self.size):
            parts = [labels[np.take(c.ids, h, axis=d)].reshape(-1) for c, d in self.members]
            out.append(unique(np.concatenate(parts)))
        return out


@dataclass
class ChannelGraph:
    ctx: AnalysisContext
    labels: np.ndarray  # element id -> unit label
    frozen_reasons: list[FrozenReason]
    groups: list[Group]
    rules: dict[str, NodeRule]  # node name -> the rule that analysed it (Unknown on failure)
    approx_units: np.ndarray  # bool per unit label
    heads: list[HeadFamily] = field(default_factory=list)

    def approximate_units(self, units: np.ndarray) -> np.ndarray:
        return units[self.approx_units[units]]

    @property
    def traced(self) -> Traced:
        return self.ctx.traced

    @property
    def params(self) -> dict[str, ParamInfo]:
        return self.ctx.params

    def keep_mask(self, removed_units: np.ndarray) -> np.ndarray:
        """Boolean per element id: kept unless its unit is removed."""
        removed = np.zeros(len(self.labels), dtype=bool)
        removed[removed_units] = True
        return ~removed[self.labels]

    def __str__(self) -> str:
        lines = [f"ChannelGraph: {len(self.groups)} prunable groups, "
                 f"{sum(g.size for g in self.groups)} units"]
        for g in self.groups:
            extra = f", {len(g.constraints)} equal-count constraint(s)" if g.constraints else ""
            extra += " (approximate)" if g.approximate else ""
            shown = ", ".join(g.members[:6]) + (" ..." if len(g.members) > 6 else "")
            lines.append(f"  [{g.gid}] {g.name}: {g.size} units{extra}; members: {shown}")
        if self.frozen_reasons:
            lines.append("Frozen (kept whole):")
            lines.extend(f"  {r}" for r in self.frozen_reasons)
        return "\n".join(lines)


def solve(ctx: AnalysisContext, rules: dict[str, NodeRule]) -> ChannelGraph:
    """Units, groups, head families and the frozen set of an analysed context."""
    for info in ctx.params.values():
        for dim, ax in enumerate(info.axes):
            if dim not in info.roles:  # kernel dims and dims no op reads as channels
                ctx.space.freeze(ax.comp.ids, "parameter dim that no rule slices", info.qualname,
                                 Category.LAYOUT)
    space = ctx.space
    space.settle()
    labels = space.solve()
    _freeze_unread(ctx, labels)
    n = space.n
    frozen = np.zeros(n, dtype=bool)
    if space.frozen:
        frozen[labels[np.concatenate([fr.ids for fr in space.frozen])]] = True
    approx = np.zeros(n, dtype=bool)
    for ids, _, _ in ctx.approx:
        approx[labels[ids]] = True
    constraints = _live_constraints(ctx)
    groups = _group(ctx, labels, frozen, constraints)
    for g in groups:
        g.approximate = bool(approx[g.units].any())
    return ChannelGraph(ctx, labels, _reasons(space.frozen, labels), groups, rules, approx,
                        _head_families(ctx, frozen[labels]))


def _freeze_unread(ctx: AnalysisContext, labels: np.ndarray) -> None:
    """Units made of nothing but elements of tensors read as plain values (no layer reads
    them as channels, no activation holds them): rows of ``position_ids`` past the example's
    length. Unused for these inputs only - a longer input reads them - so they stay."""
    attr = [ax.comp.ids.reshape(-1) for info in ctx.params.values()
            for dim, ax in enumerate(info.axes) if info.roles.get(dim) == "attr"]
    if not attr:
        return
    ids = np.concatenate(attr)
    n = len(labels)
    unread = np.bincount(labels[ids], minlength=n) == np.bincount(labels, minlength=n)
    unread &= np.bincount(labels, minlength=n) > 0
    hit = ids[unread[labels[ids]]]
    if hit.size:
        ctx.space.freeze(hit, "read by no op for these inputs (a longer input may read it)",
                         "", Category.LAYOUT)


def _reasons(frozen: list, labels: np.ndarray) -> list[FrozenReason]:
    """Distinct units per (node, reason), with one sort; quiet categories are left out."""
    shown = [fr for fr in frozen if fr.category not in Category.QUIET]
    if not shown:
        return []
    keys: dict[tuple[str, str, str], int] = {}
    code = np.concatenate([np.full(fr.ids.size, keys.setdefault(
        (fr.node, fr.category, fr.reason), len(keys))) for fr in shown])
    lab = np.concatenate([labels[fr.ids] for fr in shown])
    pair = unique(lab * len(keys) + code)
    counts = np.bincount(pair % len(keys), minlength=len(keys))
    return [FrozenReason(node, cat, msg, int(counts[i])) for (node, cat, msg), i in keys.items()]


def _head_families(ctx: AnalysisContext, frozen_elem: np.ndarray) -> list[HeadFamily]:
    """Union the paired head dims; a family is droppable when every member is still a
    ragged comp whose head dim no op needs at full size, with no frozen element."""
    index: dict[tuple[int, int], int] = {}
    members: list[tuple[Comp, int]] = []
    parent: list[int] = []

    def key(ax) -> int:
        comp, ld = ax.comp.root(ax.ldims[0])
        k = (id(comp), ld)
        if k not in index:
            index[k] = len(members)
            members.append((comp, ld))
            parent.append(len(parent))
        return index[k]

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for a, b in ctx.block_ties:
        ia, ib = find(key(a)), find(key(b))
        parent[max(ia, ib)] = min(ia, ib)
    fams: dict[int, list[tuple[Comp, int]]] = {}
    for i, m in enumerate(members):
        fams.setdefault(find(i), []).append(m)
    out = []
    for ms in fams.values():
        sizes = {c.lshape[d] for c, d in ms}
        ok = len(sizes) == 1 and all(
            c.is_ragged and d not in c.fixed and d != c.ragged and not frozen_elem[c.ids].any()
            for c, d in ms)
        if ok and sizes.pop() > 1:
            out.append(HeadFamily(ms, ms[0][0].lshape[ms[0][1]]))
    return out


def _lines(comp) -> np.ndarray:
    r = comp.ragged
    return np.moveaxis(comp.ids, r, -1).reshape(-1, comp.ids.shape[r])


def _live_constraints(ctx: AnalysisContext) -> list[EqualCount]:
    """The ops' constraints, one per still-ragged comp (its lines keep equal counts), and
    under ``eager`` one per (module, literal size) that joins the lines of every comp that
    module's code splits by that one number - whatever each comp became (a comp collapsed
    onto its lines' dim has identical lines; one collapsed onto the other dim, whole lines)."""
    out = list(ctx.constraints)
    joined: set[int] = set()
    for (owner, _), comps in ctx.split_sizes.items():
        comps = [c for c in comps if c.parent is None and c.ids.ndim == 2]
        if len(comps) > 1:
            out.append(EqualCount(np.concatenate([_lines(c) for c in comps]),
                                  f"head sizes {owner} computes from one number", ""))
            joined.update(id(c) for c in comps)
    for comp in ctx.space.comps:
        if comp.is_ragged and comp.parent is None and id(comp) not in joined:
            out.append(EqualCount(_lines(comp), "blocks of a reshaped dim", ""))
    return out


def _group(ctx: AnalysisContext, labels: np.ndarray, frozen: np.ndarray,
           constraints: list[EqualCount]) -> list[Group]:
    """Units with the same set of param slices form a group; constraints merge groups."""
    all_labels, all_axes, names = [], [], []
    for info in ctx.params.values():
        for dim, ax in enumerate(info.axes):
            all_labels.append(labels[ax.comp.ids].reshape(-1))
            all_axes.append(np.full(ax.comp.ids.size, len(names), dtype=np.int64))
            names.append((slice_key(info.qualname, dim), info.roles.get(dim, "")))
    if not all_labels:
        return []
    # one sort for all (unit, param slice) pairs instead of one unique per slice
    lab, axi = np.concatenate(all_labels), np.concatenate(all_axes)
    pairs = unique(lab * len(names) + axi)
    units, axis_idx = pairs // len(names), pairs % len(names)
    live = ~frozen[units]
    units, axis_idx = units[live], axis_idx[live]
    if not units.size:
        return []
    rng = np.random.default_rng(0)
    salt = rng.integers(1, 2**62, size=len(names), dtype=np.int64).astype(np.uint64)
    uniq_units, inv = np.unique(units, return_inverse=True)
    sig = np.zeros(len(uniq_units), dtype=np.uint64)
    np.add.at(sig, inv, salt[axis_idx])
    _, sig_group = np.unique(sig, return_inverse=True)
    # union groups linked by a constraint
    parent = list(range(int(sig_group.max()) + 1))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    lookup = np.full(len(labels), -1, dtype=np.int64)
    lookup[uniq_units] = sig_group
    attached: dict[int, list[EqualCount]] = {}
    for c in constraints:
        g = lookup[labels[c.blocks.reshape(-1)]]
        g = unique(g[g >= 0])
        for other in g[1:]:
            parent[find(int(other))] = find(int(g[0]))
        if g.size:
            attached.setdefault(int(g[0]), []).append(c)
    root = np.array([find(i) for i in range(len(parent))])
    final = root[sig_group]
    code = unique(final[inv] * len(names) + axis_idx)
    pair = np.stack([code // len(names), code % len(names)])
    pair_split = np.split(pair[1], np.flatnonzero(np.diff(pair[0])) + 1)
    by_group = np.argsort(final, kind="stable")
    unit_split = np.split(uniq_units[by_group], np.flatnonzero(np.diff(final[by_group])) + 1)
    cons_of: dict[int, list[EqualCount]] = {}
    for k, cs in attached.items():
        cons_of.setdefault(int(root[k]), []).extend(cs)
    groups: list[Group] = []
    for gid, (r, touched, members_units) in enumerate(
            zip(unique(final), pair_split, unit_split)):
        member_names = [names[i][0] for i in touched]
        producers = [names[i][0] for i in touched if names[i][1] == "out"]
        groups.append(Group(gid, producers[0] if producers else member_names[0],
                            np.sort(members_units), member_names, cons_of.get(int(r), [])))
    groups.sort(key=lambda g: int(g.units[0]))
    used: set[str] = set()
    for gid, g in enumerate(groups):
        g.gid = gid
        if g.name in used:  # two groups led by one slice (halves of a split): tell apart
            g.name = f"{g.name}#{gid}"
        used.add(g.name)
    return groups
