"""Deploy toolchain: pickle-free artifacts, checked exports, model specs, report pictures."""

from .artifact import ArtifactError, apply_plan, load, save
from .export import (
    ExportCheck,
    ExportError,
    check_compile,
    export_all,
    export_onnx,
    export_pt2,
    fold_batchnorm,
)
from .spec import SpecError, model_from_spec

__all__ = ["ArtifactError", "ExportCheck", "ExportError", "SpecError", "apply_plan",
           "check_compile", "export_all", "export_onnx", "export_pt2", "fold_batchnorm", "load",
           "model_from_spec", "save"]
