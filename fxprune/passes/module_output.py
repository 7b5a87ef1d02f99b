"""Module output: the pruned model as a copy of the caller's own class. Its tensors are the
pruned graph's, by qualified name; torch.nn layers get their attributes from their new
tensors; and the int attributes a user class's forward turns into sizes (ultralytics
``C2f.c``, ``Attention.head_dim``) follow the sizes they produced in the graph.

Python code may compute a size from anything, so the copy is then *run* against the masked
original. A mismatch names the module whose code disagreed, and the caller freezes the
channels its sizes touch (see :func:`suspects`) - never a wrong model."""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from ..analyze.graph import ChannelGraph
from ..analyze.layout import new_size
from ..clone import owned_copy
from ..util import owner_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttributeEdit:
    module: str
    name: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.module or '<root>'}.{self.name}: {self.old} -> {self.new}"


@dataclass
class ModuleOutput:
    module: nn.Module
    edits: list[AttributeEdit] = field(default_factory=list)
    ambiguous: dict[str, list[str]] = field(default_factory=dict)  # module -> attribute names
    changed: dict[str, set[str]] = field(default_factory=dict)  # module -> nodes with new sizes
    touched: dict[str, set[str]] = field(default_factory=dict)  # module -> nodes that shrink
    missing: list[str] = field(default_factory=list)  # resized tensors with no home in it


def build(model: nn.Module, graph: ChannelGraph, removed: np.ndarray,
          pruned: fx.GraphModule) -> ModuleOutput:
    """A copy of ``model`` (the caller's, untouched) with the pruned tensors and attributes."""
    replaced = frozenset(n for n, _ in list(pruned.named_parameters(remove_duplicate=False))
                         + list(pruned.named_buffers(remove_duplicate=False)))
    out = ModuleOutput(owned_copy(model, replaced))
    out.missing = assign_tensors(out.module, graph, pruned)
    for name, m in out.module.named_modules():
        refresh = _REFRESH.get(type(m)) or next(
            (f for t, f in _REFRESH.items() if isinstance(m, t)), None)
        if refresh is not None:
            out.edits.extend(AttributeEdit(name, *e) for e in refresh(m))
    _follow_sizes(out, graph, removed, pruned)
    return out


def assign_tensors(module: nn.Module, graph: ChannelGraph, pruned: fx.GraphModule
                   ) -> list[str]:
    """Every tensor of ``pruned`` replaces the one of the same qualified name in ``module``
    (tied tensors stay tied: one new tensor per original object; the module holds the
    pruned graph's storage, not a second copy of it). Returns the resized tensors
    ``module`` has no place for (constants export lifted under a made-up name)."""
    new_tensors = dict(pruned.named_buffers(remove_duplicate=False))
    new_tensors.update(pruned.named_parameters(remove_duplicate=False))
    done: dict[int, torch.Tensor] = {}
    missing = []
    for qual, tensor in new_tensors.items():
        owner_name, _, local = qual.rpartition(".")
        try:
            owner = module.get_submodule(owner_name) if owner_name else module
        except AttributeError:
            owner = None
        old = getattr(owner, local, None) if owner is not None else None
        if old is None and owner is not None and owner._parameters.get(local, 0) is None:
            owner._parameters[local] = nn.Parameter(tensor.detach())  # a refit bias
            continue
        if not isinstance(old, torch.Tensor):
            info = graph.params.get(qual)
            if info is not None and tuple(info.shape) != tuple(tensor.shape):
                missing.append(qual)
            continue
        if id(old) not in done:
            value = tensor.detach()
            if isinstance(old, nn.Parameter):
                value = nn.Parameter(value, requires_grad=old.requires_grad)
            done[id(old)] = value
        new = done[id(old)]
        if local in owner._parameters:
            owner._parameters[local] = new
        elif local in owner._buffers:
            owner._buffers[local] = new
        else:
            object.__setattr__(owner, local, new)
    return missing


# ---- torch.nn layers: attributes from their own tensors ---------------------------------
def _conv(m: nn.modules.conv._ConvNd):
    w = m.weight
    old = (m.in_channels, m.out_channels, m.groups)
    g = m.groups
    if m.transposed:
        in_c = w.shape[0]
        if g > 1 and old[0] // g == 1:
            g = in_c
        out_c = w.shape[1] * g
    else:
        out_c = w.shape[0]
        if g > 1 and old[0] // g == 1:  # depthwise (with multiplier): one input per group
            g = out_c // (old[1] // old[2])
        in_c = w.shape[1] * g
    m.in_channels, m.out_channels, m.groups = in_c, out_c, g
    return [(k, a, b) for k, a, b in zip(("in_channels", "out_channels", "groups"), old,
                                         (in_c, out_c, g)) if a != b]


