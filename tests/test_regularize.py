"""Training-time sparsity: group lasso, selective weight decay, feature flow, threshold."""

import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torchvision

import fxprune
from fxprune.regularize import FeatureFlow, GroupLasso, SelectiveWeightDecay


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn(self.conv1(x))))


class Res(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.Conv2d(8, 8, 3, padding=1)
        self.b2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.b1(x) + x)
        x = torch.relu(self.b2(x) + x)
        return self.head(x.mean((2, 3)))


def test_group_lasso_gradient_is_the_analytic_one():
    model = Small().eval()
    with torch.no_grad():
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.5, 0.5)
    lam = 0.3
    gl = GroupLasso(model, lam, example_inputs=torch.randn(1, 3, 8, 8))
    loss = gl()
    loss.backward()
    c1, bn, c2 = model.conv1, model.bn, model.conv2
    sq = (c1.weight.detach().flatten(1).pow(2).sum(1) + c1.bias.detach() ** 2
          + bn.weight.detach() ** 2 + bn.bias.detach() ** 2
          + c2.weight.detach().transpose(0, 1).flatten(1).pow(2).sum(1))
    n = sq.sqrt()  # unit i: conv1 row i, its bias, BN scale/shift i, conv2 column i
    assert float(loss.detach()) == pytest.approx(lam * float(n.sum()), rel=1e-6)
    torch.testing.assert_close(c1.weight.grad, lam * c1.weight.detach() / n[:, None, None, None])
    torch.testing.assert_close(c1.bias.grad, lam * c1.bias.detach() / n)
    torch.testing.assert_close(bn.weight.grad, lam * bn.weight.detach() / n)
    torch.testing.assert_close(c2.weight.grad, lam * c2.weight.detach() / n[None, :, None, None])
    assert c2.bias.grad is None or float(c2.bias.grad.abs().max()) == 0  # output: not a unit


def test_swd_schedule():
    swd = SelectiveWeightDecay(Small(), 0.5, example_inputs=torch.randn(1, 3, 8, 8),
                               total_steps=100, a_min=0.1, a_max=1e5)
    assert swd.a(0) == pytest.approx(0.1)
    assert swd.a(50) == pytest.approx((0.1 * 1e5) ** 0.5)
    assert swd.a(100) == pytest.approx(1e5)
    assert swd.a(250) == pytest.approx(1e5)  # clipped at the end of the ramp
    assert swd.a(25) == pytest.approx(0.1 * 1e6 ** 0.25)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet121"])
def test_swd_mask_meets_params_budget(name):
    model = torchvision.models.get_model(name, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    swd = SelectiveWeightDecay(model, 0.6, example_inputs=x, total_steps=10)
    keep = swd.update_mask()
    total = sum(p.numel() for p in model.parameters())
    kept = swd.cost(keep)
    assert abs(kept / total - 0.4) <= 0.01, kept / total
    # the cost model is the real parameter count of the model compress builds for that mask
    scores = np.zeros(len(swd.graph.labels))
    scores[swd.norms.units[keep]] = 1.0
    plan_imp = _Fixed(scores)
    gm = fxprune.compress(model, x, importance=plan_imp, threshold=0.5, verify=False,
                          min_channels=0)
    real = sum(p.numel() for p in gm.parameters())
    assert abs(real - kept) / total <= 0.01, (real, kept)


class _Fixed(fxprune.Importance):
    def __init__(self, scores):
        self.s = scores

    def scores(self, graph, calib=None):
        return self.s


def test_swd_penalty_decays_only_masked_units():
    model = Small().eval()
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([0.01, 1, 1, 0.02, 1, 1]))
    swd = SelectiveWeightDecay(model, 0.3, example_inputs=torch.randn(1, 3, 8, 8),
                               total_steps=10, mu=0.5)
    pen = swd()
    keep = swd.keep
    masked = swd.norms.units[~keep]
    assert masked.size >= 1 and swd.step == 1
    pen.backward()
    g = model.bn.weight.grad  # structured: BN scale and shift of masked units only
    lowest = set(np.argsort([0.01, 1, 1, 0.02, 1, 1])[:masked.size].tolist())
    assert {i for i in range(6) if g[i] != 0} == lowest
    expect = 0.5 * swd.a(0) * model.bn.weight.detach()  # d/dw mu a/2 w^2
    for i in lowest:
        assert float(g[i]) == pytest.approx(float(expect[i]), rel=1e-6)
    assert model.conv1.weight.grad is None


