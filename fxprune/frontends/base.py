"""What every frontend produces and every later stage reads: a runnable GraphModule whose
nodes the rule table knows, each node's example value (shape and dtype for tensors, the
Python value for sizes), and the parameters and buffers by qualified name."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from ..errors import TraceError
from ..util import eval_mode


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass
class Traced:
    """The frontend-neutral capture of a model. ``values`` maps node name -> TensorSpec (or a
    list/tuple of them, or the Python value of a non-tensor node); ``frontend`` names the
    frontend that made it (recorded in reports and artifacts)."""

    gm: fx.GraphModule
    values: dict[str, Any] = field(default_factory=dict)
    example_inputs: tuple = ()
    frontend: str = "fx"
    source: torch.nn.Module | None = None  # the eager model the graph came from (export)
    call: tuple[tuple, dict[str, Any]] | None = None  # how that model is called: args, kwargs
    # a calibration item -> (flat graph inputs, target); None: tensors / (inputs..., target)
    split_batch: Callable[[Any], tuple[tuple, Any]] | None = None
    # tensors read from the caller's model, not copied: their versions when compress ended
    # (a later in-place edit there invalidates the original a post-hoc verify compares to)
    shared_versions: dict[str, int] | None = None

    def mark_shared(self) -> None:
        self.shared_versions = {q: t._version for q, t in self.tensors.items()}

    def changed_since_capture(self) -> list[str]:
        """Qualified names of shared tensors the caller changed in place since."""
        if not self.shared_versions:
            return []
        return [q for q, v in self.shared_versions.items() if self.tensors[q]._version != v]

    @functools.cached_property
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer by qualified name (aliases included), looked up once:
        ``get_parameter`` walks the module path on every call."""
        out = dict(self.gm.named_buffers(remove_duplicate=False))
        out.update(self.gm.named_parameters(remove_duplicate=False))
        return out

    @functools.cached_property
    def modules(self) -> dict[str, torch.nn.Module]:
        """Every submodule by qualified name (the targets of ``call_module`` nodes)."""
        return dict(self.gm.named_modules())


def spec_of(value: Any) -> Any:
    """A node's example value as recorded: tensors by shape and dtype, containers kept."""
    if isinstance(value, torch.Tensor):
        return TensorSpec(tuple(value.shape), value.dtype)
    if isinstance(value, torch.Size):
        return value
    if isinstance(value, list):
        return [spec_of(v) for v in value]
    if isinstance(value, tuple):
        return tuple(spec_of(v) for v in value)
    return value


class Recorder(fx.Interpreter):
    """Runs a GraphModule node by node, recording every value's spec; a failing node is named
    in a :class:`TraceError`."""

    def __init__(self, gm: fx.GraphModule, values: dict[str, Any]):
        super().__init__(gm)
        self._values = values

    def run_node(self, n: fx.Node) -> Any:
        try:
            out = super().run_node(n)
        except Exception as exc:  # noqa: BLE001 - re-raised with the node named
            where = n.meta.get("stack_trace", "").strip().splitlines()[-2:]
            raise TraceError(
                f"running the traced graph failed at node {n.name!r} ({n.op} {n.target}): "
                f"{exc}. Source: {' / '.join(w.strip() for w in where) or 'unknown'}. "
                "Check example_inputs (shape, dtype, device).", node=n.name
            ) from exc
        self._values[n.name] = spec_of(out)
        return out


def record(gm: fx.GraphModule, inputs: tuple) -> dict[str, Any]:
    """Every node's spec from one run in eval mode without grad (BN statistics untouched,
    each module's mode restored)."""
    values: dict[str, Any] = {}
    with torch.no_grad(), eval_mode(gm):
        Recorder(gm, values).run(*inputs)
    return values


@dataclass(frozen=True)
class TraceOptions:
    """How the model is captured. ``frontend`` names a module of :mod:`fxprune.frontends`
    ("auto": fx, else export); ``leaf_modules`` (types or qualified names) and
    ``concrete_args`` go to the fx tracer, ``example_kwargs`` (keyword inputs) to export.
    The graph owns a copy of the model's modules and tensors unless ``share`` (the
    regularisers train the caller's own parameters through it); ``copy_weights=False`` (or
    None on a model above 1 GiB) copies the modules but reads the caller's tensors."""

    frontend: str = "auto"
    leaf_modules: tuple[type | str, ...] = ()
    concrete_args: dict[str, Any] | None = None
    share: bool = False
    example_kwargs: dict[str, Any] | None = None
    copy_weights: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "leaf_modules", tuple(self.leaf_modules))
        bad = [x for x in self.leaf_modules if not isinstance(x, (type, str))]
        if bad:
            raise TraceError(f"leaf_modules takes module types or qualified names, got {bad!r}")
