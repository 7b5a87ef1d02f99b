"""The torch.export frontend: ``torch.export.export(strict=False)`` runs the model's own
Python (so ``*args``, ``list(x.chunk(2, 1))``, data-independent control flow all work) and
gives an ATen-level GraphModule. Parameters keep the original module's qualified names and
every node carries its fake value, so specs come from metadata: no extra forward."""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from ..clone import owned_copy, shares_tensors
from ..errors import OptionError, TraceError
from ..util import eval_mode
from .base import TensorSpec, Traced, TraceOptions

NAME = "export"
log = logging.getLogger(__name__)


def capture(model: torch.nn.Module, inputs: tuple, options: TraceOptions) -> Traced:
    """Export ``model`` (in eval mode: BatchNorm reads its running statistics, dropout is
    off) on ``inputs`` plus ``options.example_kwargs``; the graph takes the flattened
    inputs positionally and returns the model's own output structure."""
    if options.leaf_modules or options.concrete_args:
        raise TraceError("leaf_modules and concrete_args are options of the fx frontend; "
                         "torch.export runs the model's Python itself")
    # always a copy of the modules, even with ``share``: a forward run by export may assign
    # attributes (ultralytics caches anchors on the head), and the caller's model is never
    # touched; the tensors are shared only when they are too large to hold twice
    shared = shares_tensors(model, options.copy_weights)
    source = owned_copy(model, share_tensors=shared)
    kwargs = dict(options.example_kwargs or {})
    try:
        with torch.no_grad(), eval_mode(source), warnings.catch_warnings(), _lazy():
            # a forward that caches tensors on itself (ultralytics' anchors) is warned about;
            # they become constants of this graph, which is what pruning needs
            warnings.filterwarnings("ignore", message=".*were assigned during export")
            program = torch.export.export(source, tuple(inputs), kwargs, strict=False)
            gm = program.module()
    except Exception as exc:  # noqa: BLE001 - turned into an actionable TraceError
        raise TraceError(
            f"torch.export could not capture {type(model).__name__}: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}. Data-dependent "
            "control flow (NMS, box decoding) cannot be exported; frontend='auto' then prunes "
            "the largest submodules that capture (regions).") from exc
    with _lazy():  # the graph is compiled when first run (verify), not here
        gm = _own_graph_module(gm, type(model).__name__)
        _register_constants(gm)
        flat = _flat_inputs(gm, inputs, kwargs)
    values = {n.name: _spec(n.meta.get("val")) for n in gm.graph.nodes if n.op != "output"}
    log.debug("exported %s: %d nodes", type(model).__name__, len(gm.graph.nodes))
    split = functools.partial(keyword_batch, tuple(inputs), kwargs) if kwargs else None
    traced = Traced(gm, values, flat, NAME, source=source,
                    call=(tuple(inputs), kwargs), split_batch=split)
    if shared:
        traced.mark_shared()
    return traced


def keyword_batch(args: tuple, kwargs: dict[str, Any], item: Any) -> tuple[tuple, Any]:
    """A calibration item for a model called with keywords, as the graph's flat inputs: a
    dict (a tokenizer's output) replaces the example's tensors by name, its non-tensor
    keywords (``use_cache=False``) stay; a lone tensor is the one tensor input."""
    tensors = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
    if isinstance(item, Mapping):
        extra = set(item) - set(kwargs)
        missing = [k for k in tensors if k not in item]
        if extra or missing or args:
            raise OptionError(
                f"calibration dicts must hold the example's keyword tensors {tensors} "
                f"(extra: {sorted(extra)}, missing: {missing})")
        merged = {k: item.get(k, v) for k, v in kwargs.items()}
    elif isinstance(item, torch.Tensor) and len(tensors) == 1 and not args:
        merged = {**kwargs, tensors[0]: item}
    else:
        raise OptionError(f"this model was captured with keywords {sorted(kwargs)}: pass "
                          f"calibration batches as dicts with {tensors}")
    flat, _ = pytree.tree_flatten((args, merged))
    return tuple(flat), None


@contextlib.contextmanager
def _lazy():
    """Faster capture: graph code generated once, on first use, instead of at each of
    export's recompiles; and no per-node Python stack traces (fxprune reads export's
    ``nn_module_stack``, not the traces), which cost a fifth of an export."""
    import torch.fx.config as fx_config

    try:
        from torch.fx._lazy_graph_module import _use_lazy_graph_module
    except ImportError:  # older torch: eager recompiles, same result
        _use_lazy_graph_module = None
    old = getattr(fx_config, "do_not_emit_stack_traces", False)
    fx_config.do_not_emit_stack_traces = True
    try:
        with _use_lazy_graph_module(True) if _use_lazy_graph_module else contextlib.nullcontext():
            yield
    finally:
        fx_config.do_not_emit_stack_traces = old


def _own_graph_module(unlifted: fx.GraphModule, name: str) -> fx.GraphModule:
    """A plain GraphModule over the unlifted graph. Dropped on the way: the ``_guards_fn``
    call that re-checks input shapes (pruning keeps them), the unlifted module's refusal to
    change mode and its input-check hooks, and the parameters the captured forward never
    reads (googlenet's auxiliary heads in eval): a tensor no op reads is no channel."""
    graph = unlifted.graph
    for node in list(graph.nodes):
        unused = not node.users
        if unused and (node.op == "get_attr" or (node.op == "call_module"
                                                 and "guards" in str(node.target))):
            graph.erase_node(node)
    gm = fx.GraphModule(unlifted, graph, name)
    for attr in ("_in_spec", "_out_spec"):  # read by the pytree codegen
        if hasattr(unlifted, attr):
            setattr(gm, attr, getattr(unlifted, attr))
    gm.meta.update(unlifted.meta)
    return gm


def _register_constants(gm: fx.GraphModule) -> None:
    """Tensor constants the graph reads (``model.stride``, anchors a forward assigned) are
    plain attributes of the unlifted module; as non-persistent buffers they are copied,
    sliced and counted like every other tensor."""
    for node in gm.graph.nodes:
        if node.op != "get_attr":
            continue
        owner_name, _, local = node.target.rpartition(".")
        owner = gm.get_submodule(owner_name) if owner_name else gm
        value = getattr(owner, local, None)
        if isinstance(value, torch.Tensor) and local not in owner._parameters and \
                local not in owner._buffers:
            delattr(owner, local)
            owner.register_buffer(local, value, persistent=False)


def _flat_inputs(gm: fx.GraphModule, inputs: tuple, kwargs: dict[str, Any]) -> tuple:
    """Make the graph take its placeholders positionally (what the pipeline's interpreters and
    verify pass); keyword inputs are flattened in the order export recorded them."""
    flat, _ = pytree.tree_flatten((tuple(inputs), kwargs))
    codegen = gm.graph._codegen
    info = getattr(codegen, "pytree_info", None)
    if info is not None and (kwargs or any(not isinstance(x, torch.Tensor) for x in inputs)):
        spec = pytree.tree_structure((tuple(flat), {}))
        names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
        gm.graph._codegen = type(codegen)(type(info)(names, spec, info.out_spec))
        gm._in_spec = spec
        gm.recompile()
    return tuple(flat)


def _spec(val: Any) -> Any:
    if isinstance(val, torch.Tensor):
        return TensorSpec(tuple(int(s) for s in val.shape), val.dtype)
    if isinstance(val, (list, tuple)):
        return type(val)(_spec(v) for v in val)
    if isinstance(val, torch.SymInt):
        return int(val) if val.node.has_hint() else None
    return val