def _attrs(m: nn.Module, values: dict[str, Any]):
    edits = []
    for k, v in values.items():
        if getattr(m, k) != v:
            edits.append((k, getattr(m, k), v))
            setattr(m, k, v)
    return edits


def _norm(m: nn.modules.batchnorm._NormBase):
    t = m.weight if m.weight is not None else m.running_mean
    return _attrs(m, {"num_features": t.shape[0]}) if t is not None else []


def _group_norm(m: nn.GroupNorm):
    if m.weight is None:
        return []
    per = m.num_channels // m.num_groups
    return _attrs(m, {"num_channels": m.weight.shape[0], "num_groups": m.weight.shape[0] // per})


def _normalized(m: nn.Module):
    if getattr(m, "weight", None) is None:
        return []
    return _attrs(m, {"normalized_shape": tuple(m.weight.shape)})


_REFRESH = {
    nn.modules.conv._ConvNd: _conv,
    nn.Linear: lambda m: _attrs(m, {"in_features": m.weight.shape[1],
                                    "out_features": m.weight.shape[0]}),
    nn.modules.batchnorm._NormBase: _norm,
    nn.GroupNorm: _group_norm,
    nn.LayerNorm: _normalized,
    nn.Embedding: lambda m: _attrs(m, {"embedding_dim": m.weight.shape[1]}),
    nn.PReLU: lambda m: _attrs(m, {"num_parameters": m.weight.shape[0]}),
}
if hasattr(nn, "RMSNorm"):
    _REFRESH[nn.RMSNorm] = _normalized


# ---- user classes: int attributes that became sizes -------------------------------------
def _resized(graph: ChannelGraph, keep: np.ndarray, pruned: fx.GraphModule):
    """(node, {old size: {new sizes}}, literal, same) for every node whose output dims or
    literal int arguments changed; ``literal``: the rewrite changed its arguments (sizes the
    Python code computes), not only the sizes flowing through it; ``same``: the literal ints
    that did not change (``head_dim`` next to a head count of the same value)."""
    new_nodes = {n.name: n for n in pruned.graph.nodes}
    for node in graph.traced.gm.graph.nodes:
        if node.op not in ("call_function", "call_method"):
            continue
        changes: dict[int, set[int]] = defaultdict(set)
        for ax in _flat_axes(graph.ctx.axes.get(node.name)):
            n = new_size(ax, keep)
            if n != ax.size:
                changes[ax.size].add(n)
        new = new_nodes.get(node.name)
        old_ints, new_ints = _ints(node.args), _ints(new.args) if new is not None else []
        literal = new is not None and (new.target != node.target or old_ints != new_ints)
        same: set[int] = set()
        if new is not None and new.target == node.target:
            if len(old_ints) == len(new_ints):
                for a, b in zip(old_ints, new_ints):
                    if a != b:
                        changes[a].add(b)
                    else:
                        same.add(a)
        if changes or same:
            yield node, changes, literal, same


def _flat_axes(axes) -> list:
    if axes is None:
        return []
    if isinstance(axes, (list, tuple)) and axes and isinstance(axes[0], (list, tuple)):
        return [ax for part in axes for ax in _flat_axes(part)]
    return [ax for ax in axes if ax is not None] if isinstance(axes, (list, tuple)) else []


def _ints(args) -> list[int]:
    out: list[int] = []
    fx.node.map_aggregate(args, lambda a: out.append(a) if type(a) is int else None)
    return out


def _follow_sizes(out: ModuleOutput, graph: ChannelGraph, removed: np.ndarray,
                  pruned: fx.GraphModule) -> None:
    keep = graph.keep_mask(removed)
    per_module: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    unchanged: dict[str, set[int]] = defaultdict(set)
    for node, changes, literal, same in _resized(graph, keep, pruned):
        owner = owner_of(node)
        if owner is None:
            continue
        unchanged[owner] |= same
        if not changes:
            continue
        out.touched.setdefault(owner, set()).add(node.name)
        if literal:
            out.changed.setdefault(owner, set()).add(node.name)
        for old, new in changes.items():
            per_module[owner][old] |= new
    inputs = {n for node in graph.traced.gm.graph.nodes if node.op == "placeholder"
              for n in getattr(graph.traced.values.get(node.name), "shape", ())}
    for owner, same in unchanged.items():  # a size that also stayed: which one is unclear
        for size in (same - inputs) & set(per_module[owner]):  # (not a batch or token count)
            per_module[owner][size].add(size)
    modules = dict(out.module.named_modules())
    for path, changes in per_module.items():
        m = modules.get(path)
        if m is None or type(m).__module__.startswith("torch."):
            continue
        for name, value in list(vars(m).items()):
            if name.startswith("_") or name == "training":
                continue
            new = _mapped(value, changes)
            if new is _AMBIGUOUS:
                out.ambiguous.setdefault(path, []).append(name)
            elif new is not None:
                setattr(m, name, new)
                out.edits.append(AttributeEdit(path, name, value, new))


_AMBIGUOUS = object()


def _mapped(value: Any, changes: dict[int, set[int]]) -> Any:
    """The new value of an int (or tuple/list of ints) attribute, None if untouched."""
    if type(value) is int:
        got = changes.get(value)
        if not got:
            return None
        return next(iter(got)) if len(got) == 1 else _AMBIGUOUS
    if isinstance(value, (tuple, list)) and value and all(type(v) is int for v in value):
        items = [_mapped(v, changes) for v in value]
        if any(i is _AMBIGUOUS for i in items):
            return _AMBIGUOUS
        if all(i is None for i in items):
            return None
        return type(value)(v if i is None else i for v, i in zip(value, items))
    return None


# ---- which module's code disagreed ------------------------------------------------------
def failing_module(exc: BaseException, module: nn.Module, user_only: bool = True
                   ) -> str | None:
    """The innermost user module (not torch.nn, unless ``user_only`` is off) whose
    ``forward`` raised ``exc``."""
    names = {id(m): n for n, m in module.named_modules()}
    tb, found = exc.__traceback__, None
    while tb is not None:
        this = tb.tb_frame.f_locals.get("self")
        if isinstance(this, nn.Module) and id(this) in names and not (
                user_only and type(this).__module__.startswith("torch.")):
            found = names[id(this)]
        tb = tb.tb_next
    return found


def suspects(out: ModuleOutput, failed: str | None, frozen: frozenset[str]
             ) -> tuple[set[str], str]:
    """The nodes to keep whole after a failed check, and what to tell the user. The module
    that raised and every module of its class (same code, same sizes): first the nodes
    whose literal sizes their own forward computes, then every node of their subtree that
    shrinks (a size read off an input, ``C = x.shape[1]``). Without a module to blame: every
    module whose sizes no attribute explained, else every user module with resized nodes."""
    if failed is not None:
        kind = type(out.module.get_submodule(failed))
        roots = [p for p in out.touched if not _is_torch(out.module, p)
                 and type(out.module.get_submodule(p)) is kind] or [failed]
        own = set().union(set(), *(out.changed.get(r, set()) for r in roots))
        if own - frozen:
            return own, _why(out, roots)
        scope = [p for p in out.touched if any(_within(p, r) for r in roots)]
        return set().union(set(), *(out.touched[p] for p in scope)), _why(out, roots)
    scope = [p for p in out.ambiguous if p in out.changed]
    if not scope or not set().union(*(out.changed[p] for p in scope)) - frozen:
        scope = [p for p in out.changed if not _is_torch(out.module, p)]
    return set().union(set(), *(out.changed[p] for p in scope)), _why(out, scope)


def _within(path: str, root: str) -> bool:
    return not root or path == root or path.startswith(root + ".")


def _is_torch(module: nn.Module, path: str) -> bool:
    try:
        return type(module.get_submodule(path)).__module__.startswith("torch.")
    except AttributeError:
        return True


def _why(out: ModuleOutput, scope: list[str]) -> str:
    parts = []
    for p in scope:
        edited = [e.name for e in out.edits if e.module == p]
        unclear = out.ambiguous.get(p, [])
        what = ", ".join([f"set {a}" for a in edited] + [f"{a} ambiguous" for a in unclear])
        parts.append(f"{p or '<root>'} ({what or 'sizes computed in Python'})")
    return "the pruned module's own forward disagreed with the graph in " + "; ".join(parts)


def training_forward_note(module: nn.Module, original: nn.Module,
                          call: tuple[tuple, dict]) -> list[str]:
    """The captured forward is the eval one; a training forward may read tensors it does
    not (auxiliary heads). One run of it in train mode, on a copy (no grad, BatchNorm
    statistics of the copy only), says whether the pruned module still trains - unless the
    original cannot run in train mode on these inputs either (batch 1 into BatchNorm1d)."""
    probe = copy.deepcopy(module)
    try:
        _train_forward(probe, call)
    except Exception as exc:  # noqa: BLE001 - reported, the eval model is exact
        try:
            _train_forward(copy.deepcopy(original), call)
        except Exception:  # noqa: BLE001 - the original fails alike: nothing pruning broke
            return []
        where = failing_module(exc, probe, user_only=False)
        text = (f"the pruned module's training-mode forward fails in {where or '<root>'} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}): it reads "
                "channels the captured eval forward does not; use it for inference")
        log.warning("fxprune: %s", text)
        return [text]
    return []


def _train_forward(module: nn.Module, call: tuple[tuple, dict]) -> None:
    args, kwargs = call
    with torch.no_grad():
        module.train()(*args, **kwargs)
