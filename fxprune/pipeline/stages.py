"""The stages, in order: capture -> analyze -> score -> select -> rewrite -> materialize ->
verify -> compensate -> recalibrate -> report. Each reads what earlier stages left in the
:class:`State` and adds its own; the runner calls them, times them and owns the retry
policy."""

from __future__ import annotations

import dataclasses
import glob
import logging

import numpy as np
import torch

from .. import frontends, hf, verify_blocks
from ..budget import solve as solve_budget
from ..errors import OptionError, RewriteError, VerificationError, first_line
from ..options import SelectOptions
from ..passes import module_output
from ..passes.compensate import compensate as refit_consumers
from ..passes.inputs import input_map, inputs_for
from ..passes.prune import PruneChannels
from ..passes.recalibrate import recalibrate_bn
from ..passes.sequential import refit as refit_sequentially
from ..plan import Plan
from ..report import CompressResult, Models, Report, count_cost, count_params, remember
from ..select import select as select_units
from ..verify import check, check_module, clone_as, compare
from .build import build
from .state import State

log = logging.getLogger(__name__)


def capture(state: State) -> None:
    opts = state.options.trace
    state.traced = frontends.get(opts.frontend).capture(state.model, state.inputs, opts)
    state.inputs = state.traced.example_inputs  # keyword inputs, flattened by export
    state.output = state.options.output or (
        "module" if state.traced.source is not None else "graph")
    if state.output == "module" and state.traced.source is None:
        raise OptionError("output='module' needs the export frontend (frontend='export' or "
                          "'auto' on a model torch.fx cannot trace); the fx frontend's graph "
                          "runs the model's modules already")


def analyze(state: State) -> None:
    att = state.options.attention
    state.graph = build(state.traced, state.frozen_nodes, state.options.inputs.prune_inputs,
                        state.frozen_elements, eager=state.output == "module",
                        table_dims=att.prune_head_dims and not att.prune_heads)


def score(state: State) -> None:
    """Scores once per call: a retry's new graph (more nodes frozen) gets the data-driven
    scores carried over unit by unit instead of a second calibration pass."""
    if state.options.select.plan is not None:
        return
    if state.scores is None or state.plugin.needs is None:
        state.scores = state.plugin.scores(state.graph, state.options.calibration)
    elif state.scored_on is not state.graph:
        state.scores = carry_scores(state.scored_on, state.graph, state.scores)
    state.scored_on = state.graph


def carry_scores(old, new, scores: np.ndarray) -> np.ndarray:
    """Scores of ``old``'s units on ``new``'s (same elements; freezing more nodes can only
    merge units): a merged unit scores the sum of its parts, as a tap would count it."""
    roots = np.flatnonzero(old.labels == np.arange(len(old.labels)))
    out = np.zeros(len(new.labels))
    np.add.at(out, new.labels[roots], scores[roots])
    return out


def select(state: State) -> None:
    opts, graph = state.options, state.graph
    chosen = _by_name(opts.select, state.model)
    if chosen.plan is not None:
        state.plan = dataclasses.replace(chosen.plan)
    elif opts.budget is None:
        state.plan = select_units(graph, state.scores, chosen, opts.attention)
    else:
        dense = count_cost(state.traced.gm, state.inputs, opts.budget.kind)
        state.plan, state.budget = solve_budget(graph, state.scores, opts.budget, dense,
                                                lambda plan: _cost_of(state, plan),
                                                chosen, opts.attention)
    state.removed = state.plan.removed_units(graph)


def _by_name(options: SelectOptions, model: torch.nn.Module) -> SelectOptions:
    """``ignore=[model.layer4]`` names a module of the caller's model; the graph holds a copy,
    so the module is ignored by its qualified name."""
    if not any(isinstance(item, torch.nn.Module) for item in options.ignore):
        return options
    names = {id(m): n for n, m in model.named_modules()}
    ignore = tuple(glob.escape(names[id(item)]) if isinstance(item, torch.nn.Module)
                   and id(item) in names else item for item in options.ignore)
    return dataclasses.replace(options, ignore=ignore)


