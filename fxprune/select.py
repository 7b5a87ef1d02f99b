"""Scores -> Plan: which units go, per group ratio or global ranking, honouring min channels,
round_to, ignored modules and equal-count constraints."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Mapping

import numpy as np
import torch.nn as nn

from .analyze.elements import Axis, axis_ids, unique
from .analyze.graph import ChannelGraph, Group, parse_slice
from .options import AttentionOptions, SelectOptions
from .plan import Plan

__all__ = ["Plan", "select"]

log = logging.getLogger(__name__)


def _module_of(member: str) -> str:
    return parse_slice(member)[0].rsplit(".", 1)[0]


def _is_producer(graph: ChannelGraph, member: str) -> bool:
    qual, dim = parse_slice(member)
    return graph.params[qual].roles.get(dim) == "out"


def _ignored(group: Group, graph: ChannelGraph, ignore: Iterable) -> bool:
    producers = [_module_of(m) for m in group.members if _is_producer(graph, m)]
    modules = graph.ctx.modules
    for name in producers:
        mod = modules.get(name)
        for item in ignore:
            if isinstance(item, str) and fnmatch.fnmatch(name, item):
                return True
            if isinstance(item, type) and isinstance(mod, item):
                return True
            if isinstance(item, nn.Module) and mod is item:
                return True
    return False


def _ratio_for(group: Group, ratio: float, ratios: Mapping[str, float]) -> float:
    for pattern, r in ratios.items():
        if any(fnmatch.fnmatch(_module_of(m), pattern) for m in group.members):
            return r
    return ratio


def _keep_count(n: int, keep: int, min_channels: int, round_to: int) -> int:
    keep = max(keep, min(min_channels, n))
    if round_to > 1:
        keep = min(n, -(-keep // round_to) * round_to)
    return min(keep, n)


def select(graph: ChannelGraph, scores: np.ndarray, options: SelectOptions = SelectOptions(),
           attention: AttentionOptions = AttentionOptions()) -> Plan:
    """The plan that removes each group's lowest-scoring units. ``options.threshold``
    (instead of ratios) removes every unit scoring below it, e.g. the units a group lasso
    drove to zero (the group constraints still apply). ``options.plan`` is not read here."""
    ratio, ratios, ignore = options.ratio, options.ratios, list(options.ignore)
    exact_only, threshold = options.exact_only, options.threshold
    prune_heads, prune_head_dims = attention.prune_heads, attention.prune_head_dims
    min_channels, round_to = options.min_channels, options.round_to
    global_ranking = bool(options.global_ranking)
    active = [g for g in graph.groups if not (ignore and _ignored(g, graph, ignore))
              and not (exact_only and g.approximate)]
    # attention heads: split the ratio between whole heads and head dims when both are pruned
    r_part = 1.0 - float(np.sqrt(1.0 - ratio)) if prune_heads and prune_head_dims else ratio
    head_unit, dead = _drop_heads(graph, scores, active, r_part if prune_heads else 0.0)
    keep_n: dict[int, int] = {}
    if threshold is not None:
        for g in active:
            keep_n[g.gid] = int((scores[g.units][~dead[g.units]] >= threshold).sum())
    elif global_ranking and active:
        norm = [scores[g.units] / (scores[g.units].mean() + 1e-12) for g in active]
        flat = np.sort(np.concatenate(norm))
        thr = flat[min(int(len(flat) * ratio), len(flat) - 1)] if ratio > 0 else -np.inf
        for g, s in zip(active, norm):
            keep_n[g.gid] = int((s >= thr).sum()) if ratio > 0 else g.size
    else:
        for g in active:
            r = _ratio_for(g, ratio, ratios)
            if head_unit[g.units].any():
                r = r_part if prune_head_dims else 0.0
            alive = int((~dead[g.units]).sum())
            keep_n[g.gid] = alive - int(np.floor(alive * r))
    removed, notes, summary = [np.flatnonzero(dead)], [], {}
    for g in active:
        units = g.units[~dead[g.units]]
        k = _keep_count(units.size, keep_n[g.gid], min_channels, round_to)
        gone = (_constrained(graph, g, units, scores, k, notes) if g.constraints
                else units[np.argsort(-scores[units], kind="stable")[k:]])
        removed.append(gone)
        summary[g.name] = {"before": g.size, "after": g.size - len(gone)}
    removed_units = np.concatenate(removed) if removed else np.zeros(0, dtype=np.int64)
    removed_units = _keep_nonempty(graph, removed_units, scores, notes)
    gone_mask = np.zeros(len(graph.labels), dtype=bool)
    gone_mask[removed_units] = True
    for g in active:
        summary[g.name]["after"] = g.size - int(gone_mask[g.units].sum())
    return _to_plan(graph, removed_units, summary, notes)


def _keep_nonempty(graph: ChannelGraph, removed: np.ndarray, scores: np.ndarray,
                   notes: list[str]) -> np.ndarray:
    """No tensor may lose all its channels (a split piece, a 1-channel slice): give back the
    best unit of any emptied dim, or a constrained group whole."""
    dead = np.zeros(len(graph.labels), dtype=bool)
    dead[removed] = True
    unit_group = np.full(len(graph.labels), -1, dtype=np.int64)
    for g in graph.groups:
        unit_group[g.units] = g.gid
    dims = [ids for ids in _tensor_dims(graph)]
    if not dims:
        return removed
    flat = graph.labels[np.concatenate(dims)]
    starts = np.cumsum([0] + [d.size for d in dims[:-1]])
    while True:  # vectorised: one pass over every tensor dim per round, rounds are rare
        empty = np.flatnonzero(np.add.reduceat(~dead[flat], starts) == 0)
        if not empty.size:
            break
        for i in empty:
            lab = graph.labels[dims[i]]
            if not dead[lab].all():  # revived by an earlier one of this round
                continue
            best = lab[np.argmax(scores[lab])]
            g = graph.groups[unit_group[best]] if unit_group[best] >= 0 else None
            if g is not None and g.constraints:
                dead[g.units] = False
                notes.append(f"{g.name}: kept whole so that no tensor is left empty")
            else:
                dead[best] = False
    return np.flatnonzero(dead)


def _tensor_dims(graph: ChannelGraph):
    for val in graph.ctx.axes.values():
        stack = [val]
        while stack:
            v = stack.pop()
            if isinstance(v, Axis):
                if v.full and v.size:
                    yield axis_ids(v)
            elif isinstance(v, (list, tuple)):
                stack.extend(v)


def _drop_heads(graph: ChannelGraph, scores: np.ndarray, active: list[Group],
                r_heads: float) -> tuple[np.ndarray, np.ndarray]:
    """Remove the weakest whole heads of every head family (at least one head stays)."""
    n = len(graph.labels)
    head_unit, dead = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    allowed = np.zeros(n, dtype=bool)
    for g in active:
        allowed[g.units] = True
    for fam in graph.heads:
        heads = fam.head_units(graph.labels)
        for units in heads:
            head_unit[units] = True
        drop = min(fam.size - 1, int(np.floor(fam.size * r_heads)))
        if drop <= 0 or not all(allowed[u].all() for u in heads):
            continue
        worst = np.argsort([scores[u].sum() for u in heads], kind="stable")[:drop]
        for h in worst:
            dead[heads[h]] = True
    return head_unit, dead


def _distinct_units(rows: np.ndarray) -> list[tuple[int, np.ndarray]] | None:
    """Blocks (sorted rows of unit labels) as distinct units, by multiplicity: a unit that
    spans m positions of its block counts once when every unit of that block spans m (whole
    heads of tied head dims; RoPE's pairs, m = 2, next to v's free dims, m = 1). Returns
    (m, rows of units) per multiplicity; None when a block's units span unequal counts."""
    if rows.size == 0:
        return []
    n_rows, width = rows.shape
    distinct = 1 + (rows[:, 1:] != rows[:, :-1]).sum(axis=1)
    parts = []
    for k in np.unique(distinct):
        sub = rows[distinct == k]
        if width % k:
            return None
        runs = sub.reshape(sub.shape[0], int(k), width // int(k))
        if not (runs == runs[:, :, :1]).all():
            return None
        parts.append((width // int(k), runs[:, :, 0]))
    return parts


def _constrained(graph: ChannelGraph, g: Group, units: np.ndarray, scores: np.ndarray, k: int,
                 notes: list[str]) -> np.ndarray:
    """Top-k per block with one count of kept positions for all blocks of a constraint (a
    multiple of every block's unit span); free units by ratio. ``units`` are the group's
    units still alive (blocks of removed heads are skipped)."""
    in_group = np.zeros(len(graph.labels), dtype=bool)
    in_group[units] = True
    labs, seen, kept = [], set(), []
    for c in g.constraints:  # lines holding the same units (q and k of a head) count once
        parts = _distinct_units(np.unique(np.sort(graph.labels[c.blocks], axis=1), axis=0))
        if parts is None:
            notes.append(f"{g.name}: uneven equal-count constraint; group kept whole")
            return np.zeros(0, dtype=np.int64)
        alive = []
        for m, rows in parts:
            rows = rows[in_group[rows].any(axis=1) | (~np.isin(rows, g.units)).any(axis=1)]
            if rows.size:
                alive.append((m, rows))
        if all(rows.shape[1] == 1 for _, rows in alive):  # one unit per block: blocks go
            if not c.whole_blocks:  # whole, no count to balance - unless a block may not
                kept.extend(rows.reshape(-1) for _, rows in alive)  # disappear (conv group)
            continue
        fresh = []
        for m, rows in alive:
            rows = np.array([r for r in rows if r.tobytes() not in seen]).reshape(
                -1, rows.shape[1])
            seen.update(r.tobytes() for r in rows)
            if rows.size:
                fresh.append((m, rows))
        if sum(rows.shape[0] for _, rows in fresh) > 1:
            labs.append((c.blocks.shape[1], fresh))
    if kept:  # kept units count as forced in every other constraint: equal counts hold
        in_group[np.concatenate(kept)] = False
    flat = (np.concatenate([r[in_group[r]] for _, parts in labs for _, r in parts])
            if labs else np.zeros(0, int))
    if flat.size and unique(flat).size != flat.size:
        notes.append(f"{g.name}: overlapping equal-count constraints; group kept whole")
        return np.zeros(0, dtype=np.int64)
    frac = k / max(units.size, 1)
    removed = []
    for width, parts in labs:
        step = int(np.lcm.reduce([m for m, _ in parts]))  # kept positions: a multiple of it
        forced = max(int((~in_group[r]).sum(axis=1).max()) * m for m, r in parts)
        keep = max(step * max(1, int(round(frac * width / step))), -(-forced // step) * step)
        for m, lab in parts:
            kk = min(lab.shape[1], keep // m)
            s = np.where(in_group[lab], scores[lab], np.inf)
            order = np.argsort(-s, axis=1, kind="stable")
            removed.append(np.take_along_axis(lab, order[:, kk:], axis=1).reshape(-1))
    free = np.setdiff1d(units[in_group[units]], flat)
    if free.size:
        kf = min(free.size, max(1, int(round(frac * free.size))))
        removed.append(free[np.argsort(-scores[free], kind="stable")[kf:]])
    return np.concatenate(removed) if removed else np.zeros(0, dtype=np.int64)


def _to_plan(graph: ChannelGraph, removed_units: np.ndarray, summary, notes) -> Plan:
    dead = np.zeros(len(graph.labels), dtype=bool)
    dead[removed_units] = True
    plan = Plan(groups=summary, notes=notes)
    for g in graph.groups:
        gone = g.units[dead[g.units]]
        if not gone.size:
            continue
        # positions along the leader slice; a group merged by a constraint (a shuffle joining
        # two producers) has units elsewhere too: name further slices until all are covered
        covered = np.zeros(len(graph.labels), dtype=bool)
        leader = g.name.partition("#")[0]
        for member in [leader] + [m for m in g.members if m != leader]:
            qual, dim = parse_slice(member)
            labels = graph.labels[graph.params[qual].axes[dim].comp.ids.reshape(-1)]
            new = dead[labels] & ~covered[labels]
            if member == leader or new.any():
                positions = np.flatnonzero(dead[labels]).tolist()
                plan.removed[member] = sorted(set(plan.removed.get(member, [])) | set(positions))
                covered[labels[dead[labels]]] = True
            if covered[gone].all():
                break
    return plan
