"""Frontend: symbolic trace plus one recorded example run, so every node knows its value shape.

The rest of the pipeline only reads ``Traced``: a GraphModule and, per node, the example value
(a :class:`torch.Size`/shape for tensors, the Python value for sizes and ints). A second
frontend (torch.export) only has to produce the same object.
"""

from __future__ import annotations

import functools
import inspect
import logging
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from .errors import TraceError
from .lower import lower, lower_shaped
from .lower.transformer import TRACEABLE, traceable_forward

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass
class Traced:
    gm: fx.GraphModule
    values: dict[str, Any] = field(default_factory=dict)  # node name -> TensorSpec | python value
    example_inputs: tuple = ()

    @functools.cached_property
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer by qualified name (aliases included), looked up once:
        ``get_parameter`` walks the module path on every call."""
        out = dict(self.gm.named_buffers(remove_duplicate=False))
        out.update(self.gm.named_parameters(remove_duplicate=False))
        return out


class _Tracer(fx.Tracer):
    def __init__(self, leaf_types: tuple[type, ...], leaf_names: frozenset[str]):
        super().__init__()
        self._leaf_types = leaf_types
        self._leaf_names = leaf_names

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        if self._leaf_types and isinstance(m, self._leaf_types):
            return True
        if qualname in self._leaf_names:
            return True
        if type(m) in TRACEABLE:  # opened by call_module below unless it has masks
            return False
        return super().is_leaf_module(m, qualname)

    def call_module(self, m: torch.nn.Module, forward, args, kwargs):
        if type(m) in TRACEABLE and not self.is_user_leaf(m):
            replacement = traceable_forward(m, args, kwargs)
            if replacement is None:  # masks given: an opaque call, channels kept
                return self.create_proxy("call_module", self.path_of_module(m), args, kwargs)
            forward = replacement
        return super().call_module(m, forward, args, kwargs)

    def is_user_leaf(self, m: torch.nn.Module) -> bool:
        return bool(self._leaf_types and isinstance(m, self._leaf_types)) or \
            self.path_of_module(m) in self._leaf_names


def _spec(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return TensorSpec(tuple(value.shape), value.dtype)
    if isinstance(value, torch.Size):
        return value
    if isinstance(value, list):
        return [_spec(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_spec(v) for v in value)
    return value


class _Recorder(fx.Interpreter):
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
        self._values[n.name] = _spec(out)
        return out


def _describe_failure(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    user = [f for f in frames if "torch/fx" not in f.filename and "fxprune" not in f.filename]
    where = f"{user[-1].filename}:{user[-1].lineno} ({user[-1].line})" if user else "unknown"
    return where


def trace(
    model: torch.nn.Module,
    example_inputs: Sequence[Any] | torch.Tensor,
    *,
    leaf_modules: Iterable[type | str] = (),
    concrete_args: dict[str, Any] | None = None,
) -> Traced:
    """Trace ``model`` with torch.fx and record every node's example value.

    ``leaf_modules`` are module types or qualified names kept as opaque calls (their channels
    are frozen unless a rule knows the type); ``concrete_args`` are passed to the tracer.
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    leaf_types = tuple(x for x in leaf_modules if isinstance(x, type))
    leaf_names = frozenset(x for x in leaf_modules if isinstance(x, str))
    tracer = _Tracer(leaf_types, leaf_names)
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as exc:  # noqa: BLE001 - turned into an actionable TraceError
        where = _describe_failure(exc)
        raise TraceError(
            f"torch.fx could not trace {type(model).__name__}: {type(exc).__name__}: {exc}. "
            f"At {where}. Fixes to try: mark the module that contains this line as a leaf "
            "(leaf_modules=[ThatModule] - its channels are then kept), or pass concrete_args "
            "for arguments that drive Python control flow."
        ) from exc
    name = type(model).__name__
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    params = list(inspect.signature(model.forward).parameters)
    for node, pname in zip(placeholders, params):  # concrete args become defaults
        if concrete_args and pname in concrete_args:
            value = concrete_args[pname]
            if not isinstance(value, torch.Tensor):
                node.args = (value,)
    gm = lower(fx.GraphModule(tracer.root, graph, name))
    values: dict[str, Any] = {}
    modes = {m: m.training for m in gm.modules()}
    gm.eval()  # the modules are the caller's: eval keeps BN running stats untouched
    try:
        with torch.no_grad():
            _Recorder(gm, values).run(*example_inputs)
        if lower_shaped(gm, values):  # wrapped functions, re-emitted with recorded sizes
            values.clear()
            with torch.no_grad():
                _Recorder(gm, values).run(*example_inputs)
    finally:
        for m, mode in modes.items():
            m.training = mode
    log.debug("traced %s: %d nodes", name, len(gm.graph.nodes))
    return Traced(gm, values, example_inputs)