def _cost_of(state: State, plan: Plan) -> float:
    """What a budget is checked against: the cost of the model the plan gives."""
    removed = plan.removed_units(state.graph)
    gm = PruneChannels(state.graph, removed)(state.traced.gm).graph_module
    return count_cost(gm, inputs_for(gm, state.graph, removed, state.inputs),
                      state.options.budget.kind)


def rewrite(state: State) -> None:
    keep_signature = state.options.inputs.keep_input_signature
    gm = PruneChannels(state.graph, state.removed, keep_input_signature=keep_signature)(
        state.traced.gm).graph_module
    gm.train(state.model.training)
    state.pruned = gm
    state.plan.inputs = {k: v.tolist() for k, v in input_map(state.graph, state.removed).items()}
    state.pruned_inputs = inputs_for(gm, state.graph, state.removed, state.inputs)


def materialize(state: State) -> None:
    """Module output: the caller's class with the pruned tensors and attributes, run against
    the masked original. What its Python disagreed on is kept whole and the graph redone."""
    if state.output != "module":
        return
    out = module_output.build(state.model, state.graph, state.removed, state.pruned)
    if out.missing:
        ids = np.concatenate([np.concatenate([ax.comp.ids.reshape(-1) for ax in
                                              state.graph.params[q].axes]) for q in out.missing])
        raise RewriteError(f"module output: no attribute of {type(state.model).__name__} holds "
                           f"{out.missing}; their channels are kept", elements=np.unique(ids))
    state.module_out = out
    if not state.options.verify:
        return
    if verify_blocks.too_big(state.model) and _verify_by_blocks(state, out):
        return
    result, failed, detail = None, None, ""
    for dtype in (torch.float64, torch.float32):  # float32: code that makes float32 tensors
        probe = clone_as(out.module, dtype)
        try:
            result = check_module(probe, state.graph, state.removed, state.pruned,
                                  state.traced.call, dtype)
            break
        except Exception as exc:  # noqa: BLE001 - the module that raised is named and frozen
            failed, detail = module_output.failing_module(exc, probe), f" ({first_line(exc)})"
    if result is not None and result.ok:
        state.module_verify = result
        state.module_notes = module_output.training_forward_note(out.module, state.model,
                                                                 state.traced.call)
        return
    nodes, why = module_output.suspects(out, failed, state.frozen_nodes)
    if not nodes - state.frozen_nodes:
        raise VerificationError(f"the pruned {type(state.model).__name__} does not match the "
                                f"masked original: {why}{detail}. Try output='graph'.")
    raise RewriteError(f"{why}{detail}; keeping those channels", nodes=frozenset(nodes))


def _verify_by_blocks(state: State, out) -> bool:
    """A model too big for float64 copies, checked decoder block by decoder block; False when
    that does not apply (then the whole model is checked)."""
    source = state.traced.source if state.traced.source is not None else state.model
    try:
        result = verify_blocks.check_blocks(source, out.module, state.graph, state.removed,
                                            state.traced.call)
    except Exception as exc:  # noqa: BLE001 - a block that cannot be rerun alone
        log.info("fxprune: block-wise verification not possible (%s)", first_line(exc))
        return False
    if result is None:
        return False
    if not result.ok:
        raise VerificationError(f"the pruned {type(state.model).__name__} differs from the "
                                f"masked original in one of its blocks ({result})")
    state.module_verify = result
    return True


def _write_config(state: State) -> None:
    """``hf_config``: the module's config and size attributes describe its pruned shapes."""
    if state.options.hf_config is None:
        return
    edit = hf.write_config(state.module_out.module, state.model)
    state.module_notes.append(f"config: {edit.values or 'unchanged'}"
                              + (f"; {len(edit.attributes)} attention attributes set"
                                 if edit.attributes else ""))


