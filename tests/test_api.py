"""Public API behaviour: the caller's model untouched, names kept, dtypes, plans, options."""

import copy

import pytest
import torch
import torch.nn as nn
import torchvision
from conftest import prune_and_check

import fxprune


def small_resnet():
    return torchvision.models.resnet18(num_classes=10).eval()


X = torch.randn(1, 3, 32, 32)


def test_caller_model_unchanged_bit_for_bit():
    m = small_resnet()
    before = copy.deepcopy(m.state_dict())
    flags = {n: mod.training for n, mod in m.named_modules()}
    fxprune.compress(m, X)
    after = m.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert flags == {n: mod.training for n, mod in m.named_modules()}


def test_qualified_names_kept():
    m = small_resnet()
    gm = fxprune.compress(m, X)
    assert set(gm.state_dict()) == set(m.state_dict())
    assert gm.get_submodule("layer1.0.conv1").out_channels == 32


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5),
                                       (torch.bfloat16, None)])
def test_dtypes_kept(dtype, tol):
    m = small_resnet().to(dtype)
    gm = fxprune.compress(m, X.to(dtype))
    assert all(p.dtype == dtype for p in gm.parameters())
    assert gm(X.to(dtype)).dtype == dtype
    if tol is not None:
        r = fxprune.verify(gm, dtype=dtype)
        assert r.ok and r.max_abs_err <= tol * r.scale


def test_plan_json_round_trip_replays_on_fresh_instance():
    torch.manual_seed(1)
    m = small_resnet()
    gm = fxprune.compress(m, X, ratio=0.3)
    plan = gm.meta["fxprune"].plan
    again = fxprune.Plan.from_json(plan.to_json())
    assert again == plan
    fresh = small_resnet()
    fresh.load_state_dict(m.state_dict())
    gm2 = fxprune.compress(fresh, X, plan=again)
    assert torch.equal(gm(X), gm2(X))


def test_global_ranking_ignore_round_to_min_channels_ratios():
    m = small_resnet()
    gm = prune_and_check(m, X, global_ranking=True, ratio=0.4)
    assert sum(p.numel() for p in gm.parameters()) < sum(p.numel() for p in m.parameters())
    gm = prune_and_check(m, X, ignore=["layer1.*", nn.Linear], round_to=8)
    assert gm.get_submodule("layer1.0.conv1").out_channels == 64
    assert all(c.out_channels % 8 == 0 for c in gm.modules() if isinstance(c, nn.Conv2d))
    gm = prune_and_check(m, X, ratio=0.9, min_channels=16, ratios={"layer4.*": 0.0})
    assert gm.get_submodule("layer2.0.conv1").out_channels == 16
    assert gm.get_submodule("layer4.0.conv1").out_channels == 512


def test_importance_plugins():
    m = small_resnet()
    for name in ("l1", "l2", "random"):
        prune_and_check(m, X, importance=name)
    with pytest.raises(ValueError, match="unknown importance"):
        fxprune.compress(m, X, importance="nope")


def test_trace_error_names_the_fix():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            if x.sum() > 0:
                return self.a(x)
            return x

    with pytest.raises(fxprune.TraceError, match="leaf"):
        fxprune.compress(Dynamic(), X)


def test_concrete_args_and_leaf_modules():
    class Flag(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(8, 2, 1)

        def forward(self, x, double: bool = False):
            y = self.a(x)
            if double:
                y = y * 2
            return self.b(y)

    gm = fxprune.compress(Flag().eval(), X, concrete_args={"double": True})
    assert gm.a.out_channels == 4


def test_verification_error_on_a_wrong_rewrite(monkeypatch):
    from fxprune.ops import elementwise

    # Pretend x.flip(1) were elementwise: the oracle must catch the wrong model.
    monkeypatch.setitem(fxprune.ops.table.METHOD_RULES, "flip", elementwise.Unary())

    class Flip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.b(self.a(x).flip(1))

    with pytest.raises(fxprune.VerificationError):
        fxprune.compress(Flip().eval(), X)


def test_bad_ratio():
    with pytest.raises(fxprune.SelectionError):
        fxprune.compress(small_resnet(), X, ratio=1.5)


def test_pass_runs_in_a_pass_manager():
    from torch.fx.passes.infra.pass_manager import PassManager

    graph = fxprune.analyze(small_resnet(), X)
    removed = graph.groups[0].units[:4]
    pm = PassManager(passes=[fxprune.PruneChannels(graph, removed)])
    result = pm(graph.traced.gm)
    assert result.modified
    assert result.graph_module(X).shape == (1, 10)
