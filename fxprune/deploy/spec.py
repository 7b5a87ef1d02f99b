"""Where the CLI's models and calibration data come from.

SPEC is ``torchvision:NAME[?key=value&...]``, ``timm:NAME`` (when timm is installed),
``ultralytics:yolov8n.yaml`` (when ultralytics is installed) or ``path/to/file.py:factory``;
the factory returns a model or ``(model, example_inputs)``. Weights are never downloaded:
zoo models are built untrained unless a factory loads its own.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import FxPruneError
from ..util import as_inputs

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class SpecError(FxPruneError):
    """A model spec or a calibration path that cannot be used."""


def _kwargs(query: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in filter(None, query.split("&")):
        key, sep, value = part.partition("=")
        if not sep:
            raise SpecError(f"model option {part!r}: write key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def model_from_spec(spec: str) -> tuple[torch.nn.Module, tuple | None]:
    """(model in eval mode, example inputs the factory gave or None)."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise SpecError(f"model spec {spec!r}: use torchvision:NAME, timm:NAME, "
                        "ultralytics:NAME.yaml or path/to/file.py:factory")
    name, _, query = rest.partition("?")
    kwargs = _kwargs(query)
    if kind == "torchvision":
        import torchvision

        if name not in torchvision.models.list_models():
            raise SpecError(f"torchvision has no model {name!r} (see "
                            "torchvision.models.list_models())")
        try:
            return torchvision.models.get_model(name, weights=None, **kwargs).eval(), None
        except TypeError as exc:
            raise SpecError(f"{spec}: {exc}") from exc
    if kind == "timm":
        try:
            import timm
        except ImportError as exc:
            raise SpecError("timm:NAME needs timm installed (pip install timm)") from exc
        try:
            return timm.create_model(name, pretrained=False, **kwargs).eval(), None
        except (TypeError, RuntimeError) as exc:
            raise SpecError(f"{spec}: {exc}") from exc
    if kind == "ultralytics":
        return _ultralytics(name, kwargs), None
    if spec.endswith(".py") or ".py:" in spec:
        path_s, _, factory = spec.rpartition(":")
        return _from_file(Path(path_s), factory, kwargs)
    raise SpecError(f"model spec {spec!r}: unknown source {kind!r}")


def _ultralytics(yaml: str, kwargs: dict) -> torch.nn.Module:
    """A YOLO model built from its yaml (random init: nothing is downloaded); the task class
    comes from the yaml's name (``-seg``, ``-pose``, ``-obb``, ``-cls``)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    try:
        from ultralytics.nn import tasks
    except ImportError as exc:
        raise SpecError("ultralytics:NAME.yaml needs ultralytics installed "
                        "(pip install 'fxprune[yolo]')") from exc
    stem = Path(yaml).stem
    cls = next((c for suffix, c in (("-seg", "SegmentationModel"), ("-pose", "PoseModel"),
                                    ("-obb", "OBBModel"), ("-cls", "ClassificationModel"))
                if stem.endswith(suffix)), "DetectionModel")
    try:
        return getattr(tasks, cls)(yaml, verbose=False, **kwargs).eval()
    except (FileNotFoundError, KeyError, TypeError) as exc:
        raise SpecError(f"ultralytics:{yaml}: {exc}") from exc


def _from_file(path: Path, factory: str, kwargs: dict) -> tuple[torch.nn.Module, tuple | None]:
    factory = factory.partition("?")[0]
    if not path.is_file():
        raise SpecError(f"{path}: no such file")
    module_spec = importlib.util.spec_from_file_location(f"fxprune_user_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise SpecError(f"{path} has no callable {factory!r}")
    made = fn(**kwargs)
    model, inputs = (made if isinstance(made, tuple) else (made, None))
    if not isinstance(model, torch.nn.Module):
        raise SpecError(f"{path}:{factory} returned {type(model).__name__}, not a Module")
    return model.eval(), (as_inputs(inputs) if inputs is not None else None)


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s)
    except ValueError as exc:
        raise SpecError(f"input shape {text!r}: write e.g. 1,3,224,224") from exc
    if not shape or min(shape) < 1:
        raise SpecError(f"input shape {text!r}: every size must be >= 1")
    return shape


def load_calibration(path: str | Path, shape: tuple[int, ...], batch_size: int,
                     limit: int | None = None) -> list[torch.Tensor]:
    """Batches of ``shape[1:]`` samples from a ``.npy`` array (N, *shape[1:]) or a directory
    of ``.npy`` files and/or images (resized, scaled to [0, 1], ImageNet-normalised)."""
    root = Path(path)
    if root.is_file() and root.suffix == ".npy":
        data = torch.from_numpy(np.load(root, allow_pickle=False)).float()
    elif root.is_dir():
        data = torch.stack(_samples(root, shape, limit))
    else:
        raise SpecError(f"--calib {path}: give a .npy file or a directory of .npy/images")
    if tuple(data.shape[1:]) != tuple(shape[1:]):
        raise SpecError(f"--calib {path}: samples have shape {tuple(data.shape[1:])}, the "
                        f"model takes {tuple(shape[1:])}")
    if limit is not None:
        data = data[:limit]
    if not len(data):
        raise SpecError(f"--calib {path}: no samples")
    return list(data.split(batch_size))


def _samples(root: Path, shape: tuple[int, ...], limit: int | None) -> list[torch.Tensor]:
    files = sorted(p for p in root.iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES + (".npy",))
    if limit is not None:
        files = files[:limit]
    if not files:
        raise SpecError(f"--calib {root}: no .npy or image files")
    out = []
    for f in files:  # file loading, not a hot path: one sample per file
        if f.suffix == ".npy":
            out.append(torch.from_numpy(np.load(f, allow_pickle=False)).float())
        else:
            out.append(_image(f, shape))
    return out


def _image(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    from torchvision.io import ImageReadMode, read_image
    from torchvision.transforms.functional import normalize, resize

    if len(shape) != 4:
        raise SpecError("image calibration needs a 4-d input shape (N, C, H, W)")
    mode = ImageReadMode.RGB if shape[1] == 3 else ImageReadMode.GRAY
    img = resize(read_image(str(path), mode), list(shape[2:]), antialias=True).float() / 255
    return normalize(img, IMAGENET_MEAN, IMAGENET_STD) if shape[1] == 3 else img
