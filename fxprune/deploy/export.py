"""Exports for runtimes, each checked numerically against the pruned PyTorch module:
torch.export (.pt2), ONNX run with onnxruntime, and torch.compile."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import FxPruneError, first_line
from ..util import as_inputs, eval_mode, flat_tensors

log = logging.getLogger(__name__)
ONNX_ATOL = 1e-4  # max abs difference accepted between onnxruntime and PyTorch


class ExportError(FxPruneError):
    """An export failed or its output does not match the PyTorch module."""


@dataclass
class ExportCheck:
    """Max abs difference of each export's output from the PyTorch module's."""

    diffs: dict[str, float] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    def __str__(self) -> str:
        return ", ".join(f"{k}: max |diff| {v:.2e}" for k, v in self.diffs.items())


def _max_diff(a: Any, b: Any) -> float:
    fa, fb = flat_tensors(a), flat_tensors(b)
    if len(fa) != len(fb):
        raise ExportError(f"the export returns {len(fb)} tensors, the module {len(fa)}")
    return max((float((x.detach().double() - torch.as_tensor(y).double()).abs().max())
                for x, y in zip(fa, fb) if x.numel()), default=0.0)


def _reference(module: torch.nn.Module, inputs: tuple) -> Any:
    with torch.no_grad(), eval_mode(module):
        return module(*inputs)


def _batched(inputs: tuple, dynamic_batch: bool) -> tuple[tuple, Any, tuple]:
    """(export inputs, dynamic_shapes, check inputs). A dynamic batch dim is exported from a
    batch of 2 (torch.export specialises a size of 1) and checked on a batch of 3."""
    if not dynamic_batch:
        return inputs, None, inputs
    sizes = {x.shape[0] for x in inputs if isinstance(x, torch.Tensor) and x.dim()}
    if len(sizes) != 1:
        raise ExportError("dynamic_batch needs every tensor input batched along dim 0 with "
                          f"one size, got {sorted(sizes)}")
    batch = torch.export.Dim("batch")

    def grow(x: Any, n: int) -> Any:
        if not isinstance(x, torch.Tensor) or not x.dim():
            return x
        return x[:1].expand(n, *x.shape[1:]).clone() if n != x.shape[0] else x

    def varied(x: Any) -> Any:  # rows that differ, so a batch-mixing export shows
        x = grow(x, 3)
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return x
        g = torch.Generator().manual_seed(0)
        return x + 0.01 * torch.randn(x.shape, generator=g, dtype=x.dtype)

    shapes = tuple({0: batch} if isinstance(x, torch.Tensor) and x.dim() else None
                   for x in inputs)
    return tuple(grow(x, 2) for x in inputs), shapes, tuple(varied(x) for x in inputs)


def export_pt2(module: torch.nn.Module, path: str | Path,
               example_inputs: Sequence[Any] | torch.Tensor, *,
               dynamic_batch: bool = False) -> float:
    """``torch.export`` the module (eval mode) to ``path`` (.pt2); returns the max abs
    difference of the reloaded program's output (on another batch size with
    ``dynamic_batch``, which makes dim 0 of every tensor input dynamic)."""
    inputs, shapes, check = _batched(as_inputs(example_inputs), dynamic_batch)
    try:
        with eval_mode(module):
            program = torch.export.export(module, inputs, dynamic_shapes=shapes)
    except Exception as exc:  # torch.export's constraint and tracing errors
        raise ExportError(f"torch.export failed: {first_line(exc)}") from exc
    torch.export.save(program, str(path))
    reloaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        return _max_diff(_reference(module, check), reloaded(*check))


def export_onnx(module: torch.nn.Module, path: str | Path,
                example_inputs: Sequence[Any] | torch.Tensor, *, check: bool = True,
                atol: float = ONNX_ATOL, dynamo: bool = True,
                dynamic_batch: bool = False) -> float | None:
    """Export to ONNX (``dynamo`` selects torch's exporter) and, with ``check``, run it with
    onnxruntime on the example inputs (another batch size with ``dynamic_batch``); returns
    the max abs difference and raises :class:`ExportError` above ``atol``."""
    inputs, shapes, check_inputs = _batched(as_inputs(example_inputs), dynamic_batch)
    kw: dict[str, Any] = {"dynamo": dynamo}
    if dynamo:
        kw["verbose"] = False
        kw["dynamic_shapes"] = shapes
    elif shapes is not None:
        kw["dynamic_axes"] = {f"input_{i}": {0: "batch"} for i, s in enumerate(shapes) if s}
        kw["input_names"] = [f"input_{i}" for i in range(len(inputs))]
    try:
        with eval_mode(module):
            torch.onnx.export(module, inputs, str(path), **kw)
    except ImportError as exc:
        raise ExportError(f"ONNX export needs the onnx extras: pip install "
                          f"'fxprune[deploy]' ({exc})") from exc
    except Exception as exc:  # the exporter's many error types, as one with its first line
        raise ExportError(f"torch.onnx.export failed: {first_line(exc)}") from exc
    if not check:
        return None
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ExportError("checking the ONNX file needs onnxruntime: pip install "
                          "'fxprune[deploy]' (or check=False)") from exc
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {i.name: x.detach().cpu().numpy()
                 for i, x in zip(session.get_inputs(), check_inputs)}
        outputs = session.run(None, feeds)
    except Exception as exc:  # onnxruntime's own error types
        raise ExportError(f"onnxruntime cannot run {path}: {first_line(exc)}") from exc
    diff = _max_diff(_reference(module, check_inputs), outputs)
    if diff > atol:
        raise ExportError(f"onnxruntime differs from PyTorch by {diff:.2e} (> {atol:g})")
    return diff


def fold_batchnorm(module: torch.nn.Module, example_inputs: Sequence[Any] | torch.Tensor,
                   *, rtol: float = 1e-5) -> tuple[torch.fx.GraphModule, float]:
    """A copy with every eval-mode BatchNorm that directly follows a conv folded into the
    conv's weights (torch.fx.experimental.optimization.fuse); BN is memory-bound, so on
    thin pruned nets this is where latency stops following FLOPs. Returns the folded module
    and the max abs difference on the example inputs, which must stay within ``rtol`` of the
    output scale. For exports only: the artifact keeps the BN layers its plans describe."""
    from torch.fx.experimental.optimization import fuse

    inputs = as_inputs(example_inputs)
    reference = _reference(module, inputs)
    with eval_mode(module):
        folded = fuse(module, inplace=False)
    folded.eval()
    with torch.no_grad():
        diff = _max_diff(reference, folded(*inputs))
    scale = max((float(t.detach().abs().max()) for t in flat_tensors(reference) if t.numel()),
                default=0.0)
    if diff > rtol * max(scale, 1e-12):
        raise ExportError(f"folding BatchNorm changed the output by {diff:.2e} "
                          f"(scale {scale:.2e})")
    return folded, diff


def check_compile(module: torch.nn.Module, example_inputs: Sequence[Any] | torch.Tensor
                  ) -> float:
    """``torch.compile`` the module and return the max abs difference of its output."""
    inputs = as_inputs(example_inputs)
    compiled = torch.compile(module)
    with torch.no_grad(), eval_mode(module):
        return _max_diff(module(*inputs), compiled(*inputs))


def export_all(module: torch.nn.Module, out_dir: str | Path,
               example_inputs: Sequence[Any] | torch.Tensor, *, onnx: bool = True,
               pt2: bool = True, compile: bool = False,
               dynamic_batch: bool = False) -> ExportCheck:
    """The exports a deploy step wants, each checked; files go to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = ExportCheck()
    if pt2:
        result.files["pt2"] = out / "model.pt2"
        result.diffs["torch.export"] = export_pt2(module, result.files["pt2"], example_inputs,
                                                  dynamic_batch=dynamic_batch)
    if onnx:
        result.files["onnx"] = out / "model.onnx"
        result.diffs["onnxruntime"] = export_onnx(module, result.files["onnx"], example_inputs,
                                                  dynamic_batch=dynamic_batch)
    if compile:
        result.diffs["torch.compile"] = check_compile(module, example_inputs)
    log.info("exports: %s", result)
    return result
