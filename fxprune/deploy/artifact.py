"""Pickle-free artifacts: the plan(s) as JSON plus a plain tensor file. Loading rebuilds the
structure by replaying the plans on a fresh model from the caller's factory (the analysis is
deterministic), then copies the tensors in; no code is ever read from the artifact."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx

from ..errors import FxPruneError, OptionError, contained, first_line
from ..options import (
    Calibration,
    CompensationOptions,
    CompressOptions,
    SelectOptions,
    from_replay,
    replay_options,
)
from ..pipeline import run
from ..plan import Plan
from ..report import result_of
from ..util import as_inputs

log = logging.getLogger(__name__)
FORMAT, VERSION = "fxprune-artifact", 1
META, SAFETENSORS, TORCH = "fxprune.json", "weights.safetensors", "weights.pt"


class ArtifactError(FxPruneError):
    """The artifact is unreadable, tampered with, or does not match the model."""


def _has_safetensors() -> bool:
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        return False
    return True


def _input_specs(inputs: Sequence[Any]) -> list[dict]:
    """Tensors by shape and dtype, plain scalars (a flag, a scale) by value."""
    specs = []
    for x in inputs:
        if isinstance(x, torch.Tensor):
            specs.append({"shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch.")})
        elif x is None or isinstance(x, (bool, int, float, str)):
            specs.append({"value": x})
        else:
            raise ArtifactError(f"cannot record an example input of type {type(x).__name__}:"
                                " save() records tensors and plain scalars only")
    return specs


def _leaf_names(leaf_modules: Sequence) -> list[str]:
    out = []
    for item in leaf_modules:
        out.append(f"type:{item.__module__}.{item.__qualname__}" if isinstance(item, type)
                   else str(item))
    return out


@contained("fxprune.save")
def save(gm: fx.GraphModule, path: str | Path, *, example_inputs: Sequence[Any] | None = None,
         spec: str | None = None, tensor_format: str | None = None) -> Path:
    """Write ``gm`` (a result of :func:`fxprune.compress`) to the directory ``path``: the
    plans, the example input shapes and the replay options as ``fxprune.json``, the
    parameters and buffers as ``weights.safetensors`` (or ``weights.pt``, a plain tensor
    dict, when safetensors is not installed or ``tensor_format="torch"``). ``spec`` records
    where the model came from (the CLI's ``torchvision:NAME``) so :func:`load` can rebuild it
    without a factory."""
    try:
        meta = result_of(gm)
    except KeyError:
        raise ArtifactError("save() takes a module returned by fxprune.compress()") from None
    if example_inputs is None:
        models = meta.report.models if meta.report is not None else None
        if not models:
            raise ArtifactError("the example inputs are unknown: pass example_inputs=")
        example_inputs = models.inputs
    options = replay_options(meta.options)
    if meta.report is not None:  # how it was captured and returned: replayed the same way
        options["frontend"], options["output"] = meta.report.frontend, meta.report.output
    options["leaf_modules"] = _leaf_names(options["leaf_modules"])
    try:
        json.dumps(options.get("concrete_args"))
    except TypeError as exc:
        raise ArtifactError(f"concrete_args cannot be stored as JSON ({exc})") from exc
    fmt = tensor_format or ("safetensors" if _has_safetensors() else "torch")
    if fmt not in ("safetensors", "torch"):
        raise OptionError(f"tensor_format {fmt!r}: use 'safetensors' or 'torch'")
    doc = {
        "format": FORMAT, "version": VERSION, "spec": spec, "training": gm.training,
        "inputs": _input_specs(example_inputs), "options": options,
        "history": [json.loads(p.to_json()) for p in meta.history],
    }  # everything is checked before anything is written
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    # independent contiguous copies: safetensors refuses shared storage, and ties are
    # rebuilt by the plan replay anyway; non-persistent buffers too (not in state_dict)
    tensors = {k: v.detach().contiguous().clone() for k, v in _all_tensors(gm).items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(out / SAFETENSORS))
        (out / TORCH).unlink(missing_ok=True)
    else:
        torch.save(tensors, out / TORCH)
        (out / SAFETENSORS).unlink(missing_ok=True)
    (out / META).write_text(json.dumps(doc, indent=1))
    log.info("saved %s (%d tensors, %s)", out, len(tensors), fmt)
    return out


def _all_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = dict(module.state_dict())
    for name, buf in module.named_buffers():
        if name not in out:  # persistent=False buffers
            out[name] = buf
    return out


def read_meta(path: str | Path) -> dict:
    meta_file = Path(path) / META
    try:
        doc = json.loads(meta_file.read_text())
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path} is not an fxprune artifact (no {META})") from exc
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{meta_file} is not valid JSON: {exc}") from exc
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ArtifactError(f"{meta_file}: format {doc.get('format')!r} version "
                            f"{doc.get('version')!r}, expected {FORMAT!r} {VERSION}")
    return doc


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensor file, parsed without running code: safetensors, or torch's weights-only
    unpickler, which refuses anything but tensors and plain containers."""
    root = Path(path)
    if (root / SAFETENSORS).exists():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(root / SAFETENSORS))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ArtifactError(f"{root / SAFETENSORS} is not a valid tensor file: {exc}") \
                from exc
    elif (root / TORCH).exists():
        try:
            tensors = torch.load(root / TORCH, map_location="cpu", weights_only=True)
        except Exception as exc:  # the weights-only unpickler's refusals, truncation, ...
            raise ArtifactError(f"refusing {root / TORCH}: not a plain tensor file "
                                f"({first_line(exc)})") from exc
    else:
        raise ArtifactError(f"{root} has no {SAFETENSORS} or {TORCH}")
    if not isinstance(tensors, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise ArtifactError(f"{root}: the tensor file must hold a dict of named tensors")
    return tensors


def example_inputs_from(doc: dict) -> tuple[torch.Tensor, ...]:
    """Tracing inputs of the recorded shapes (values do not matter for the replay)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for spec in doc["inputs"]:
        if "value" in spec:
            out.append(spec["value"])
            continue
        dtype = getattr(torch, spec["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise ArtifactError(f"unknown input dtype {spec['dtype']!r}")
        shape = [int(s) for s in spec["shape"]]
        out.append(torch.randn(shape, generator=g).to(dtype) if dtype.is_floating_point
                   else torch.zeros(shape, dtype=dtype))
    return tuple(out)


def _resolve_leaves(names: list[str], model: torch.nn.Module) -> list:
    """``type:`` entries name a class of a module in the fresh model (no import)."""
    classes = {f"type:{type(m).__module__}.{type(m).__qualname__}": type(m)
               for m in model.modules()}
    out = []
    for name in names:
        if name.startswith("type:"):
            if name in classes:  # a type the model does not use cannot change the trace
                out.append(classes[name])
        else:
            out.append(name)
    return out


def _registry_factory(spec: str | None) -> Callable[[], torch.nn.Module]:
    """Only registry specs rebuild without a factory: a spec naming a Python file would let
    whoever edits the artifact choose code to run."""
    if not spec:
        raise ArtifactError("this artifact records no model spec: pass model_factory=")
    if not spec.startswith(("torchvision:", "timm:", "ultralytics:")):
        raise ArtifactError(f"the artifact's model comes from {spec!r}; fxprune does not run "
                            "code an artifact names: pass model_factory=")
    from .spec import model_from_spec

    return lambda: model_from_spec(spec)[0]


@contained("fxprune.apply_plan")
def apply_plan(model: torch.nn.Module, plan: Plan | Sequence[Plan],
               example_inputs: Sequence[Any] | torch.Tensor, *, verify: bool = True,
               options: CompressOptions | None = None) -> fx.GraphModule:
    """Replay one plan, or the plans of an iterative run in order, on ``model`` (not
    modified): the structure fxprune gave, with ``model``'s own weights. ``options`` give
    the tracing and input settings the plans were made with (``compress``'s defaults when
    None); their selection is replaced by each plan."""
    plans = [plan] if isinstance(plan, Plan) else list(plan)
    if not plans:
        raise OptionError("apply_plan needs at least one plan")
    base = options or CompressOptions()
    inputs = as_inputs(example_inputs)
    current: torch.nn.Module = model
    for p in plans:
        step = dataclasses.replace(  # the plan alone: no scoring, budget or refit
            base, select=SelectOptions(plan=p), budget=None, steps=1, verify=verify,
            importance="l2", callback=None, calibration=Calibration(),
            compensation=CompensationOptions("none"))
        current = run(current, inputs, step)
        inputs = result_of(current).report.models.pruned_inputs
    result_of(current).history = plans
    return current


@contained("fxprune.load", "Check that the model factory builds the model the artifact "
           "was saved from (same class and constructor options).")
def load(path: str | Path, model_factory: Callable[[], torch.nn.Module] | None = None, *,
         example_inputs: Sequence[Any] | None = None, verify: bool = False
         ) -> fx.GraphModule:
    """Rebuild a saved model: ``model_factory()`` (or the recorded ``spec``) gives a fresh
    model, the plans are replayed on it, and the saved tensors are copied in (strictly: a
    missing, extra or mis-shaped tensor is an error). Without a factory only a recorded
    ``torchvision:`` / ``timm:`` spec is used; nothing the artifact names is imported."""
    doc = read_meta(path)
    tensors = read_tensors(path)
    if model_factory is None:
        model_factory = _registry_factory(doc.get("spec"))
    model = model_factory()
    if example_inputs is None:
        example_inputs = example_inputs_from(doc)
    recorded = dict(doc.get("options", {}))
    recorded["leaf_modules"] = _resolve_leaves(recorded.get("leaf_modules", []), model)
    plans = [Plan(**p) for p in doc["history"]]
    gm = apply_plan(model, plans, example_inputs, verify=verify, options=from_replay(recorded))
    own = _all_tensors(gm)
    missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    bad = [k for k in own if k in tensors and own[k].shape != tensors[k].shape]
    if missing or extra or bad:
        raise ArtifactError(f"{path} does not match the rebuilt model: missing {missing[:5]}, "
                            f"unexpected {extra[:5]}, mis-shaped {bad[:5]}")
    persistent = gm.state_dict().keys()
    gm.load_state_dict({k: v for k, v in tensors.items() if k in persistent}, strict=True)
    with torch.no_grad():
        for name in own.keys() - persistent:
            own[name].copy_(tensors[name])
    gm.train(bool(doc.get("training", False)))
    result_of(gm).extra["loaded_from"] = str(path)
    return gm