def test_feature_flow_penalty_matches_manual():
    model = Res().eval()
    x = torch.randn(4, 3, 6, 6)
    ffr = FeatureFlow(model, 0.5, 0.25, example_inputs=x[:1])
    assert ffr.nodes == ["relu_1", "relu_2"]  # the two residual block outputs
    out = ffr.model(x)
    pen = ffr()
    with torch.no_grad():
        s = torch.relu(model.stem(x))
        o1 = torch.relu(model.b1(s) + s)
        o2 = torch.relu(model.b2(o1) + o1)
        want = 0.5 * (o2 - o1).flatten(1).norm(dim=1).mean()
    torch.testing.assert_close(out, model(x))
    assert float(pen.detach()) == pytest.approx(float(want), rel=1e-6)
    ffr3 = FeatureFlow(model, 0.0, 1.0, example_inputs=x[:1], nodes=["relu", "relu_1", "relu_2"])
    ffr3.model(x)
    with torch.no_grad():
        curv = (o2 - 2 * o1 + s).flatten(1).norm(dim=1).mean()
    assert float(ffr3().detach()) == pytest.approx(float(curv), rel=1e-6)


def test_threshold_removes_exactly_the_zeroed_units():
    model = Small().eval()
    with torch.no_grad():
        for i in (1, 4):
            model.conv1.weight[i] = 0
            model.conv1.bias[i] = 0
            model.bn.weight[i] = 0
            model.bn.bias[i] = 0
            model.conv2.weight[:, i] = 0
    x = torch.randn(2, 3, 8, 8)
    gm = fxprune.compress(model, x, threshold=1e-8)
    assert gm.meta["fxprune"].plan.removed == {"conv1.weight[0]": [1, 4]}
    assert fxprune.verify(gm).ok
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-6, atol=1e-6)


def _regularised():
    """The same model, batch and three regularisers, in every process of the DDP test."""
    torch.manual_seed(0)
    model = Res().eval()
    x = torch.randn(4, 3, 6, 6)
    gl = GroupLasso(model, 0.1, example_inputs=x[:1])
    swd = SelectiveWeightDecay(model, 0.5, example_inputs=x[:1], total_steps=4,
                               granularity="structured_full")
    ffr = FeatureFlow(model, 0.3, 0.2, example_inputs=x[:1])
    return model, x, gl, swd, ffr


def _ddp_worker(rank, world, init, out_dir):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    model, x, gl, swd, ffr = _regularised()
    ddp = nn.parallel.DistributedDataParallel(ffr.model)  # the module that is trained
    local = x[rank * 2:(rank + 1) * 2]  # each rank sees half the batch
    out = ddp(local)
    loss = gl() + swd() + ffr() + 0 * out.sum()
    loss.backward()
    torch.save({"loss": loss.detach(), "grads": {n: p.grad for n, p in
                                                 model.named_parameters()}},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_regularisers_under_ddp_match_one_process():
    model, x, gl, swd, ffr = _regularised()
    ffr.model(x)  # the whole batch in one process
    loss = gl() + swd() + ffr()
    loss.backward()
    with tempfile.TemporaryDirectory() as d:
        init = "file://" + os.path.join(d, "rendezvous")
        mp.spawn(_ddp_worker, args=(2, init, d), nprocs=2, join=True)
        ranks = [torch.load(os.path.join(d, f"rank{r}.pt")) for r in range(2)]
    mean_loss = (ranks[0]["loss"] + ranks[1]["loss"]) / 2  # gl, swd equal; ffr halves average
    assert float(mean_loss) == pytest.approx(float(loss.detach()), rel=1e-5)
    for name, p in model.named_parameters():
        for r in ranks:  # DDP averaged the gradients: the single-process ones
            got = r["grads"][name]
            want = p.grad if p.grad is not None else torch.zeros_like(p)
            torch.testing.assert_close(got if got is not None else torch.zeros_like(p), want,
                                       rtol=1e-5, atol=1e-7)


def test_group_lasso_on_input_columns_only():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    gl = GroupLasso(model, 1.0, example_inputs=torch.randn(1, 6), inputs_only=True)
    loss = gl()
    want = model[0].weight.detach().norm(dim=0).sum()  # one unit per input column
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-6)
    loss.backward()
    assert model[0].bias.grad is None and model[2].weight.grad is None
    torch.testing.assert_close(model[0].weight.grad,
                               model[0].weight.detach() / model[0].weight.detach().norm(dim=0))


def test_swd_flops_budget_matches_the_flop_counter():
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    swd = SelectiveWeightDecay(model, 0.5, example_inputs=x, total_steps=10, budget="flops")
    keep = swd.update_mask()
    assert abs(swd.kept_fraction() - 0.5) <= 0.01
    scores = np.zeros(len(swd.graph.labels))
    scores[swd.norms.units[keep]] = 1.0
    gm = fxprune.compress(model, x, importance=_Fixed(scores), threshold=0.5, verify=False,
                          min_channels=0)
    real = fxprune.report.count_flops(gm, (x,)) / fxprune.report.count_flops(model, (x,))
    assert abs(real - 0.5) <= 0.02, real  # conv/linear MACs model vs the full FLOP counter
