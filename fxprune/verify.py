"""The oracle: the pruned model must equal the original with every removed unit's
contribution zeroed at its consumers (the parameter slices that read it)."""

from __future__ import annotations

import copy
import logging
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from .analyze.graph import ChannelGraph
from .errors import OptionError, VerificationError, contained, first_line
from .passes.compensate import restore
from .passes.inputs import inputs_for
from .passes.prune import PruneChannels
from .records import result_of
from .util import as_inputs, eval_mode, flat_tensors

log = logging.getLogger(__name__)
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


@dataclass
class VerifyResult:
    ok: bool
    max_abs_err: float
    scale: float  # max |reference output|, at least 1: errors are relative to it
    tol: float
    dtype: str
    approx_deviation: float | None = None  # relative, when approximate groups were removed
    compensation_deviation: float | None = None  # compensated model vs unpruned, relative
    blocks: int = 0  # > 0: checked block by block (verify_blocks), this many blocks

    def __str__(self) -> str:
        status = "exact" if self.ok else "MISMATCH"
        text = (f"{status}: max |pruned - masked original| = {self.max_abs_err:.3g} "
                f"(scale {self.scale:.3g}, tolerance {self.tol:g} x scale, {self.dtype})")
        if self.approx_deviation is not None:
            text = (f"exact groups {text}; with the approximate (LayerNorm) groups removed too: "
                    f"relative deviation {self.approx_deviation:.3g}")
        if self.blocks:
            text += f"; decoder blocks checked one by one ({self.blocks}): float64 copies of " \
                    "the whole model would not fit in memory"
        if self.compensation_deviation is not None:
            text += ("; the rewrite was checked before compensation; the compensated model "
                     f"deviates from the unpruned one by {self.compensation_deviation:.3g} "
                     "relative")
        return text