def verify(state: State) -> None:
    if not state.options.verify:
        return
    if state.module_verify is not None and state.module_verify.blocks:
        state.verify = state.module_verify  # the graph is as big: checked by blocks already
        return
    result, deviation = check(state.graph, state.removed, state.pruned, state.inputs)
    if deviation is not None:
        result.approx_deviation = deviation.max_abs_err / deviation.scale
    state.verify = result
    if not result.ok:
        raise VerificationError(
            f"fxprune produced a model that differs from the masked original ({result}). "
            "This is a bug in an op rule: please report it with the model. Workaround: "
            "ignore=[...] the layers involved.")


def compensate(state: State) -> None:
    """Refit the consumers in place; the deviation from the unpruned model on the example
    inputs is measured before and after, so the report shows what compensation bought."""
    opts = state.options
    method = opts.compensation.resolve(state.plugin)
    if method is None:
        return
    original, gm = state.traced.gm, state.pruned
    before = compare(original, gm, state.inputs, pruned_inputs=state.pruned_inputs)
    if method == "sequential":  # layer after layer on the pruned prefix's own inputs
        report, state.uncompensated = refit_sequentially(
            original, gm, state.graph, state.removed, opts.calibration.data,
            ridge=opts.compensation.ridge, max_batches=opts.calibration.max_batches,
            new_biases=opts.hf_config is None)
    else:
        report, state.uncompensated = refit_consumers(
            gm, state.graph, state.removed, opts.calibration.data, method=method,
            ridge=opts.compensation.ridge, max_batches=opts.calibration.max_batches)
    after = compare(original, gm, state.inputs, pruned_inputs=state.pruned_inputs)
    report.deviation_before = before.max_abs_err / before.scale
    report.deviation_after = after.max_abs_err / after.scale
    state.compensation = report


def recalibrate(state: State) -> None:
    """Re-estimate the pruned model's BatchNorm statistics on the calibration batches; the
    statistics before are kept beside compensation's tensors (verify restores both)."""
    opts = state.options
    if opts.recalibrate is None:
        return
    original, gm = state.traced.gm, state.pruned
    before = compare(original, gm, state.inputs, pruned_inputs=state.pruned_inputs)
    report, old = recalibrate_bn(gm, state.traced, opts.calibration.data,
                                 opts.calibration.max_batches)
    after = compare(original, gm, state.inputs, pruned_inputs=state.pruned_inputs)
    report.deviation_before = before.max_abs_err / before.scale
    report.deviation_after = after.max_abs_err / after.scale
    state.uncompensated = {**old, **(state.uncompensated or {})}  # compensation's come later
    state.recalibration = report


def report(state: State) -> None:
    graph, gm, plan = state.graph, state.pruned, state.plan
    out = state.module_out
    if out is not None:  # compensation refitted the graph's tensors: the module takes them
        module_output.assign_tensors(out.module, graph, gm)
        _write_config(state)
    extra = {"uncompensated": state.uncompensated} if state.uncompensated is not None else {}
    rep = Report(
        params_before=count_params(graph.traced.gm), params_after=count_params(gm),
        groups=plan.groups, frozen=graph.frozen_reasons, notes=plan.notes + state.module_notes,
        verify=state.verify,
        timings=state.timings, fallbacks=[str(f) for f in state.fallbacks],
        models=Models(graph.traced.gm, gm, state.inputs, state.pruned_inputs),
        compensation=state.compensation, recalibration=state.recalibration,
        budget=state.budget, output=state.output,
        frontend=state.traced.frontend, module_verify=state.module_verify,
        attributes=[str(e) for e in out.edits] if out is not None else [])
    result = CompressResult(plan, rep, graph, np.asarray(state.removed), extra,
                            options=state.options)
    gm.meta["fxprune"] = result
    state.result = gm
    if out is not None:
        out.module.train(state.model.training)
        remember(out.module, result)
        state.result = out.module
