"""Input-feature pruning: exact removal of unused input features, the index map, and the
full-input signature option."""

import numpy as np
import torch
import torch.nn as nn

import fxprune
from fxprune.select import Plan


def _mlp_with_dead_inputs(dead=(0, 3, 5, 6, 9)):
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[0].weight[:, list(dead)] = 0
    return model, sorted(set(range(12)) - set(dead))


def test_zero_input_columns_are_pruned_exactly_with_the_index_map():
    model, kept = _mlp_with_dead_inputs()
    x = torch.randn(4, 12)
    gm = fxprune.compress(model, x, prune_inputs=True, threshold=1e-9)
    info = gm.meta["fxprune"]
    assert info.plan.inputs == {"input_1": kept}
    assert gm.get_submodule("0").in_features == len(kept)
    assert fxprune.verify(gm).ok
    with torch.no_grad():
        torch.testing.assert_close(gm(x[:, kept]), model(x), rtol=1e-6, atol=1e-6)


def test_keep_input_signature_accepts_the_full_input():
    model, kept = _mlp_with_dead_inputs()
    x = torch.randn(5, 12)
    gm = fxprune.compress(model, x, prune_inputs=True, threshold=1e-9,
                          keep_input_signature=True)
    assert gm.meta["fxprune"].plan.inputs == {"input_1": kept}
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-6, atol=1e-6)
    assert fxprune.verify(gm).ok


def test_input_channels_of_a_conv_net_and_plan_replay():
    model = nn.Sequential(nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Conv2d(6, 2, 1)).eval()
    x = torch.randn(2, 4, 8, 8)
    gm = fxprune.compress(model, x, prune_inputs=True, ratio=0.5)
    plan = gm.meta["fxprune"].plan
    kept = plan.inputs["input_1"]
    assert len(kept) == 2 and gm.get_submodule("0").in_channels == 2
    r = fxprune.verify(gm)
    assert r.ok and r.max_abs_err <= 1e-10 * r.scale
    again = fxprune.compress(model, x, plan=Plan.from_json(plan.to_json()))
    assert again.meta["fxprune"].plan.inputs == plan.inputs
    with torch.no_grad():
        torch.testing.assert_close(again(x[:, kept]), gm(x[:, kept]))


def test_inputs_stay_pinned_by_default():
    model, _ = _mlp_with_dead_inputs()
    gm = fxprune.compress(model, torch.randn(2, 12), threshold=1e-9)
    assert gm.meta["fxprune"].plan.inputs == {}
    assert gm.get_submodule("0").in_features == 12
    assert np.isfinite(gm.meta["fxprune"].report.flops_after)