def clone_as(module: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A deep copy whose floating tensors are converted once (and without fxprune's meta,
    which holds the whole channel graph and the original model)."""
    memo: dict[int, Any] = {}
    for t in list(module.parameters()) + list(module.buffers()):
        new = t.detach().to(dtype) if dtype is not None and t.is_floating_point() else t.detach()
        new = new.clone()
        memo[id(t)] = torch.nn.Parameter(new, t.requires_grad) if isinstance(
            t, torch.nn.Parameter) else new
    if isinstance(getattr(module, "meta", None), dict):
        memo[id(module.meta)] = {}
    return copy.deepcopy(module, memo)


def masked_original(graph: ChannelGraph, removed_units: np.ndarray,
                    dtype: torch.dtype | None = None) -> fx.GraphModule:
    """A copy of the traced original whose consumers of removed units read zeros."""
    gm = clone_as(graph.traced.gm, dtype)
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
    _mask_node_inputs(gm, graph, dead)
    return gm


def _mask_node_inputs(gm: fx.GraphModule, graph: ChannelGraph, dead: np.ndarray) -> None:
    """Contractions between activations read removed channels as zeros (a mask multiply)."""
    nodes = {n.name: n for n in gm.graph.nodes}
    changed = False
    for i, c in enumerate(graph.ctx.node_consumers):
        keep = ~dead[graph.labels[c.ids]]
        if keep.all():
            continue
        node = nodes[c.node]
        operand = node.args[c.arg]
        rank = len(graph.traced.values[operand.name].shape)
        shape = [1] * rank
        dim = c.dim % rank
        if keep.ndim == 1:
            shape[dim] = keep.size
            mask = torch.as_tensor(keep, dtype=torch.float32).reshape(shape)
        else:  # a whole (heads, head_dim) comp: the mask spans the two dims it covers
            mask = _comp_mask(keep, graph.ctx.axes[operand.name], c, rank)
        name = f"_fxprune_mask_{i}"
        gm.register_buffer(name, mask)
        with gm.graph.inserting_before(node):
            got = gm.graph.get_attr(name)
            masked = gm.graph.call_function(operator.mul, (operand, got))
        args = list(node.args)
        args[c.arg] = masked
        node.args = tuple(args)
        changed = True
    if changed:
        gm.recompile()


def _comp_mask(keep: np.ndarray, axes, c, rank: int) -> torch.Tensor:
    comp = axes[c.dim % rank].comp
    shape = [1] * rank
    order = []
    for d, ax in enumerate(axes):
        if ax.comp is comp:
            shape[d] = ax.size
            order.append((d, ax.ldims[0]))
    perm = [ld for _, ld in sorted(order)]
    full = np.transpose(keep.reshape(comp.lshape), perm)
    return torch.as_tensor(full, dtype=torch.float32).reshape(shape)


def _cast(x: Any, dtype: torch.dtype) -> Any:
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.to(dtype)
    if isinstance(x, (list, tuple)):
        return type(x)(_cast(v, dtype) for v in x)
    return x


def compare(reference: torch.nn.Module, pruned: torch.nn.Module, example_inputs: tuple,
            dtype: torch.dtype = torch.float64, tol: float | None = None,
            copy_reference: bool = True, pruned_inputs: tuple | None = None) -> VerifyResult:
    try:
        return _compare(reference, pruned, example_inputs, dtype, tol, copy_reference,
                        pruned_inputs)
    except RuntimeError as exc:  # float32 literals of an exported graph, as in check()
        if dtype is not torch.float64:
            raise
        log.info("fxprune: comparing in float32: %s", first_line(exc))
        return _compare(reference, pruned, example_inputs, torch.float32, None, copy_reference,
                        pruned_inputs)


def _compare(reference, pruned, example_inputs, dtype, tol, copy_reference, pruned_inputs):
    tol = TOLERANCE.get(dtype, 1e-2) if tol is None else tol
    ref = (clone_as(reference, dtype) if copy_reference else reference).eval()
    new = clone_as(pruned, dtype).eval()
    inputs = _cast(tuple(example_inputs), dtype)
    new_inputs = inputs if pruned_inputs is None else _cast(tuple(pruned_inputs), dtype)
    with torch.no_grad():
        a, b = flat_tensors(ref(*inputs)), flat_tensors(new(*new_inputs))
    return judge(a, b, tol, dtype)


def judge(a: list, b: list, tol: float, dtype: torch.dtype) -> VerifyResult:
    """Max abs difference of two flat output lists (``a`` the reference), relative to the
    reference's scale; shapes that differ are a mismatch."""
    name = str(dtype).replace("torch.", "")
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return VerifyResult(False, float("inf"), 1.0, tol, name)
    err = max((float((x - y).abs().max()) for x, y in zip(a, b) if x.numel()), default=0.0)
    scale = max([1e-30] + [float(x.abs().max()) for x in a if x.numel()])
    ok = bool(np.isfinite(err)) and err <= tol * scale
    return VerifyResult(ok, err, scale, tol, name)


def _against_masked(graph, removed, pruned, example_inputs, dtype, tol) -> VerifyResult:
    masked = masked_original(graph, removed, dtype)
    return compare(masked, pruned, example_inputs, dtype, tol, copy_reference=False,
                   pruned_inputs=inputs_for(pruned, graph, removed, tuple(example_inputs)))


def check(graph: ChannelGraph, removed: np.ndarray, pruned: fx.GraphModule,
          example_inputs: tuple, dtype: torch.dtype = torch.float64,
          tol: float | None = None) -> tuple[VerifyResult, VerifyResult | None]:
    """(exactness of the exact groups, deviation of the whole model or None).

    Without approximate units the pruned model itself must match. With them (LayerNorm
    groups), a model with only the exact units removed must match, and the full model's
    deviation from the masked original is measured and reported, not judged.
    """
    try:
        return _check(graph, removed, pruned, example_inputs, dtype, tol)
    except RuntimeError as exc:  # a graph with float32 literals (export) cannot run in float64
        if dtype is not torch.float64:
            raise
        log.info("fxprune: verifying in float32: %s", first_line(exc))
        return _check(graph, removed, pruned, example_inputs, torch.float32, tol)


def _check(graph: ChannelGraph, removed: np.ndarray, pruned: fx.GraphModule,
           example_inputs: tuple, dtype: torch.dtype, tol: float | None
           ) -> tuple[VerifyResult, VerifyResult | None]:
    approx = graph.approximate_units(removed)
    if approx.size == 0:
        return _against_masked(graph, removed, pruned, example_inputs, dtype, tol), None
    exact_removed = np.setdiff1d(removed, approx)
    exact_gm = PruneChannels(graph, exact_removed, check=False)(graph.traced.gm).graph_module
    exact = _against_masked(graph, exact_removed, exact_gm, example_inputs, dtype, tol)
    deviation = _against_masked(graph, removed, pruned, example_inputs, dtype, tol)
    return exact, deviation


@contained("fxprune.verify")
def verify(pruned: torch.nn.Module, example_inputs: Any = None, *,
           dtype: torch.dtype = torch.float64, tol: float | None = None,
           raise_on_mismatch: bool = False) -> VerifyResult:
    """Check a module returned by :func:`fxprune.compress` against its masked original.

    Runs both in ``dtype`` (float64 by default, so rounding cannot hide or fake a mismatch).
    With approximate groups removed, the result is the exactness of the exact groups and
    ``result.approx_deviation`` the relative deviation of the whole pruned model.
    """
    try:
        meta = result_of(pruned)
    except KeyError:
        raise OptionError("verify needs a module returned by fxprune.compress") from None
    if "loaded_from" in meta.extra:
        raise OptionError(f"this module was loaded from {meta.extra['loaded_from']}, which "
                          "holds the pruned weights only: there is no original to verify "
                          "against (load(..., verify=True) verifies the plan replay)")
    graph, removed = meta.graph, meta.removed_units
    changed = graph.traced.changed_since_capture()
    if changed:
        raise OptionError(f"the original model's tensors were shared with compress "
                          f"(copy_weights=False, or a model above 1 GiB) and have changed in "
                          f"place since (e.g. {changed[0]}): there is no original left to "
                          "verify against; compress with copy_weights=True to keep one")
    inputs = as_inputs(graph.traced.example_inputs if example_inputs is None else example_inputs)
    uncompensated = meta.extra.get("uncompensated")
    if not isinstance(pruned, fx.GraphModule):  # module output: run the module itself
        call = graph.traced.call if example_inputs is None else (inputs, {})

        def run(kind: torch.dtype) -> VerifyResult:
            module = clone_as(pruned, kind)
            if uncompensated:
                restore(module, uncompensated)
            return check_module(module, graph, removed, meta.report.models.pruned, call, kind,
                                tol)

        try:
            result = run(dtype)
        except RuntimeError as exc:  # float32 literals of an exported graph, as in check()
            if dtype is not torch.float64:
                raise
            log.info("fxprune: verifying in float32: %s", first_line(exc))
            result = run(torch.float32)
        if raise_on_mismatch and not result.ok:
            raise VerificationError(f"pruned model differs from the masked original: {result}")
        return result
    target = pruned
    if uncompensated:  # prove the rewrite on the model as it was before compensation
        target = clone_as(pruned)
        restore(target, uncompensated)
    result, deviation = check(graph, removed, target, inputs, dtype, tol)
    if deviation is not None:
        result.approx_deviation = deviation.max_abs_err / deviation.scale
    if uncompensated:
        dev = compare(graph.traced.gm, pruned, inputs, dtype, tol,
                      pruned_inputs=inputs_for(pruned, graph, removed, inputs))
        result.compensation_deviation = dev.max_abs_err / dev.scale
    if raise_on_mismatch and not result.ok:
        raise VerificationError(f"pruned model differs from the masked original: {result}")
    return result


def check_module(module: torch.nn.Module, graph: ChannelGraph, removed: np.ndarray,
                 pruned: fx.GraphModule, call: tuple[tuple, dict], dtype: torch.dtype =
                 torch.float64, tol: float | None = None) -> VerifyResult:
    """Module output: run the pruned module itself (its own forward, as the caller calls it,
    converted to ``dtype`` by the caller) against the masked original graph - or against the
    pruned graph when approximate units were removed (that graph's own check measured their
    deviation). Errors propagate: the caller names the module that raised."""
    tol = TOLERANCE.get(dtype, 1e-2) if tol is None else tol
    flat = tuple(graph.traced.example_inputs)
    if graph.approximate_units(removed).size:
        reference = clone_as(pruned, dtype)
        ref_inputs = inputs_for(pruned, graph, removed, flat)
    else:
        reference, ref_inputs = masked_original(graph, removed, dtype), flat
    new = module
    args, kwargs = call
    with torch.no_grad(), eval_mode(new), eval_mode(reference):
        a = flat_tensors(reference(*_cast(tuple(ref_inputs), dtype)))
        b = flat_tensors(new(*_cast(tuple(args), dtype), **{k: _cast(v, dtype)
                                                              for k, v in kwargs.items()}))
    return judge(a, b, tol, dtype)
