"""Wanda-sp and FLAP against a direct computation on a small layer; FLAP's bias compensation
on both frontends; calibration statistics reduced across torch.distributed ranks."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fxprune
from fxprune.importance import Calibration, get_importance


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(6, 10), nn.Linear(10, 4)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def _data(n_batches=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(5, 7, 6, generator=g) for _ in range(n_batches)]  # tokens: (B, S, D)


def _hidden_scores(model, name, data, frontend="fx"):
    graph = fxprune.analyze(model, data[0][:1], frontend=frontend)
    [group] = [g for g in graph.groups if g.name.startswith("up.weight")]
    scores = get_importance(name).scores(graph, Calibration(data))
    return scores[group.units]


@torch.no_grad()
def _reference(model, data):
    x = torch.cat([torch.relu(model.up(b)).reshape(-1, 10) for b in data]).double()
    w = model.down.weight.detach().double()
    wanda = x.norm(dim=0) * w.abs().sum(0)
    flap = x.var(dim=0, unbiased=False) * (w * w).sum(0)
    return wanda.numpy(), flap.numpy()


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_scores_match_a_direct_computation(frontend):
    torch.manual_seed(0)
    model = MLP().eval()
    data = _data()
    wanda, flap = _reference(model, data)
    with torch.no_grad():
        np.testing.assert_allclose(_hidden_scores(model, "wanda_sp", data, frontend), wanda,
                                   rtol=1e-9)
        np.testing.assert_allclose(_hidden_scores(model, "flap", data, frontend), flap,
                                   rtol=1e-9)


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_flap_bias_compensation_adds_the_removed_columns_mean(frontend):
    """b_new = b + W[:, R] mean(x_R), with mean over every calibration token; the structural
    rewrite itself is still verified exact before compensation."""
    torch.manual_seed(0)
    model = MLP().eval()
    data = _data()
    pruned = fxprune.compress(model, data[0][:1], ratio=0.5, importance="flap",
                              calibration=data, frontend=frontend, output="graph")
    result = fxprune.result_of(pruned)
    assert result.report.verify.ok and result.report.compensation.method == "mean"
    removed = np.asarray(result.plan.removed["up.weight[0]"])
    kept = np.setdiff1d(np.arange(10), removed)
    with torch.no_grad():
        x = torch.cat([torch.relu(model.up(b)).reshape(-1, 10) for b in data]).double()
    w = model.down.weight.detach().double()
    want = model.down.bias.detach().double() + w[:, removed] @ x[:, removed].mean(0)
    got = dict(pruned.named_parameters())["down.bias"].detach().double()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(dict(pruned.named_parameters())["down.weight"].detach(),
                               model.down.weight[:, kept].detach())


def test_mean_compensation_creates_a_bias_a_linear_call_did_not_have():
    """Export graphs call aten.linear with get_attr weights; a consumer without a bias gets
    one, and the graph reads it."""
    torch.manual_seed(0)
    model = MLP().eval()
    model.down = nn.Linear(10, 4, bias=False)
    data = _data()
    pruned = fxprune.compress(model, data[0][:1], ratio=0.5, importance="flap",
                              calibration=data, frontend="export")
    assert type(pruned) is MLP and pruned.down.bias is not None
    report = fxprune.result_of(pruned).report
    assert report.compensation.deviation_after < report.compensation.deviation_before
    x = data[0]
    with torch.no_grad():
        h = torch.relu(pruned.up(x))
        torch.testing.assert_close(pruned(x), h @ pruned.down.weight.T + pruned.down.bias)


# ---- distributed calibration -----------------------------------------------------------
def _scores_worker(rank, world, init, out_dir):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    model = MLP().eval()
    data = _data(4)[rank::world]  # each rank calibrates on half the batches
    out = {name: _hidden_scores(model, name, data) for name in ("wanda_sp", "flap", "cfdp",
                                                                 "qsfm")}
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_distributed_calibration_matches_one_process():
    torch.manual_seed(0)
    model = MLP().eval()
    data = _data(4)
    want = {name: _hidden_scores(model, name, data) for name in ("wanda_sp", "flap", "cfdp",
                                                                  "qsfm")}
    with tempfile.TemporaryDirectory() as d:
        init = "file://" + os.path.join(d, "rendezvous")
        mp.spawn(_scores_worker, args=(2, init, d), nprocs=2, join=True)
        ranks = [torch.load(os.path.join(d, f"rank{r}.pt"), weights_only=False)
                 for r in range(2)]
    for name, w in want.items():
        for r in ranks:
            np.testing.assert_allclose(r[name], w, rtol=1e-9, err_msg=name)
    # and half the data alone gives different scores (the reduction did something)
    half = _hidden_scores(model, "wanda_sp", data[0::2])
    assert not np.allclose(half, want["wanda_sp"])


def test_calibration_dicts_for_a_model_called_with_keywords():
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = MLP()

        def forward(self, tokens, scale=1.0):
            return self.mlp(tokens) * scale

    torch.manual_seed(0)
    model = Keyword().eval()
    data = _data()
    kw = {"tokens": data[0][:1]}
    pruned = fxprune.compress(model, (), example_kwargs=kw, ratio=0.5, importance="wanda_sp",
                              calibration=[{"tokens": b} for b in data])
    removed = fxprune.result_of(pruned).plan.removed
    [(key, units)] = [(k, v) for k, v in removed.items() if "up" in k]
    wanda, _ = _reference(model.mlp, data)
    assert sorted(units) == sorted(np.argsort(wanda)[:5].tolist())
    with pytest.raises(fxprune.FxPruneError, match="dicts"):
        fxprune.compress(model, (), example_kwargs=kw, importance="wanda_sp",
                         calibration=[(b, b) for b in data])
