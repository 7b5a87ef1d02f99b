"""The public entry points: ``compress`` (the whole pipeline) and ``analyze`` (its first two
stages, to look at the coupled groups). Both only turn keyword arguments into options."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx

from . import frontends
from .analyze.graph import ChannelGraph
from .errors import contained
from .frontends.base import Traced
from .importance.base import Calibration, Importance
from .options import (
    AttentionOptions,
    Budget,
    CompensationOptions,
    CompressOptions,
    InputOptions,
    SelectOptions,
    TraceOptions,
)
from .pipeline import build, run
from .plan import Plan
from .util import as_inputs


@contained("fxprune.trace")
def trace(model: torch.nn.Module, example_inputs: Sequence[Any] | torch.Tensor, *,
          leaf_modules: Iterable[type | str] = (), concrete_args: dict[str, Any] | None = None,
          frontend: str = "fx", share: bool = True) -> Traced:
    """Capture ``model`` as a graph with every node's example value (the first stage). With
    ``share`` (default) the graph runs the caller's own modules and parameters; ``compress``
    always captures a copy."""
    options = TraceOptions(frontend, tuple(leaf_modules), concrete_args, share)
    return frontends.get(frontend).capture(model, as_inputs(example_inputs), options)


@contained("fxprune.analyze")
def analyze(model: torch.nn.Module, example_inputs: Sequence[Any] | torch.Tensor, *,
            leaf_modules: Iterable[type | str] = (),
            concrete_args: dict[str, Any] | None = None,
            prune_inputs: bool = False, frontend: str = "fx") -> ChannelGraph:
    """Trace ``model`` and build its channel graph; ``print()`` it to see the groups. With
    the fx frontend the graph reads the caller's live parameters (what
    :mod:`fxprune.regularize` trains); ``frontend="export"`` or ``"auto"`` reach models
    symbolic tracing cannot enter (the graph then holds a copy)."""
    traced = trace(model, example_inputs, leaf_modules=leaf_modules, concrete_args=concrete_args,
                   frontend=frontend)
    return build(traced, prune_inputs=prune_inputs)


@contained("fxprune.compress")
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
    exact_only: bool | None = None,
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
    frontend: str = "auto",
    example_kwargs: Mapping[str, Any] | None = None,
    output: str | None = None,
    hf_config: str | None = None,
    copy_weights: bool | None = None,
    recalibrate: str | None = None,
) -> torch.nn.Module:
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
    mismatch. The Plan, the Report, the options and the channel graph are in
    ``gm.meta["fxprune"]``.

    Data-driven importances (``cfdp``, ``qsfm``, ``hrank``; ``taylor`` with ``loss_fn``) read
    ``calibration``: any iterable of batches (tensors, or ``(inputs..., target)`` tuples as a
    DataLoader yields), at most ``max_batches``, observed at ``tap`` ("post_act",
    "post_act_all" or "producer"; see ``calibrate.tap_points``). ``compensate="lstsq"`` or
    ``"merge"`` then refits the layers that read removed channels from the same data
    (``"none"`` turns off a plugin's default); verify still proves the uncompensated rewrite
    exact and the report gives the deviation. ``recalibrate="bn"`` re-estimates every
    BatchNorm's running statistics of the pruned model on ``calibration`` (adaptive BN: after
    compensation, verify restores the old ones to prove the rewrite). ``threshold`` replaces
    the ratios: every unit whose importance is below it goes (after training with
    :mod:`fxprune.regularize`, the units whose L2 norm fell to ~0). ``prune_inputs`` makes
    the inputs' feature axis (dim 1) prunable like any group: the pruned model takes only the
    kept features (``plan.inputs`` maps each input to the kept indices), or the full input
    with ``keep_input_signature=True``. Invalid or contradicting options raise before any work.

    Hugging Face models (see :mod:`fxprune.hf`) are captured with ``use_cache=False`` and
    keep their hidden size unless ``exact_only=False``; ``hf_config="uniform"`` keeps every
    layer's counts equal and rewrites ``model.config`` so that ``save_pretrained`` /
    ``from_pretrained`` round-trip the pruned model.

    fxprune works on a copy of ``model``; ``copy_weights=False`` copies its modules but reads
    its tensors (never writing them), which a model too large to hold twice needs; the
    default (None) does so above 1 GiB of tensors. A later :func:`fxprune.verify` then
    refuses once the caller has changed those tensors in place.
    """
    options = CompressOptions(
        trace=TraceOptions(frontend, tuple(leaf_modules), concrete_args,
                           example_kwargs=dict(example_kwargs) if example_kwargs else None,
                           copy_weights=copy_weights),
        select=SelectOptions(ratio=ratio, ratios=ratios or {}, ignore=tuple(ignore),
                             min_channels=min_channels, round_to=round_to,
                             global_ranking=global_ranking, exact_only=exact_only,
                             threshold=threshold, plan=plan),
        attention=AttentionOptions(prune_heads, prune_head_dims),
        budget=Budget.from_targets(target_flops, target_params),
        calibration=Calibration(calibration, max_batches, tap, loss_fn),
        compensation=CompensationOptions(compensate, ridge),
        inputs=InputOptions(prune_inputs, keep_input_signature),
        importance=importance, verify=verify, steps=steps, callback=callback, output=output,
        hf_config=hf_config, recalibrate=recalibrate)
    return run(model, example_inputs, options)
