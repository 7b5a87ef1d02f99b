import os

import pytest
import torch
from oracle import check_by_values, distinct_values

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # zoo models are built untrained, never downloaded

import fxprune


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def verified_on_fresh(gm, seed=123):
    """verify() on inputs compress never saw (same shapes and dtypes): unlike the report's own
    verdict - compress raises instead of returning a mismatch - this can fail."""
    inputs = gm.meta["fxprune"].report.models.inputs
    g = torch.Generator().manual_seed(seed)
    fresh = tuple(torch.randn(x.shape, generator=g).to(x.dtype)
                  if torch.is_tensor(x) and x.is_floating_point() else x for x in inputs)
    return fxprune.verify(gm, fresh)


def prune_and_check(model, x, **kw):
    """Compress, then check verify in float64 (1e-10 x output scale) and float32 (1e-5), and
    the independent value-provenance oracle (tests/oracle.py, float64, 1e-10) where it
    applies (no compensation, no approximate LayerNorm groups removed)."""
    model = distinct_values(model.eval(), only_repeated=True)
    gm = fxprune.compress(model, x, **kw)
    r64 = fxprune.verify(gm)
    assert r64.ok and r64.max_abs_err <= 1e-10 * r64.scale, r64
    r32 = fxprune.verify(gm, dtype=torch.float32)
    assert r32.ok and r32.max_abs_err <= 1e-5 * r32.scale, r32
    report = gm.meta["fxprune"].report
    if report.compensation is None and r64.approx_deviation is None:
        inputs = x if isinstance(x, tuple) else (x,)
        check_by_values(model, gm, inputs, report.models.pruned_inputs)
    return gm
