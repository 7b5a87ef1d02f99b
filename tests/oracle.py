"""An oracle that does not use fxprune's channel graph: every parameter and buffer of the
original gets distinct values, so each value of the pruned model's tensors tells where it came
from. Every original element that no pruned element came from is zeroed in a float64 copy of
the original, and the two models must agree. A rewrite that slices the wrong channels, keeps
a stale one or drops a live one fails it, whatever the channel graph believed."""

from __future__ import annotations

import copy

import numpy as np
import torch


def distinct_values(model: torch.nn.Module, seed: int = 0,
                    only_repeated: bool = False) -> torch.nn.Module:
    """``model`` with every floating parameter and buffer element set to a different value
    (variances positive), in place; returns it. ``only_repeated`` leaves tensors whose values
    are distinct already (a test that steers the selection through its weights)."""
    g = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if id(t) in seen or not t.is_floating_point() or t.numel() == 0:
                continue
            seen.add(id(t))
            if only_repeated and torch.unique(t).numel() == t.numel() and (
                    "running_var" not in name or bool((t > 0).all())):
                continue
            # a shuffled even grid in [0.25, 0.75): distinct by construction, also in float32
            n = t.numel()
            grid = (torch.randperm(n, generator=g).double() + 0.5) / n * 0.5 + 0.25
            sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
            v = grid if "running_var" in name else grid * sign
            t.copy_(v.reshape(t.shape).to(t.dtype))
    return model


def tamed_values(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """:func:`distinct_values` with every weight matrix / kernel divided by its fan-in, so a
    deep network keeps finite, non-trivial activations (and a finite training loss)."""
    distinct_values(model, seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p /= p[0].numel()
    return model


def _provenance(original: torch.Tensor, pruned: torch.Tensor) -> np.ndarray:
    """Flat indices into ``original`` of each element of ``pruned`` (values must be found)."""
    o = original.detach().double().reshape(-1).numpy()
    p = pruned.detach().double().reshape(-1).numpy()
    order = np.argsort(o, kind="stable")
    pos = np.searchsorted(o[order], p)
    pos = np.clip(pos, 0, o.size - 1)
    found = order[pos]
    if not np.array_equal(o[found], p):
        missing = int((o[found] != p).sum())
        raise AssertionError(f"{missing} pruned values do not occur in the original tensor")
    return found


def masked_by_values(original: torch.nn.Module, pruned: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of ``original`` whose tensor elements the pruned model does not hold are
    zeroed (tensors are matched by qualified name)."""
    ref = copy.deepcopy(original).double().eval()
    new = dict(pruned.named_parameters())
    new.update(dict(pruned.named_buffers()))
    with torch.no_grad():
        for name, t in list(ref.named_parameters()) + list(ref.named_buffers()):
            if not t.is_floating_point():
                continue
            kept_from = new.get(name)
            if kept_from is None:  # a tensor the graph never reads (an unused module)
                continue
            if kept_from.shape == t.shape and torch.equal(kept_from.double(), t):
                continue
            keep = np.zeros(t.numel(), dtype=bool)
            keep[_provenance(t, kept_from)] = True
            t.view(-1)[torch.as_tensor(~keep)] = 0.0
    return ref


def check_by_values(original: torch.nn.Module, pruned: torch.nn.Module, inputs: tuple,
                    pruned_inputs: tuple | None = None, rtol: float = 1e-10) -> float:
    """Max |pruned - masked original| relative to the output scale, asserted <= ``rtol``
    (float64). ``original`` must have had :func:`distinct_values` applied before pruning."""
    ref = masked_by_values(original, pruned)
    new = copy.deepcopy(pruned).double().eval()
    with torch.no_grad():
        a = ref(*_double(inputs))
        b = new(*_double(pruned_inputs if pruned_inputs is not None else inputs))
    a, b = _flat(a), _flat(b)
    assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b)), "output shapes"
    scale = max([1e-30] + [float(x.abs().max()) for x in a if x.numel()])
    err = max((float((x - y).abs().max()) for x, y in zip(a, b) if x.numel()), default=0.0)
    assert err <= rtol * scale, f"independent oracle: max |diff| {err:.3g} (scale {scale:.3g})"
    return err / scale


def _double(xs: tuple) -> tuple:
    return tuple(x.double() if torch.is_tensor(x) and x.is_floating_point() else x for x in xs)


def _flat(out) -> list[torch.Tensor]:
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flat(v)]
    return []
