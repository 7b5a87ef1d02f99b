"""The torchvision classification zoo: every model compresses at ratio 0.5 and verifies.

CI runs the list the core and attention issues name on small inputs; the rest is marked slow
(`make zoo-slow`, or `python bench/zoo_check.py`, one subprocess per model). LayerNorm groups
are approximate: their deviation is reported, the exact groups must verify exactly.
"""

import pytest
import torch
import torchvision
from conftest import verified_on_fresh
from oracle import check_by_values, distinct_values

import fxprune

CI_MODELS = [
    "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0",
    "densenet121", "googlenet", "inception_v3", "shufflenet_v2_x1_0", "squeezenet1_0",
    "regnet_y_400mf", "resnext50_32x4d", "mnasnet0_5", "convnext_tiny", "swin_t",
]
ALL = torchvision.models.list_models(module=torchvision.models)
SLOW = [n for n in ALL if n not in CI_MODELS]


def _size(name: str) -> int:
    if name.startswith(("vit_", "maxvit")):
        return 224  # fixed image size
    return 96 if name.startswith("inception") else 64


def _run(name: str):
    torch.manual_seed(0)
    kwargs = {"init_weights": False} if name in ("inception_v3", "googlenet") else {}
    model = torchvision.models.get_model(name, **kwargs).eval()
    with torch.no_grad():  # zero-initialised heads would make the output 0: a blind oracle
        for n, p in model.named_parameters():  # zero heads / 1e-6 layer scales: blind oracle
            if float(p.abs().max()) <= 1e-5:
                p.normal_(1.0, 0.1) if "scale" in n else p.normal_(0, 0.02)
    distinct_values(model, only_repeated=True)
    x = torch.randn(1, 3, _size(name), _size(name))
    gm = fxprune.compress(model, x, ratio=0.5)
    rep = gm.meta["fxprune"].report
    fresh = verified_on_fresh(gm)
    assert fresh.ok and fresh.max_abs_err <= 1e-10 * fresh.scale, fresh
    if rep.verify.approx_deviation is None:  # no LayerNorm group: the independent oracle too
        check_by_values(model, gm, (x,))
    assert rep.params_after < rep.params_before
    assert rep.flops_after < rep.flops_before
    assert gm(x).shape == (1, 1000)


@pytest.mark.parametrize("name", CI_MODELS)
def test_zoo_ci(name):
    _run(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_zoo_slow(name):
    _run(name)
