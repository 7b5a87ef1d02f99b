"""BatchNorm re-estimation (``recalibrate="bn"``): the pruned model's BN statistics become
those of its own activations on the calibration data, asserted against a direct measurement
with hooks, on fx graphs (BatchNorm modules) and on the export frontend's ATen batch norms
(graph and module output); verify still proves the rewrite; the caller's model is untouched."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.b, self.bn_b = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)
        self.bn_fc = nn.BatchNorm1d(5)

    def forward(self, x):
        y = F.relu(self.bn_a(self.a(x)))
        y = F.relu(self.bn_b(self.b(y)))
        return self.bn_fc(self.fc(y.mean((2, 3))))


def _wrong_stats():
    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():  # statistics no data has: a stale BN after pruning, exaggerated
        for bn in (m.bn_a, m.bn_b, m.bn_fc):
            bn.running_mean.uniform_(3.0, 5.0)
            bn.running_var.uniform_(20.0, 30.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return m


def _batches(n, size=8):
    return [torch.randn(size, 3, 8, 8, generator=torch.Generator().manual_seed(i))
            for i in range(n)]


def _bn_inputs(module, data):
    """Each BatchNorm's input over ``data``, in eval mode (hooks on the module itself)."""
    seen, hooks = {}, []
    for name, m in module.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, a, name=name: seen.setdefault(name, []).append(a[0].detach())))
    with torch.no_grad():
        for x in data:
            module.eval()(x)
    for h in hooks:
        h.remove()
    return {k: torch.cat(v) for k, v in seen.items()}


def _population(x):
    dims = [d for d in range(x.dim()) if d != 1]
    return x.double().mean(dims), x.double().var(dims, unbiased=True)


@pytest.mark.parametrize("frontend,output", [("fx", None), ("export", "module"),
                                             ("export", "graph")])
def test_statistics_are_those_of_the_pruned_models_own_activations(frontend, output):
    model = _wrong_stats()
    before = copy.deepcopy(model.state_dict())
    one = _batches(1, 32)  # one batch: batch statistics are the population's, at every depth
    pruned = fxprune.compress(model, one[0][:2], ratio=0.5, calibration=one, recalibrate="bn",
                              frontend=frontend, output=output)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    report = fxprune.result_of(pruned).report
    assert report.verify.ok and len(report.recalibration.layers) == 3
    # (the deviation from the original is reported, not asserted: that original's own
    # statistics are the wrong ones here)
    assert report.recalibration.deviation_before is not None
    stats = {k.rpartition(".")[0]: None for k in pruned.state_dict() if "running_mean" in k}
    sd = pruned.state_dict()
    if output == "graph":  # ATen graph: the BN inputs are measured on a module-output twin
        twin = fxprune.compress(model, one[0][:2], ratio=0.5, calibration=one,
                                recalibrate="bn", frontend="export")
        measured = _bn_inputs(twin, one)
        for name in measured:
            key = next(k for k in stats if k.replace(".", "_").endswith(name.replace(".", "_")))
            mean, var = _population(measured[name])
            assert torch.allclose(sd[f"{key}.running_mean"].double(), mean, atol=1e-5)
            assert torch.allclose(sd[f"{key}.running_var"].double(), var, atol=1e-5)
        return
    measured = _bn_inputs(pruned, one)
    assert set(measured) == {"bn_a", "bn_b", "bn_fc"}
    for name, x in measured.items():
        mean, var = _population(x)
        assert torch.allclose(sd[f"{name}.running_mean"].double(), mean, atol=1e-5), name
        assert torch.allclose(sd[f"{name}.running_var"].double(), var, atol=1e-5), name
    assert fxprune.verify(pruned).ok  # the statistics before recalibration, restored


def test_statistics_stream_over_batches():
    """Several batches: the first BN (whose input no BN precedes) gets the statistics of all
    samples at once, from streamed sums; a later one, what a training-mode pass sees."""
    model = _wrong_stats()
    data = _batches(5)
    pruned = fxprune.compress(model, data[0][:2], ratio=0.5, calibration=data,
                              recalibrate="bn")
    mean, var = _population(_bn_inputs(pruned, data)["bn_a"])
    assert torch.allclose(pruned.bn_a.running_mean.double(), mean, atol=1e-5)
    assert torch.allclose(pruned.bn_a.running_var.double(), var, atol=1e-5)
    assert fxprune.result_of(pruned).report.recalibration.batches == 5
    # it composes with compensation: both ran, and verify restores both
    both = fxprune.compress(model, data[0][:2], ratio=0.5, calibration=data, recalibrate="bn",
                            compensate="lstsq")
    rep = fxprune.result_of(both).report
    assert rep.compensation.sites and rep.recalibration.layers
    assert fxprune.verify(both).ok


def test_options_are_checked():
    model = _wrong_stats()
    with pytest.raises(fxprune.OptionError, match="calibration"):
        fxprune.compress(model, torch.randn(2, 3, 8, 8), recalibrate="bn")
    with pytest.raises(fxprune.OptionError, match="'bn'"):
        fxprune.compress(model, torch.randn(2, 3, 8, 8), recalibrate="all",
                         calibration=_batches(1))


class Functional(nn.Module):
    """F.batch_norm on the module's own buffers, eps as a keyword (fx: get_attr operands)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.weight, self.bias = nn.Parameter(torch.ones(8)), nn.Parameter(torch.zeros(8))
        self.register_buffer("mean", torch.full((8,), 4.0))
        self.register_buffer("var", torch.full((8,), 25.0))

    def forward(self, x):
        y = F.batch_norm(self.a(x), self.mean, self.var, self.weight, self.bias, False, 0.1,
                         eps=1e-3)
        return self.b(F.relu(y))


def test_functional_batch_norm_with_keyword_arguments():
    model = Functional().eval()
    data = _batches(1, 32)
    pruned = fxprune.compress(model, data[0][:2], ratio=0.5, calibration=data,
                              recalibrate="bn")
    assert len(fxprune.result_of(pruned).report.recalibration.layers) == 1
    with torch.no_grad():
        x = pruned.a(data[0])
    mean, var = _population(x)
    assert torch.allclose(pruned.mean.double(), mean, atol=1e-5)
    assert torch.allclose(pruned.var.double(), var, atol=1e-5)
    assert fxprune.verify(pruned).ok
