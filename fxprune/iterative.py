"""Iterative pruning: several compress steps towards one ratio or budget, with a callback
(a fine-tune) between them; the result reports against the ORIGINAL model."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.fx as fx

from .budget import Budget, BudgetResult
from .report import count_cost, count_params
from .select import Plan


def compress_in_steps(model: torch.nn.Module, example_inputs, *, steps: int,
                      callback: Callable[[fx.GraphModule, int], torch.nn.Module | None]
                      | None = None, **options) -> fx.GraphModule:
    """``steps`` calls of :func:`fxprune.compress`, each on the previous result. A ratio is
    split geometrically (every step keeps the same fraction); a budget is re-aimed after
    every step from the cost actually reached, so the steps shrink the model evenly and the
    last one lands on the target. ``gm.meta["fxprune"].history`` holds every step's plan
    (``fxprune.save`` stores them all); the report compares with the original model."""
    from .api import compress

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if options.get("plan") is not None or options.get("threshold") is not None:
        raise ValueError("steps > 1 works with ratio= or a target, not plan=/threshold=")
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) \
        else tuple(example_inputs)
    budget = Budget.from_kwargs(options.pop("target_flops"), options.pop("target_params"))
    keep = 1.0 - options.pop("ratio")
    if budget is not None:
        dense = count_cost(model, inputs, budget.kind)
        final = budget.absolute(dense)
    history: list[Plan] = []
    current, step_inputs, notes = model, inputs, []
    for step in range(1, steps + 1):
        kw = dict(options)
        if budget is not None:
            now = count_cost(current, step_inputs, budget.kind)
            kw[f"target_{budget.kind}"] = min(now, now * (final / now) ** (1 / (steps - step + 1)))
        else:
            kw["ratio"] = 1.0 - keep ** (1.0 / steps)
        gm = compress(current, step_inputs, **kw)
        meta = gm.meta["fxprune"]
        history.extend(meta.history)
        notes.extend(f"step {step}: {n}" for n in meta.plan.notes)
        step_inputs = meta.report.models[-1]
        current = (callback(gm, step) or gm) if step < steps and callback is not None else gm
    meta = gm.meta["fxprune"]
    last = meta.report
    report = dataclasses.replace(
        last, params_before=count_params(model), notes=notes,
        models=(model, gm, inputs, step_inputs),
        groups={k: {"before": history[0].groups.get(k, v)["before"], "after": v["after"]}
                for k, v in last.groups.items()})
    report.__dict__.pop("flops_before", None)  # cached properties: recount on the new models
    report.__dict__.pop("flops_after", None)
    if budget is not None:
        report.budget = BudgetResult(budget.kind, final, dense,
                                     count_cost(gm, step_inputs, budget.kind),
                                     last.budget.ratio if last.budget else 0.0)
    meta.report, meta.history = report, history
    return gm
