"""Verification block by block, for models whose float64 copies do not fit in memory (a
1 B-parameter LLM is 9 GB in float64, twice over for the masked original and the pruned one).

When every removed unit lies inside repeated blocks (decoder layers) and nothing between the
blocks shrinks (the residual stream is kept), the blocks see the same inputs in the original
and the pruned model, so the model is exact iff every block is: each block's inputs are
recorded from one run of the original, then a float64 copy of the original block with its
removed consumer slices zeroed and a float64 copy of the pruned block run on them. Peak
memory is one block in float64, twice. Not applicable (None) when a removed unit lies outside
the blocks or an activation must be masked inside one (a partial head contraction): the
caller then verifies the whole model.
"""

from __future__ import annotations

import copy
import os
from collections import Counter

import numpy as np
import torch
from torch import nn

from .util import eval_mode, flat_tensors
from .verify import TOLERANCE, VerifyResult, _cast, clone_as, judge

MEMORY_SHARE = 0.5  # whole-model checks while two float64 copies take at most this of RAM


def too_big(model: nn.Module) -> bool:
    """Two float64 copies of ``model`` would not fit in ``MEMORY_SHARE`` of the RAM."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return False
    numel = sum(t.numel() for t in list(model.parameters()) + list(model.buffers()))
    return 2 * 8 * numel > MEMORY_SHARE * ram


def repeated_blocks(model: nn.Module) -> list[str]:
    """The outermost submodules whose class occurs at least twice and holds parameters."""
    kinds = Counter(type(m) for _, m in model.named_modules())
    chosen: list[str] = []
    for name, m in model.named_modules():
        if not name or kinds[type(m)] < 2 or not any(True for _ in m.parameters()):
            continue
        if type(m).__module__.startswith("torch.nn") or any(
                name.startswith(c + ".") for c in chosen):
            continue
        chosen.append(name)
    return chosen


def check_blocks(original: nn.Module, pruned: nn.Module, graph, removed: np.ndarray,
                 call: tuple[tuple, dict], dtype: torch.dtype = torch.float64
                 ) -> VerifyResult | None:
    blocks = repeated_blocks(original)
    dead = np.zeros(len(graph.labels), dtype=bool)
    dead[removed] = True

    def inside(qualname: str) -> bool:
        return any(qualname.startswith(b + ".") for b in blocks)

    for info in graph.params.values():
        if not inside(info.qualname) and any(
                dead[graph.labels[ax.comp.ids]].any() for ax in info.axes):
            return None
    if any(dead[graph.labels[c.ids]].any() for c in graph.ctx.node_consumers):
        return None
    inputs = _record(original, blocks, call)
    if len(inputs) != len(blocks):
        return None  # a block the example run never called
    tol = TOLERANCE.get(dtype, 1e-2)
    worst: VerifyResult | None = None
    for count, name in enumerate(blocks, 1):
        ref = clone_as(original.get_submodule(name), dtype)
        _mask(ref, name, graph, dead)
        new = clone_as(pruned.get_submodule(name), dtype)
        with torch.no_grad(), eval_mode(ref), eval_mode(new):
            a = flat_tensors(_run(ref, inputs[name], dtype))
            b = flat_tensors(_run(new, inputs[name], dtype))
        res = judge(a, b, tol, dtype)
        del ref, new
        if worst is None or not res.ok or \
                res.max_abs_err / res.scale > worst.max_abs_err / worst.scale:
            worst = res  # the block furthest from exact speaks for the model
        worst.blocks = count
        if not res.ok:
            return worst
    return worst


def _run(block: nn.Module, recorded: tuple[tuple, dict], dtype: torch.dtype):
    """Each run gets its own copy of the inputs: a cache object among them is updated."""
    args, kwargs = copy.deepcopy(recorded)
    return block(*_cast(args, dtype), **{k: _cast(v, dtype) for k, v in kwargs.items()})


def _record(model: nn.Module, blocks: list[str], call: tuple[tuple, dict]) -> dict:
    """Each block's (args, kwargs) from one run of the original (its first call)."""
    seen: dict[str, tuple[tuple, dict]] = {}
    hooks = []
    for name in blocks:
        def hook(_m, args, kwargs, name=name):  # a copy: a cache among them is updated later
            if name not in seen:  # (no grad here: the tensors are plain values)
                seen[name] = copy.deepcopy((tuple(args), dict(kwargs)))
        hooks.append(model.get_submodule(name).register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad(), eval_mode(model):
            model(*call[0], **call[1])
    finally:
        for h in hooks:
            h.remove()
    return seen


def _mask(block: nn.Module, prefix: str, graph, dead: np.ndarray) -> None:
    """Zero the block's consumer slices that read removed units (as masked_original does)."""
    with torch.no_grad():
        for c in graph.ctx.consumers:
            if not c.qualname.startswith(prefix + "."):
                continue
            mask = dead[graph.labels[c.ids]]
            if not mask.any():
                continue
            owner, _, local = c.qualname[len(prefix) + 1:].rpartition(".")
            t = getattr(block.get_submodule(owner) if owner else block, local)
            view = torch.movedim(t.data, c.dims, tuple(range(len(c.dims))))
            view[torch.as_tensor(mask)] = 0
