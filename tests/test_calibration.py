"""Calibration engine, activation importances (CFDP, QSFM, HRank), baselines and compensation."""

import numpy as np
import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.calibrate import run_taps, tap_points
from fxprune.importance import CFDP, QSFM, get_importance
from fxprune.importance.activation import ImageMean
from fxprune.importance.cfdp import cfdp_scores
from fxprune.importance.qsfm import Similarity, elimination_order
from fxprune.passes.compensate import Moments


def _cfdp_reference(f: np.ndarray, alpha: float = 0.03) -> float:
    """The released metric, map by map, with SciPy (float64)."""
    from scipy import fftpack, ndimage

    h, w = f.shape
    if h < 2:
        m = ndimage.gaussian_filter(fftpack.dctn(f, norm="ortho"), sigma=10)
    else:
        m = np.zeros_like(f)
        for i in range(0, h - h % 2, 2):
            for j in range(0, w - w % 2, 2):
                tile = fftpack.dctn(f[i:i + 2, j:j + 2], norm="ortho")
                m[i:i + 2, j:j + 2] = ndimage.gaussian_filter(tile, sigma=10)
    s = (m > m.mean()).sum() / (h * w)
    return float(np.linalg.norm(m) * s + alpha * np.linalg.norm(f))


@pytest.mark.parametrize("size", [1, 7, 8, 14, 32])
def test_cfdp_matches_scipy_reference(size):
    g = torch.Generator().manual_seed(size)
    maps = torch.relu(torch.randn(2, 3, size, size, generator=g, dtype=torch.float64))
    maps[1, 0] = 0.7  # constant maps: the operator's tiny tilts decide "> mean"
    maps[1, 1] = -0.3
    got = cfdp_scores(maps).numpy()
    want = np.array([[_cfdp_reference(maps[n, c].numpy()) for c in range(3)] for n in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


def test_cfdp_constant_map_is_not_the_closed_form():
    """The reference counts about half of a constant map's entries above the mean (the
    closed form 'a/2' would count none): the exact 4x4 operator reproduces that."""
    s = cfdp_scores(torch.full((1, 1, 8, 8), 2.0, dtype=torch.float64), alpha=0.0)
    assert float(s) == pytest.approx(_cfdp_reference(np.full((8, 8), 2.0), alpha=0.0), rel=1e-9)
    assert float(s) > 0


class Twins(nn.Module):
    """conv1's channel 4+i is exactly 2x channel i (weights and bias), through ReLU."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 5, 3, padding=1)
        with torch.no_grad():
            self.conv1.weight[4:] = 2 * self.conv1.weight[:4]
            self.conv1.bias[4:] = 2 * self.conv1.bias[:4]

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)))


def _data(n=4, shape=(3, 12, 12), seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, *shape, generator=g) for _ in range(n)]


def test_qsfm_removes_one_of_each_planted_pair():
    model, data = Twins().eval(), _data()
    gm = fxprune.compress(model, data[0][:2], ratio=0.5, importance="qsfm", calibration=data)
    removed = gm.meta["fxprune"].plan.removed["conv1.weight[0]"]
    assert sorted(c % 4 for c in removed) == [0, 1, 2, 3]  # one of each (i, i + 4)
    assert gm.conv1.out_channels == 4


def test_qsfm_merge_recovers_the_original_output():
    model, data = Twins().eval(), _data()
    x = data[0]
    gm = fxprune.compress(model, x[:2], ratio=0.5, importance="qsfm_merge", calibration=data)
    assert gm.meta["fxprune"].report.compensation.sites == ["conv2"]
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)
    unmerged = fxprune.compress(model, x[:2], ratio=0.5, importance="qsfm", calibration=data)
    with torch.no_grad():
        assert float((unmerged(x) - model(x)).abs().max()) > 1e-2  # merging is what fixes it


def _random_convnet():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


def _rel_err(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("importance", ["l2", "cfdp"])
def test_lstsq_compensation_lowers_output_error(importance):
    model, data = _random_convnet(), _data(6)
    test = _data(2, seed=7)[0]
    kw = dict(ratio=0.4, importance=importance, calibration=data)
    plain = fxprune.compress(model, data[0][:2], **kw)
    comp = fxprune.compress(model, data[0][:2], compensate="lstsq", **kw)
    assert plain.meta["fxprune"].plan.removed == comp.meta["fxprune"].plan.removed
    with torch.no_grad():
        ref = model(test)
        e_plain, e_comp = _rel_err(plain(test), ref), _rel_err(comp(test), ref)
    assert e_comp < 0.5 * e_plain, (e_comp, e_plain)  # held-out batch; measured 0.23 (l2)
    res = fxprune.verify(comp)  # the rewrite is still proven exact, then the deviation shown
    assert res.ok and res.compensation_deviation is not None
    assert res.compensation_deviation < e_plain * 10


def test_accumulator_sizes_are_per_channel_or_pairwise():
    model, data = _random_convnet(), _data(3)
    graph = fxprune.analyze(model, data[0][:2])
    taps = tap_points(graph)
    stats = {}
    for t in taps:
        stats[t.key] = ImageMean(lambda x: x.reshape(x.shape[0], x.shape[1], -1).mean(2))
    stats_sim = {t.key: Similarity("cosine") for t in taps}
    stats_mom = {t.key: Moments() for t in taps}
    for s in (stats, stats_sim, stats_mom):
        assert run_taps(graph, s, data) == 3
    for t in taps:
        c = t.labels.size
        assert tuple(stats[t.key].total.shape) == (c,)
        assert tuple(stats_sim[t.key].total.shape) == (c, c)
        assert tuple(stats_mom[t.key].s1.shape) == (c,)
        assert tuple(stats_mom[t.key].s2.shape) == (c, c)
        spatial = 144 if len(graph.traced.values[t.node].shape) == 4 else 1  # 12x12 maps
        assert stats[t.key].count == 24 and stats_mom[t.key].count == 24 * spatial


def test_taps_follow_to_post_activation_and_post_add():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.conv2(y) + x)

    graph = fxprune.analyze(Block().eval(), torch.randn(1, 4, 8, 8))
    nodes = {t.node for t in tap_points(graph)}
    assert nodes == {"relu", "relu_1"}  # after bn1 + relu; after the residual add + relu
    assert {t.node for t in tap_points(graph, "producer")} == {"conv1", "conv2"}


def test_one_tap_per_depthwise_chain_unless_asked():
    """Expansion -> depthwise: the group is observed once, at the depthwise output its
    consumer reads; ``post_act_all`` keeps both taps."""
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8),
                          nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    graph = fxprune.analyze(model, torch.randn(1, 3, 8, 8))
    assert [t.node for t in tap_points(graph)] == ["_5", "_6"]
    assert [t.node for t in tap_points(graph, "post_act_all")] == ["_2", "_5", "_6"]
    with pytest.raises(ValueError, match="post_act_all"):
        tap_points(graph, "everywhere")


def test_residual_stream_observed_at_its_last_sum():
    class TwoBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.c1, self.c2 = (nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, padding=1),
                                           nn.Conv2d(4, 4, 3, padding=1))

        def forward(self, x):
            x = self.stem(x)
            x = torch.relu(self.c1(x) + x)
            return torch.relu(self.c2(x) + x)

    graph = fxprune.analyze(TwoBlocks().eval(), torch.randn(1, 3, 8, 8))
    assert [t.node for t in tap_points(graph)] == ["relu_1"]
    assert [t.node for t in tap_points(graph, "post_act_all")] == ["stem", "relu", "relu_1"]


def _greedy_reference(sim, energy):
    """Brute force: each step scans all kept pairs for the most similar one."""
    m = sim.shape[0]
    alive, rank = np.ones(m, dtype=bool), np.full(m, m - 1)
    for step in range(m - 1):
        idx = np.flatnonzero(alive)
        sub = sim[np.ix_(idx, idx)].astype(np.float64)
        np.fill_diagonal(sub, -np.inf)
        i, j = idx[np.array(np.unravel_index(sub.argmax(), sub.shape))]
        drop = i if (energy[i], i) <= (energy[j], j) else j
        alive[drop], rank[drop] = False, step
    return rank


@pytest.mark.parametrize("m", [2, 5, 17, 40])
def test_elimination_order_matches_brute_force(m):
    rng = np.random.default_rng(m)
    sim = np.corrcoef(rng.normal(size=(m, 30)))
    energy = rng.random(m)
    np.testing.assert_array_equal(elimination_order(sim, energy),
                                  _greedy_reference(sim, energy))


@pytest.mark.parametrize("shape", [(5, 8, 6, 6), (3, 70, 4, 4), (40, 96, 40, 40)])
def test_cosine_similarity_equals_per_image_mean(shape):
    """Blocked, side-by-side Gram (torch below 64 channels, numpy syrk above; the last
    shape spans several blocks) against the per-image definition in float64."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).relu()
    x[0, 1] = 0  # a dead map: its similarities are 0, not NaN
    stat = Similarity("cosine")
    stat.update(x[:2])
    stat.update(x[2:])
    sim, energy = stat.result()
    f = x.double().flatten(2)
    g = f / f.norm(dim=2, keepdim=True).clamp_min(1e-12)
    ref = (g @ g.transpose(1, 2)).mean(0)
    np.testing.assert_allclose(sim, ref.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(energy, (f * f).mean(2).mean(0).numpy(), rtol=1e-5)


def test_streaming_matches_one_batch_and_max_batches():
    model = _random_convnet()
    data = _data(4)
    graph = fxprune.analyze(model, data[0][:2])
    from fxprune.importance import Calibration

    streamed = CFDP().scores(graph, Calibration(data))
    whole = CFDP().scores(graph, Calibration([torch.cat(data)]))
    np.testing.assert_allclose(streamed, whole, rtol=1e-9)
    first = CFDP().scores(graph, Calibration(data, max_batches=1))
    np.testing.assert_allclose(first, CFDP().scores(graph, Calibration(data[:1])), rtol=1e-12)
    assert not np.allclose(first, streamed)


def test_qsfm_similarity_options_rank_twins_first():
    model, data = Twins().eval(), _data()
    for sim in ("ssim", "psnr"):
        gm = fxprune.compress(model, data[0][:2], ratio=0.5, importance=QSFM(sim),
                              calibration=data)
        removed = gm.meta["fxprune"].plan.removed["conv1.weight[0]"]
        assert sorted(c % 4 for c in removed) == [0, 1, 2, 3], sim


def test_caller_model_untouched_by_calibration_and_taylor():
    model = _random_convnet().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    data = [(x, torch.randint(0, 10, (8,))) for x in _data(2)]
    fxprune.compress(model, data[0][0][:2], importance="taylor", calibration=data,
                     loss_fn=nn.functional.cross_entropy, compensate="lstsq", verify=False)
    fxprune.compress(model, data[0][0][:2], importance="hrank", calibration=data, verify=False)
    assert model.training and all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_taylor_ranks_a_dead_channel_last():
    model = _random_convnet()
    with torch.no_grad():  # channel 3 of conv2 is cut off from the output: zero gradient
        model[6].weight[:, 3] = 0
    data = [(x, torch.randint(0, 10, (8,))) for x in _data(2)]
    graph = fxprune.analyze(model, data[0][0][:2])
    from fxprune.importance import Calibration

    calib = Calibration(data, loss_fn=nn.functional.cross_entropy)
    s = get_importance("taylor").scores(graph, calib)
    units = graph.labels[graph.params["3.weight"].axes[0].comp.ids]
    assert s[units[3]] < 1e-3 * np.delete(s[units], 3).min()


def test_bn_scale_follows_gamma():
    model = _random_convnet()
    with torch.no_grad():
        model[1].weight.copy_(torch.arange(1, 17, dtype=torch.float32))
    graph = fxprune.analyze(model, torch.randn(1, 3, 8, 8))
    s = get_importance("bn_scale").scores(graph)
    units = graph.labels[graph.params["0.weight"].axes[0].comp.ids]
    assert np.array_equal(np.argsort(s[units]), np.arange(16))


def test_data_importances_say_what_they_need():
    model = _random_convnet()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="calibration="):
        fxprune.compress(model, x, importance="cfdp")
    with pytest.raises(ValueError, match="loss_fn"):
        fxprune.compress(model, x, importance="taylor", calibration=[x])
    with pytest.raises(ValueError, match="calibration="):
        fxprune.compress(model, x, compensate="lstsq")
    with pytest.raises(ValueError, match="compensate="):
        fxprune.compress(model, x, compensate="magic", calibration=[x])


@pytest.mark.parametrize("method", ["lstsq", "mean"])
def test_a_consumer_whose_fit_is_not_finite_keeps_its_plain_pruning(method):
    """Calibration data with an overflow poisons the moments: every consumer is skipped and
    reported, and the model is the plain (verified) rewrite, with no NaN written."""
    model, data = _random_convnet(), _data(2)
    data = [d.clone() for d in data]
    data[0][0, 0, 0, 0] = float("inf")
    p = fxprune.compress(model, data[1][:2], ratio=0.4, calibration=data, compensate=method)
    comp = fxprune.result_of(p).report.compensation
    assert comp.skipped and not comp.sites
    assert {why for _, why in comp.skipped} == {"FloatingPointError: the fit is not finite"}
    plain = fxprune.compress(model, data[1][:2], ratio=0.4)
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in p.state_dict().items())
    assert fxprune.verify(p).ok
