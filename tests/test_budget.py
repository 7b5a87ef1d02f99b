"""FLOPs / params budgets (bisection on the global threshold) and iterative pruning."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from conftest import verified_on_fresh

import fxprune
from fxprune.cost import CostModel
from fxprune.options import SelectOptions
from fxprune.report import count_flops, count_params
from fxprune.select import select

ZOO = ["resnet18", "mobilenet_v2", "efficientnet_b0", "densenet121", "shufflenet_v2_x1_0"]


def _zoo(name):
    torch.manual_seed(0)
    return torchvision.models.get_model(name, num_classes=10).eval(), torch.randn(1, 3, 64, 64)


@pytest.mark.parametrize("name", ZOO)
def test_target_flops_half_lands_within_one_percent(name):
    model, x = _zoo(name)
    gm = fxprune.compress(model, x, target_flops=0.5)
    # measured afresh on the returned module, by torch.utils.flop_counter
    ratio = count_flops(gm, (x,)) / count_flops(model, (x,))
    assert abs(ratio / 0.5 - 1) <= 0.01, ratio
    assert gm.meta["fxprune"].report.budget.ratio > 0
    assert verified_on_fresh(gm).ok


def test_analytic_flops_equal_the_flop_counter_on_convnets():
    model, x = _zoo("mobilenet_v2")
    graph = fxprune.analyze(model, x)
    cost = CostModel(graph, budget="flops")
    n = len(graph.labels)
    assert 2 * cost(np.ones(n, dtype=bool)) == pytest.approx(count_flops(model, (x,)), rel=1e-12)
    plan = select(graph, fxprune.importance.get_importance("l1").scores(graph),
                  SelectOptions(ratio=0.4))
    keep = np.ones(n, dtype=bool)
    keep[plan.removed_units(graph)] = False
    gm = fxprune.compress(model, x, plan=plan)
    assert 2 * cost(keep) == pytest.approx(count_flops(gm, (x,)), rel=1e-12)


def test_target_params_as_fraction_and_absolute():
    model, x = _zoo("resnet18")
    dense = count_params(model)
    frac = fxprune.compress(model, x, target_params=0.3)
    assert abs(count_params(frac) / (0.3 * dense) - 1) <= 0.01
    absolute = fxprune.compress(model, x, target_params=2_000_000)
    assert abs(count_params(absolute) / 2_000_000 - 1) <= 0.01


def test_budget_errors_are_clear():
    model, x = _zoo("resnet18")
    with pytest.raises(ValueError, match="not both"):
        fxprune.compress(model, x, target_flops=0.5, target_params=0.5)
    with pytest.raises(ValueError, match="above the dense"):
        fxprune.compress(model, x, target_flops=1e15)
    with pytest.raises(ValueError, match="threshold"):
        fxprune.compress(model, x, target_flops=0.5, threshold=0.1)
    with pytest.raises(ValueError, match="> 0"):
        fxprune.compress(model, x, target_params=0)


def test_iterative_steps_reach_the_target_and_call_back_between_steps():
    model, x = _zoo("resnet18")
    seen = []

    def fine_tune(gm, step):  # stands in for a fine-tune: changes the weights in place
        seen.append((step, count_flops(gm, (x,))))
        with torch.no_grad():
            for p in gm.parameters():
                p.mul_(1.01)

    gm = fxprune.compress(model, x, target_flops=0.4, steps=3, callback=fine_tune)
    dense = count_flops(model, (x,))
    assert [s for s, _ in seen] == [1, 2]  # not after the last step
    fractions = [f / dense for _, f in seen]
    np.testing.assert_allclose(fractions, [0.4 ** (1 / 3), 0.4 ** (2 / 3)], rtol=0.01)
    assert abs(count_flops(gm, (x,)) / (0.4 * dense) - 1) <= 0.01
    assert len(gm.meta["fxprune"].history) == 3
    first = next(model.parameters())
    assert torch.equal(first, _zoo("resnet18")[0].conv1.weight)  # caller's model untouched


def test_iterative_ratio_keeps_the_same_fraction_each_step():
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    gm = fxprune.compress(model, torch.randn(2, 8), ratio=0.75, steps=2)
    assert gm.get_submodule("0").out_features == 16  # 64 -> 32 -> 16: half at each step
    hist = gm.meta["fxprune"].history
    assert [len(p.removed["0.weight[0]"]) for p in hist] == [32, 16]


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def test_budget_in_many_steps_on_a_coarse_model_reports_against_the_original():
    model, x = _tiny(), torch.randn(1, 3, 8, 8)
    dense = count_params(model)
    gm = fxprune.compress(model, x, target_params=0.9, steps=5)
    report = gm.meta["fxprune"].report
    assert report.params_before == dense and report.params_after == count_params(gm)
    assert report.budget.dense == dense and report.budget.target == pytest.approx(0.9 * dense)
    assert report.flops_before == count_flops(model, (x,))
    rows = {r.name: r for r in report.layers()}
    assert rows["0"].out_before == 8 and rows["0"].out_after == gm.get_submodule("0").out_channels


def test_unreachable_budget_is_an_error():
    model, x = _tiny(), torch.randn(1, 3, 8, 8)
    with pytest.raises(fxprune.SelectionError, match="cannot reach"):
        fxprune.compress(model, x, target_params=0.05, ignore=["0"])
