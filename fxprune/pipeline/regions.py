"""Partial capture: when no frontend captures the whole model (detection: NMS and box decoding
depend on the data), prune the largest submodules that capture - each with the channels at
its boundary kept, so each is exact on any input - and put them into a copy of the model.

One example run records every submodule's call; the search goes top-down and stops at the
first module that exports. Calibration batches reach a region the same way: the whole
model runs on each batch and the region's inputs are taken at its boundary."""

from __future__ import annotations

import dataclasses
import logging
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree

from ..clone import owned_copy
from ..errors import FxPruneError, TraceError, first_line
from ..frontends.base import TraceOptions
from ..options import CompressOptions
from ..report import result_of
from ..util import eval_mode, flat_tensors
from ..verify import TOLERANCE, clone_as, judge, masked_original

log = logging.getLogger(__name__)


@dataclass
class Region:
    path: str
    params_before: int
    params_after: int
    verify: str
    calls: int


@dataclass
class RegionsReport:
    """What a partial capture did: the regions pruned and what was left out, and why."""

    regions: list[Region] = field(default_factory=list)
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (module, why)
    whole_model: str = ""  # the assembled model against its masked original
    whole_ok: bool = False
    reason: str = ""  # why the whole model did not capture

    @property
    def params_before(self) -> int:
        return sum(r.params_before for r in self.regions)

    @property
    def params_after(self) -> int:
        return sum(r.params_after for r in self.regions)

    def summary(self) -> str:
        lines = [f"partial capture ({self.reason})"]
        lines += [f"region {r.path}: params {r.params_before:,} -> {r.params_after:,}; "
                  f"{r.verify}" + (f" ({r.calls} calls)" if r.calls > 1 else "")
                  for r in self.regions]
        lines += [f"left out {p or '<root>'}: {why}" for p, why in self.left_out]
        lines.append(f"whole model: {self.whole_model}")
        return "\n".join(lines)


