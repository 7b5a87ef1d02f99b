"""The public pipeline: trace -> analyze -> score -> select -> rewrite -> verify."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from .analyze.graph import ChannelGraph, build
from .errors import RewriteError, VerificationError
from .importance import Importance, get_importance
from .ops.table import leaf_types
from .passes import PruneChannels
from .report import CompressResult, Report, count_params
from .select import Plan, select
from .trace import trace
from .verify import check

log = logging.getLogger(__name__)
MAX_REWRITE_RETRIES = 8


def analyze(model: torch.nn.Module, example_inputs: Sequence[Any] | torch.Tensor, *,
            leaf_modules: Iterable[type | str] = (),
            concrete_args: dict[str, Any] | None = None) -> ChannelGraph:
    """Trace ``model`` and build its channel graph; ``print()`` it to see the groups."""
    traced = trace(model, example_inputs, leaf_modules=tuple(leaf_modules) + leaf_types(),
                   concrete_args=concrete_args)
    return build(traced)


def compress(
    model: torch.nn.Module,
    example_inputs: Sequence[Any] | torch.Tensor,
    *,
    ratio: float = 0.5,
    importance: str | Importance = "l2",
    ignore: Iterable = (),
    ratios: Mapping[str, float] | None = None,
    round_to: int = 1,
    min_channels: int = 1,
    global_ranking: bool = False,
    exact_only: bool = False,
    prune_heads: bool = True,
    prune_head_dims: bool = True,
    plan: Plan | None = None,
    verify: bool = True,
    leaf_modules: Iterable[type | str] = (),
    concrete_args: dict[str, Any] | None = None,
) -> fx.GraphModule:
    """Return a new, smaller GraphModule; ``model`` is not modified.

    ``ratio`` is the fraction of each group's units removed (or of all units with
    ``global_ranking``). Groups normalised by LayerNorm are *approximate* (removing a channel
    changes the others' statistics): ``exact_only`` leaves them alone; otherwise the report
    gives their measured deviation. Attention heads (a projection reshaped to heads and
    paired by matmul/attention) lose whole heads (``prune_heads``) and head dims
    (``prune_head_dims``); with both, each takes 1 - sqrt(1 - ratio). ``plan`` replays a
    saved :class:`Plan` instead of selecting. With ``verify`` (default) the result is checked
    against the masked original in float64 and :class:`VerificationError` is raised on any
    mismatch. The Plan, the Report and the channel
    graph are in ``gm.meta["fxprune"]``.
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    traced = trace(model, example_inputs, leaf_modules=tuple(leaf_modules) + leaf_types(),
                   concrete_args=concrete_args)
    frozen_nodes: frozenset[str] = frozenset()
    user_plan = plan
    for _attempt in range(MAX_REWRITE_RETRIES + 1):
        graph = build(traced, frozen_nodes)
        times["analyze"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if user_plan is None:
            scores = get_importance(importance).scores(graph)
            plan = select(graph, scores, ratio=ratio, ratios=ratios, ignore=ignore,
                          global_ranking=global_ranking, min_channels=min_channels,
                          round_to=round_to, exact_only=exact_only,
                          prune_heads=prune_heads, prune_head_dims=prune_head_dims)
        removed = plan.removed_units(graph)
        times["select"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            gm = PruneChannels(graph, removed)(traced.gm).graph_module
            break
        except RewriteError as exc:
            # A node whose sizes the rewrite cannot keep consistent (e.g. size arithmetic
            # with literals) keeps its channels; the report says so. Never a wrong model.
            if user_plan is not None or exc.node is None or exc.node in frozen_nodes:
                raise
            log.info("rewrite failed at %s (%s); keeping its channels", exc.node, exc)
            frozen_nodes = frozen_nodes | {exc.node}
            t0 = time.perf_counter()
    else:
        raise RewriteError(f"rewrite failed after freezing {sorted(frozen_nodes)}")
    gm.train(model.training)
    times["rewrite"] = time.perf_counter() - t0
    result = None
    if verify:
        t0 = time.perf_counter()
        result, deviation = check(graph, removed, gm, example_inputs)
        if deviation is not None:
            result.approx_deviation = deviation.max_abs_err / deviation.scale
        times["verify"] = time.perf_counter() - t0
        if not result.ok:
            raise VerificationError(
                f"fxprune produced a model that differs from the masked original ({result}). "
                "This is a bug in an op rule: please report it with the model. Workaround: "
                "ignore=[...] the layers involved.")
    report = Report(
        params_before=count_params(graph.traced.gm), params_after=count_params(gm),
        groups=plan.groups, frozen=graph.frozen_reasons, notes=plan.notes, verify=result,
        timings=times, models=(graph.traced.gm, gm, example_inputs))
    gm.meta["fxprune"] = CompressResult(plan, report, graph, np.asarray(removed))
    return gm
