import pytest
import torch

import fxprune


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def prune_and_check(model, x, **kw):
    """Compress, then check the oracle in float64 (1e-10 x output scale) and float32 (1e-5)."""
    model = model.eval()
    gm = fxprune.compress(model, x, **kw)
    r64 = fxprune.verify(gm)
    assert r64.ok and r64.max_abs_err <= 1e-10 * r64.scale, r64
    r32 = fxprune.verify(gm, dtype=torch.float32)
    assert r32.ok and r32.max_abs_err <= 1e-5 * r32.scale, r32
    return gm
