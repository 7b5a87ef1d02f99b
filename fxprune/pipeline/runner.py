"""The runner: the stages in order, each timed, with the one recovery policy fxprune has. A
node whose sizes the rewrite cannot keep consistent (size arithmetic with literals, say) is
frozen and the graph re-analysed; scores carry over, so calibration runs once per call."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.fx as fx

from .. import hf
from ..errors import BUG_HINT, FxPruneError, RewriteError, StageError, TraceError, first_line
from ..options import CompressOptions
from ..util import as_inputs
from . import stages
from .regions import prune_regions
from .state import Fallback, State
from .steps import run_steps

log = logging.getLogger(__name__)
MAX_REWRITE_RETRIES = 8


def run(model: torch.nn.Module, example_inputs, options: CompressOptions) -> fx.GraphModule:
    """Prune ``model`` as ``options`` say; ``steps > 1`` runs the pipeline once per step."""
    options = hf.adapt(model, options)
    if options.steps > 1:
        return run_steps(model, as_inputs(example_inputs), options, once=run)
    state = State(model, as_inputs(example_inputs), options, options.plugin())
    try:
        _timed(state, "trace", stages.capture)
    except TraceError as exc:
        if options.trace.frontend != "auto":
            raise
        # neither frontend captures the whole model: prune the submodules that do
        return prune_regions(model, state.inputs, options, run, first_line(exc))
    _until_rewritten(state)
    for name, stage in (("verify", stages.verify), ("compensate", stages.compensate),
                        ("recalibrate", stages.recalibrate), ("report", stages.report)):
        _timed(state, name, stage)
    return state.result


def _until_rewritten(state: State) -> None:
    """analyze -> score -> select -> rewrite -> materialize, freezing what a rewrite (or the
    module output's own forward) failed at."""
    for _attempt in range(MAX_REWRITE_RETRIES + 1):
        _timed(state, "analyze", stages.analyze)
        _timed(state, "score", stages.score)
        try:
            _timed(state, "select", stages.select)
            _timed(state, "rewrite", stages.rewrite)
            _timed(state, "materialize", stages.materialize)
            return
        except RewriteError as exc:
            # never a wrong model: what failed keeps its channels and the report says so
            if state.options.select.plan is not None or not _keep_whole(state, exc):
                raise
    raise RewriteError(f"rewrite failed after freezing {sorted(state.frozen_nodes)}")


def _keep_whole(state: State, exc: RewriteError) -> bool:
    """Freeze what a rewrite failure names (reshaped dims, else its node) for the next try;
    False when that is frozen already (no progress: the error stands)."""
    rule = state.graph.rules.get(exc.node) if exc.node else None
    fallback = Fallback(exc.node, rule.name if rule is not None else None, str(exc))
    if exc.elements is not None:
        old = state.frozen_elements
        new = np.unique(exc.elements if old is None else np.concatenate([old, exc.elements]))
        if old is not None and new.size == old.size:
            return False
        state.frozen_elements = new
    elif exc.nodes:
        if exc.nodes <= state.frozen_nodes:
            return False
        state.frozen_nodes = state.frozen_nodes | exc.nodes
    elif exc.node is None or exc.node in state.frozen_nodes:
        return False
    else:
        state.frozen_nodes = state.frozen_nodes | {exc.node}
    log.warning("fxprune: the rewrite failed at %s; keeping those channels and retrying",
                fallback)
    state.fallbacks.append(fallback)
    return True


def _timed(state: State, name: str, stage: Callable[[State], None]) -> None:
    t0 = time.perf_counter()
    try:
        stage(state)
    except FxPruneError:
        raise
    except Exception as exc:  # noqa: BLE001 - contained: one error type leaves fxprune
        what = f"the {name} stage" + (f" (importance {state.plugin.name!r})"
                                      if name == "score" else "")
        raise StageError(f"{what} failed: {first_line(exc)}. {BUG_HINT}", name) from exc
    finally:
        state.timings[name] = state.timings.get(name, 0.0) + time.perf_counter() - t0