def _calls(model: torch.nn.Module, args: tuple, kwargs: dict) -> dict[str, list]:
    """Every submodule's first call (args, kwargs) and call count, from one eval run."""
    names = {id(m): n for n, m in model.named_modules()}
    seen: dict[str, list] = {}

    def hook(module, a, k):
        entry = seen.setdefault(names[id(module)], [a, k, 0])
        entry[2] += 1

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True)
               for m in model.modules() if m is not model]
    try:
        with torch.no_grad(), eval_mode(model):
            model(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the model itself rejects the inputs
        raise TraceError(f"running {type(model).__name__} on the example inputs failed: "
                         f"{first_line(exc)}. Check example_inputs (shape, dtype).") from exc
    finally:
        for h in handles:
            h.remove()
    return seen


def _region_batches(model: torch.nn.Module, path: str, data, max_batches) -> Iterator[tuple]:
    """The region's flattened inputs for each calibration batch (the whole model runs)."""
    region = model.get_submodule(path)
    got: list = []

    def hook(module, a, k):
        if not got:
            got.append(pytree.tree_leaves((a, k)))

    for count, item in enumerate(data):
        if max_batches is not None and count >= max_batches:
            return
        inputs = (item,) if isinstance(item, torch.Tensor) else tuple(item)
        handle = region.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad(), eval_mode(model):
                model(*inputs)
        finally:
            handle.remove()
        if got:
            yield tuple(got.pop())


def prune_regions(model: torch.nn.Module, inputs: tuple, options: CompressOptions, run,
                  reason: str) -> torch.nn.Module:
    """A copy of ``model`` whose largest capturable submodules are pruned by ``run``."""
    kwargs = dict(options.trace.example_kwargs or {})
    calls = _calls(model, inputs, kwargs)
    report = RegionsReport(reason=reason)
    pruned: dict[str, torch.nn.Module] = {}
    results: dict[str, Any] = {}

    def search(module: torch.nn.Module, path: str) -> None:
        for name, child in module.named_children():
            sub = f"{path}.{name}" if path else name
            if not any(True for _ in child.parameters()):
                continue  # nothing to prune: anchors, transforms, RoI pooling
            if sub not in calls:
                report.left_out.append((sub, "not run on the example inputs"))
                continue
            args, kw, count = calls[sub]
            try:
                out = run(child, args, _region_options(options, kw, model, sub))
            except TraceError as exc:
                log.debug("region %s did not capture: %s", sub, exc)
                nested = any(True for _ in child.children())
                report.left_out.append((sub, f"does not capture ({_short(exc)})" + (
                    "; its own code is kept, its submodules are tried" if nested else "")))
                search(child, sub)
                continue
            except FxPruneError as exc:
                report.left_out.append((sub, f"kept as it is: {_short(exc)}"))
                continue
            res = result_of(out)
            pruned[sub], results[sub] = out, res
            rep = res.report
            report.regions.append(Region(sub, rep.params_before, rep.params_after,
                                         str(rep.module_verify or rep.verify), count))

    search(model, "")
    if not any(r.params_after < r.params_before for r in report.regions):
        raise TraceError(f"{reason}. No submodule that captures has channels to prune "
                         f"(regions tried: {[r.path for r in report.regions] or 'none'})")
    new = owned_copy(model)
    for path, module in pruned.items():
        _set_submodule(new, path, module)
    new.train(model.training)
    _check_whole(report, model, new, results, inputs, kwargs)
    if not report.whole_ok:  # every region is proven exact on its own; what follows them
        # (top-k, NMS) is discontinuous: rounding-level differences can reorder near-ties
        log.warning("fxprune: every region is exact, but the assembled model's outputs differ "
                    "from the masked original's (%s): the code between the regions (top-k, "
                    "NMS) reorders near-ties", report.whole_model)
    _REPORTS[new] = report
    log.info("fxprune: %s", report.summary())
    return new


def _region_options(options: CompressOptions, kwargs: dict, model, path: str
                    ) -> CompressOptions:
    trace = TraceOptions("export", example_kwargs=kwargs or None)
    calib = options.calibration
    if calib.data is not None:
        calib = dataclasses.replace(calib, data=list(
            _region_batches(model, path, calib.data, calib.max_batches)))
    return dataclasses.replace(options, trace=trace, output="module", calibration=calib)


def _short(exc: BaseException) -> str:
    return first_line(exc)[:200]


def _set_submodule(root: torch.nn.Module, path: str, module: torch.nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


class _Masked(torch.nn.Module):
    """A region's masked original graph behind the region's own call signature."""

    def __init__(self, gm: torch.nn.Module):
        super().__init__()
        self.gm = gm

    def forward(self, *args, **kwargs):
        return self.gm(*pytree.tree_leaves((args, kwargs)))


def _check_whole(report: RegionsReport, model, new, results, inputs, kwargs) -> None:
    """The assembled model against the model with every region masked, in float64."""
    masked = clone_as(model, torch.float64)
    for path, res in results.items():
        gm = masked_original(res.graph, res.removed_units, torch.float64)
        _set_submodule(masked, path, _Masked(gm))
    probe = clone_as(new, torch.float64)
    cast = pytree.tree_map(lambda x: x.double() if isinstance(x, torch.Tensor) and
                           x.is_floating_point() else x, (tuple(inputs), kwargs))
    with torch.no_grad(), eval_mode(masked), eval_mode(probe):
        a = flat_tensors(masked(*cast[0], **cast[1]))
        b = flat_tensors(probe(*cast[0], **cast[1]))
    tol = TOLERANCE[torch.float64]
    result, note = judge(a, b, tol, torch.float64), ""
    if not result.ok:  # top-k / NMS may order near-tied detections either way
        by_value = judge([x.reshape(-1).sort().values for x in a],
                         [y.reshape(-1).sort().values for y in b], tol, torch.float64)
        if by_value.ok:
            result, note = by_value, ", equal up to the order of near-tied outputs"
    report.whole_ok = result.ok
    report.whole_model = str(result) + note


_REPORTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def regions_report(model: torch.nn.Module) -> RegionsReport:
    """The partial-capture report of a model compress assembled from regions."""
    return _REPORTS[model]
