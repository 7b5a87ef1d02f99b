"""The public pipeline: trace -> analyze -> score -> select -> rewrite -> verify."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from .analyze.graph import ChannelGraph, build
from .budget import Budget
from .budget import solve as solve_budget
from .errors import RewriteError, VerificationError
from .importance import Calibration, Importance, get_importance
from .ops.table import leaf_types
from .passes import PruneChannels
from .passes.compensate import METHODS
from .passes.compensate import compensate as run_compensation
from .passes.inputs import input_map, inputs_for
from .report import CompressResult, Report, count_cost, count_params
from .select import Plan, select
from .trace import trace
from .verify import check, compare

log = logging.getLogger(__name__)
MAX_REWRITE_RETRIES = 8


def analyze(model: torch.nn.Module, example_inputs: Sequence[Any] | torch.Tensor, *,
            leaf_modules: Iterable[type | str] = (),
            concrete_args: dict[str, Any] | None = None,
            prune_inputs: bool = False) -> ChannelGraph:
    """Trace ``model`` and build its channel graph; ``print()`` it to see the groups."""
    traced = trace(model, example_inputs, leaf_modules=tuple(leaf_modules) + leaf_types(),
                   concrete_args=concrete_args)
    return build(traced, prune_inputs=prune_inputs)


def compress(
    model: torch.nn.Module,
    example_inputs: Sequence[Any] | torch.Tensor,
    *,
    ratio: float = 0.5,
    target_flops: float | None = None,
    target_params: float | None = None,
    importance: str | Importance = "l2",
    ignore: Iterable = (),
    ratios: Mapping[str, float] | None = None,
    round_to: int = 1,
    min_channels: int = 1,
    global_ranking: bool | None = None,
    exact_only: bool = False,
    prune_heads: bool = True,
    prune_head_dims: bool = True,
    plan: Plan | None = None,
    verify: bool = True,
    leaf_modules: Iterable[type | str] = (),
    concrete_args: dict[str, Any] | None = None,
    calibration: Iterable | None = None,
    max_batches: int | None = None,
    tap: str = "post_act",
    loss_fn: Callable[[Any, Any], Any] | None = None,
    compensate: str | None = None,
    ridge: float = 1e-3,
    threshold: float | None = None,
    prune_inputs: bool = False,
    keep_input_signature: bool = False,
    steps: int = 1,
    callback: Callable[[fx.GraphModule, int], torch.nn.Module | None] | None = None,
) -> fx.GraphModule:
    """Return a new, smaller GraphModule; ``model`` is not modified.

    ``ratio`` is the fraction of each group's units removed (or of all units with
    ``global_ranking``). ``target_flops`` / ``target_params`` replace it with a budget: a
    fraction of the dense model (<= 1) or an absolute count (FLOPs as
    ``torch.utils.flop_counter`` counts them for the example inputs), met within 1 % by
    bisection on the global threshold (``global_ranking`` defaults to True with a budget).
    ``steps > 1`` prunes in that many steps towards the ratio or budget (geometric), calling
    ``callback(gm, step)`` after each but the last - e.g. a short fine-tune, in place or
    returning a new module. Groups normalised by LayerNorm are *approximate* (removing a
    channel changes the others' statistics): ``exact_only`` leaves them alone; otherwise the
    report gives their measured deviation. Attention heads (a projection reshaped to heads
    and paired by matmul/attention) lose whole heads (``prune_heads``) and head dims
    (``prune_head_dims``); with both, each takes 1 - sqrt(1 - ratio). ``plan`` replays a
    saved :class:`Plan` instead of selecting. With ``verify`` (default) the result is checked
    against the masked original in float64 and :class:`VerificationError` is raised on any
    mismatch. The Plan, the Report and the channel graph are in ``gm.meta["fxprune"]``.

    Data-driven importances (``cfdp``, ``qsfm``, ``hrank``; ``taylor`` with ``loss_fn``) read
    ``calibration``: any iterable of batches (tensors, or ``(inputs..., target)`` tuples as a
    DataLoader yields), at most ``max_batches``, observed at ``tap`` ("post_act",
    "post_act_all" or "producer"; see ``calibrate.tap_points``). ``compensate="lstsq"`` or
    ``"merge"`` then refits the layers that read removed channels from the same data
    (``"none"`` turns off a plugin's default); verify still proves the uncompensated rewrite
    exact and the report gives the deviation. ``threshold`` replaces the ratios: every unit
    whose importance is below it goes (after training with :mod:`fxprune.regularize`, the
    units whose L2 norm fell to ~0). ``prune_inputs`` makes the inputs' feature axis (dim 1)
    prunable like any group: the pruned model takes only the kept features (``plan.inputs``
    maps each input to the kept indices), or the full input with
    ``keep_input_signature=True``.
    """
    if steps > 1:
        options = dict(locals())
        for k in ("model", "example_inputs", "steps", "callback"):
            options.pop(k)
        from .iterative import compress_in_steps

        return compress_in_steps(model, example_inputs, steps=steps, callback=callback,
                                 **options)
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    leaf_modules = tuple(leaf_modules)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    traced = trace(model, example_inputs, leaf_modules=tuple(leaf_modules) + leaf_types(),
                   concrete_args=concrete_args)
    frozen_nodes: frozenset[str] = frozenset()
    user_plan = plan
    prune_inputs = prune_inputs or bool(plan is not None and plan.inputs)
    imp = get_importance(importance)
    calib = Calibration(calibration, max_batches, tap, loss_fn)
    method = compensate if compensate is not None else getattr(imp, "compensate", None)
    method = None if method in ("none", False) else method
    if method is not None and method not in METHODS:
        raise ValueError(f"compensate={method!r}: use one of {METHODS} or 'none'")
    if method is not None and calibration is None:
        raise ValueError(f"compensate={method!r} fits the consumers on activations: pass "
                         "calibration=<iterable of input batches>")
    budget = Budget.from_kwargs(target_flops, target_params)
    if budget is not None and (threshold is not None or ratios or plan is not None):
        raise ValueError("a FLOPs/params target sets the selection: do not also pass "
                         "threshold=, ratios= or plan=")
    select_kw = dict(ignore=ignore, ratios=ratios, min_channels=min_channels,
                     round_to=round_to, exact_only=exact_only, prune_heads=prune_heads,
                     prune_head_dims=prune_head_dims, threshold=threshold,
                     global_ranking=budget is not None if global_ranking is None
                     else global_ranking)
    budget_result = None
    for _attempt in range(MAX_REWRITE_RETRIES + 1):
        graph = build(traced, frozen_nodes, prune_inputs)
        times["analyze"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            if user_plan is None:
                scores = imp.scores(graph, calib)
                if budget is None:
                    plan = select(graph, scores, ratio=ratio, **select_kw)
                else:
                    dense, measure = _measure(graph, budget.kind, example_inputs)
                    plan, budget_result = solve_budget(graph, scores, budget, dense, measure,
                                                       **select_kw)
            removed = plan.removed_units(graph)
            times["select"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            gm = PruneChannels(graph, removed, keep_input_signature=keep_input_signature)(
                traced.gm).graph_module
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
    plan.inputs = {k: v.tolist() for k, v in input_map(graph, np.asarray(removed)).items()}
    pruned_inputs = inputs_for(gm, graph, np.asarray(removed), example_inputs)
    extra: dict[str, Any] = {}
    comp_report = None
    if method is not None:
        t0 = time.perf_counter()
        comp_report, extra["uncompensated"] = _compensate(
            gm, graph, np.asarray(removed), calibration, method, ridge, max_batches)
        times["compensate"] = time.perf_counter() - t0
    report = Report(
        params_before=count_params(graph.traced.gm), params_after=count_params(gm),
        groups=plan.groups, frozen=graph.frozen_reasons, notes=plan.notes, verify=result,
        timings=times, models=(graph.traced.gm, gm, example_inputs, pruned_inputs),
        compensation=comp_report, budget=budget_result)
    options = dict(leaf_modules=list(leaf_modules), concrete_args=concrete_args,
                   prune_inputs=prune_inputs, keep_input_signature=keep_input_signature)
    gm.meta["fxprune"] = CompressResult(plan, report, graph, np.asarray(removed), extra,
                                        options=options)
    return gm


def _measure(graph: ChannelGraph, kind: str, example_inputs: tuple):
    """(dense cost, plan -> cost of the model it gives): what a budget is checked against."""
    def cost(plan: Plan) -> float:
        removed = plan.removed_units(graph)
        gm = PruneChannels(graph, removed)(graph.traced.gm).graph_module
        return count_cost(gm, inputs_for(gm, graph, np.asarray(removed), example_inputs),
                          kind)

    return count_cost(graph.traced.gm, example_inputs, kind), cost


def _compensate(gm, graph, removed, data, method, ridge, max_batches):
    """Refit the consumers in place; the deviation from the unpruned model on the example
    inputs is measured before and after, so the report shows what compensation bought."""
    inputs = graph.traced.example_inputs
    mine = inputs_for(gm, graph, removed, inputs)
    before = compare(graph.traced.gm, gm, inputs, pruned_inputs=mine)
    report, uncompensated = run_compensation(gm, graph, removed, data, method=method,
                                             ridge=ridge, max_batches=max_batches)
    after = compare(graph.traced.gm, gm, inputs, pruned_inputs=mine)
    report.deviation_before = before.max_abs_err / before.scale
    report.deviation_after = after.max_abs_err / after.scale
    return report, uncompensated
