"""The torch.fx frontend: symbolic trace (with the lowering pre-passes) plus one recorded
example run, so every node knows its value shape."""

from __future__ import annotations

import inspect
import logging
import traceback

import torch
import torch.fx as fx

from ..clone import owned_copy, shares_tensors
from ..errors import TraceError
from ..lower import lower, lower_shaped
from ..lower.transformer import TRACEABLE, traceable_forward
from ..ops.table import leaf_types as rule_leaf_types
from .base import Traced, TraceOptions, record

NAME = "fx"
log = logging.getLogger(__name__)


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


def _describe_failure(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    user = [f for f in frames if "torch/fx" not in f.filename and "fxprune" not in f.filename]
    return f"{user[-1].filename}:{user[-1].lineno} ({user[-1].line})" if user else "unknown"


def capture(model: torch.nn.Module, inputs: tuple, options: TraceOptions) -> Traced:
    """Trace ``model`` with torch.fx and record every node's example value.

    ``options.leaf_modules`` are module types or qualified names kept as opaque calls (their
    channels are frozen unless a rule knows the type; the types the rule table handles whole
    are leaves too); ``options.concrete_args`` are passed to the tracer.
    """
    leaves = tuple(options.leaf_modules) + rule_leaf_types()
    leaf_types = tuple(x for x in leaves if isinstance(x, type))
    leaf_names = frozenset(x for x in leaves if isinstance(x, str))
    concrete_args = options.concrete_args
    shared = not options.share and shares_tensors(model, options.copy_weights)
    if not options.share:  # nothing fxprune runs or keeps may reach the caller's model
        model = owned_copy(model, share_tensors=shared)
    tracer = _Tracer(leaf_types, leaf_names)
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as exc:  # noqa: BLE001 - turned into an actionable TraceError
        raise TraceError(
            f"torch.fx could not trace {type(model).__name__}: {type(exc).__name__}: {exc}. "
            f"At {_describe_failure(exc)}. Fixes to try: mark the module that contains this "
            "line as a leaf (leaf_modules=[ThatModule] - its channels are then kept), or pass "
            "concrete_args for arguments that drive Python control flow."
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
    values = record(gm, inputs)
    if lower_shaped(gm, values):  # wrapped functions, re-emitted with recorded sizes
        values = record(gm, inputs)
    log.debug("traced %s: %d nodes", name, len(gm.graph.nodes))
    traced = Traced(gm, values, inputs, NAME)
    if shared:
        traced.mark_shared()
    return traced
