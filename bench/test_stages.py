"""Stage micro-benchmarks (pytest-benchmark): trace, analyze, score, select, rewrite, verify.

    .venv/bin/python -m pytest bench/test_stages.py --benchmark-only -p no:cacheprovider

Not collected by `make test` (CI runs tests/ only).
"""

from __future__ import annotations

import pytest
import torch
import torchvision

import fxprune
from fxprune.importance import get_importance
from fxprune.passes import PruneChannels
from fxprune.pipeline import build
from fxprune.select import select
from fxprune.verify import check

pytest.importorskip("pytest_benchmark")


@pytest.fixture(scope="module", params=["resnet50", "densenet201"])
def stage_inputs(request):
    model = torchvision.models.get_model(request.param).eval()
    x = torch.randn(1, 3, 224, 224)
    traced = fxprune.trace(model, x)
    graph = build(traced)
    scores = get_importance("l2").scores(graph)
    plan = select(graph, scores)
    removed = plan.removed_units(graph)
    pruned = PruneChannels(graph, removed)(traced.gm).graph_module
    return model, x, traced, graph, scores, removed, pruned


def test_trace(benchmark, stage_inputs):
    model, x = stage_inputs[:2]
    benchmark(fxprune.trace, model, x)


def test_analyze(benchmark, stage_inputs):
    benchmark(build, stage_inputs[2])


def test_score(benchmark, stage_inputs):
    benchmark(get_importance("l2").scores, stage_inputs[3])


def test_select(benchmark, stage_inputs):
    benchmark(select, stage_inputs[3], stage_inputs[4])


def test_rewrite(benchmark, stage_inputs):
    _, _, traced, graph, _, removed, _ = stage_inputs
    benchmark(lambda: PruneChannels(graph, removed)(traced.gm))


def test_verify(benchmark, stage_inputs):
    _, x, _, graph, _, removed, pruned = stage_inputs
    benchmark(check, graph, removed, pruned, (x,))
