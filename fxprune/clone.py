"""Structural copies of module trees: cheaper than ``copy.deepcopy`` and with control over
which tensor objects the copy gets (a pruned slice, a clone)."""

from __future__ import annotations

import copy

import torch
import torch.fx as fx

_ATOMS = (int, float, bool, str, type(None))


def copy_modules(module: torch.nn.Module, memo: dict[int, object],
                 top: bool = True) -> torch.nn.Module:
    """A copy of ``module``'s tree whose tensors come from ``memo``.

    Much cheaper than ``copy.deepcopy``: atoms are shared, empty hook dicts are recreated,
    and only other attributes (rare) go through deepcopy with the same memo. A GraphModule
    becomes a plain Module holding its children and tensors; the caller compiles a new
    GraphModule on it.
    """
    if id(module) in memo:
        return memo[id(module)]
    if isinstance(module, fx.GraphModule) and not top:  # a nested one keeps its own code
        return copy.deepcopy(module, memo)
    if isinstance(module, fx.GraphModule):
        new = torch.nn.Module()
        items = {k: module.__dict__[k] for k in ("_parameters", "_buffers", "_modules",
                                                 "_non_persistent_buffers_set")}
    else:
        new = module.__class__.__new__(module.__class__)
        items = module.__dict__
    memo[id(module)] = new
    state = {}
    for key, value in items.items():
        if key in ("_parameters", "_buffers"):
            state[key] = type(value)(
                (k, None if v is None else memo[id(v)]) for k, v in value.items())
        elif key == "_modules":
            state[key] = type(value)(
                (k, None if v is None else copy_modules(v, memo, False)) for k, v in value.items())
        elif isinstance(value, _ATOMS):
            state[key] = value
        elif isinstance(value, dict) and not value:
            state[key] = value.copy()
        else:
            state[key] = copy.deepcopy(value, memo)
    new.__dict__.update(state)
    return new


def owned_copy(module: torch.nn.Module, placeholders: frozenset[str] = frozenset(),
               share_tensors: bool = False) -> torch.nn.Module:
    """A copy of ``module`` that shares no tensor, module or hook dict with it: what fxprune
    traces, so nothing it does can reach the caller's model. Tensors named in
    ``placeholders`` are not cloned but left empty, for the caller to replace (module
    output: the pruned tensors; cloning the originals first would double the peak memory).
    ``share_tensors`` copies the modules only (a model too large to hold twice): fxprune
    never writes a tensor in place, so the caller's tensors are read, not changed."""
    memo: dict[int, object] = {}
    for name, t in list(module.named_parameters(remove_duplicate=False)) + list(
            module.named_buffers(remove_duplicate=False)):
        if id(t) in memo:
            continue
        if share_tensors:
            memo[id(t)] = t
            continue
        new = t.detach().new_empty(0) if name in placeholders else t.detach().clone()
        memo[id(t)] = torch.nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(
            t, torch.nn.Parameter) else new
    return copy_modules(module, memo, top=False)


SHARE_ABOVE = 1 << 30  # bytes of tensors above which ``copy_weights=None`` shares them


def tensor_bytes(module: torch.nn.Module) -> int:
    seen = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    return sum(t.numel() * t.element_size() for t in seen.values())


def shares_tensors(module: torch.nn.Module, copy_weights: bool | None) -> bool:
    """``copy_weights=None``: copy the tensors of a model below 1 GiB (isolation, even from
    the caller's later in-place edits); share a larger one's (memory: a 1 B-parameter model
    would otherwise be held three times)."""
    if copy_weights is None:
        return tensor_bytes(module) > SHARE_ABOVE
    return not copy_weights
