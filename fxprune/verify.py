"""The oracle: the pruned model must equal the original with every removed unit's
contribution zeroed at its consumers (the parameter slices that read it)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from .analyze.graph import ChannelGraph
from .errors import VerificationError

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


@dataclass
class VerifyResult:
    ok: bool
    max_abs_err: float
    scale: float  # max |reference output|, at least 1: errors are relative to it
    tol: float
    dtype: str

    def __str__(self) -> str:
        status = "exact" if self.ok else "MISMATCH"
        return (f"{status}: max |pruned - masked original| = {self.max_abs_err:.3g} "
                f"(scale {self.scale:.3g}, tolerance {self.tol:g} x scale, {self.dtype})")


def masked_original(graph: ChannelGraph, removed_units: np.ndarray) -> fx.GraphModule:
    """A copy of the traced original whose consumers of removed units read zeros."""
    gm = copy.deepcopy(graph.traced.gm)
    dead = np.zeros(len(graph.labels), dtype=bool)
    dead[removed_units] = True
    with torch.no_grad():
        for c in graph.ctx.consumers:
            mask = dead[graph.labels[c.ids]]
            if not mask.any():
                continue
            owner, _, local = c.qualname.rpartition(".")
            t = getattr(gm.get_submodule(owner) if owner else gm, local)
            view = torch.movedim(t.data, c.dims, tuple(range(len(c.dims))))
            view[torch.as_tensor(mask)] = 0
    return gm


def _flatten(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flatten(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flatten(v)]
    return []


def _cast(x: Any, dtype: torch.dtype) -> Any:
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.to(dtype)
    if isinstance(x, (list, tuple)):
        return type(x)(_cast(v, dtype) for v in x)
    return x


def compare(reference: torch.nn.Module, pruned: torch.nn.Module, example_inputs: tuple,
            dtype: torch.dtype = torch.float64, tol: float | None = None) -> VerifyResult:
    tol = TOLERANCE.get(dtype, 1e-2) if tol is None else tol
    ref = copy.deepcopy(reference).to(dtype).eval()
    new = copy.deepcopy(pruned).to(dtype).eval()
    inputs = _cast(tuple(example_inputs), dtype)
    with torch.no_grad():
        a, b = _flatten(ref(*inputs)), _flatten(new(*inputs))
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return VerifyResult(False, float("inf"), 1.0, tol, str(dtype))
    err = max((float((x - y).abs().max()) for x, y in zip(a, b) if x.numel()), default=0.0)
    scale = max([1e-30] + [float(x.abs().max()) for x in a if x.numel()])
    ok = bool(np.isfinite(err)) and err <= tol * scale
    return VerifyResult(ok, err, scale, tol, str(dtype).replace("torch.", ""))


def verify(pruned: fx.GraphModule, example_inputs: Any = None, *,
           dtype: torch.dtype = torch.float64, tol: float | None = None,
           raise_on_mismatch: bool = False) -> VerifyResult:
    """Check a module returned by :func:`fxprune.compress` against its masked original.

    Runs both in ``dtype`` (float64 by default, so rounding cannot hide or fake a mismatch).
    """
    meta = pruned.meta.get("fxprune")
    if meta is None:
        raise ValueError("verify needs a module returned by fxprune.compress")
    graph, removed = meta.graph, meta.removed_units
    inputs = graph.traced.example_inputs if example_inputs is None else example_inputs
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    result = compare(masked_original(graph, removed), pruned, tuple(inputs), dtype, tol)
    if raise_on_mismatch and not result.ok:
        raise VerificationError(f"pruned model differs from the masked original: {result}")
    return result
