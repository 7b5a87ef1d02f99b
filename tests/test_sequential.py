"""Sequential reconstruction (``compensate="sequential"``): layers refitted in graph order on
the pruned prefix's own inputs. A linear chain whose hidden units have planted linear
redundancy is recovered to 1e-6; on a random conv net it beats per-consumer lstsq; the
moment accumulators have the documented size; verify still proves the rewrite; the caller's
model is untouched; it runs on the export frontend's graphs too."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune.passes import reconstruct, sequential


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 16), nn.Linear(16, 12), nn.Linear(12, 3)

    def forward(self, x):
        return self.c(self.b(self.a(x)))


def _planted_chain():
    """a's 16 outputs live in a 4-dim space (so do b's 12): any 8 (6) generic ones span it."""
    torch.manual_seed(0)
    m = Chain().eval()
    with torch.no_grad():
        mix = torch.randn(16, 4)
        m.a.weight.copy_(mix @ torch.randn(4, 6))
        m.a.bias.copy_(mix @ torch.randn(4))
        mix = torch.randn(12, 4)
        m.b.weight.copy_(mix @ torch.randn(4, 16))
        m.b.bias.copy_(mix @ torch.randn(4))
    return m


@pytest.mark.parametrize("fit", ["output", "channel map"])
def test_planted_linear_chain_is_recovered(fit, monkeypatch):
    """A linear's fit on its output is its channel map's (computed against its O' kept
    outputs when they are fewer than its C inputs): both recover the chain."""
    if fit == "channel map":
        monkeypatch.setattr(sequential, "output_fit_fits", lambda *a: False)
    m = _planted_chain().double()  # a float64 model: moments in float64, an exact target
    before = copy.deepcopy(m.state_dict())
    data = [torch.randn(64, 6, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
            for i in range(4)]
    pruned = fxprune.compress(m, data[0][:2], ratio=0.5, calibration=data,
                              compensate="sequential", ridge=0.0)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    assert pruned.a.out_features == 8 and pruned.b.out_features == 6
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    ref, out = m(x), pruned(x)
    assert (out - ref).abs().max() <= 1e-6 * ref.abs().max()
    report = fxprune.result_of(pruned).report
    assert report.compensation.sites == ["b", "c"]  # a reads the untouched input
    assert report.compensation.output_fits == (["b", "c"] if fit == "output" else [])
    assert report.compensation.deviation_after < 1e-6 < report.compensation.deviation_before
    # moments of one consumer at a time, the largest: b (16 -> 8 inputs, 12 -> 6 outputs)
    # or c (12 -> 6 inputs, 3 outputs): O' (K + 1) + (K + 1)^2 on the output side,
    # C (K + 1) + (K + 1)^2 for the channel map
    wide = (6, 3) if fit == "output" else (16, 12)
    assert report.compensation.accumulator_bytes == 8 * max(
        wide[0] * (8 + 1) + (8 + 1) ** 2, wide[1] * (6 + 1) + (6 + 1) ** 2)
    assert fxprune.verify(pruned).ok  # the uncompensated rewrite, restored, is exact


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.b, self.bn_b = nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.c = nn.Conv2d(24, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = F.relu(self.bn_a(self.a(x)))
        y = F.relu(self.bn_b(self.b(y)))
        y = F.relu(self.c(F.relu(self.dw(y))))
        return self.fc(y.mean((2, 3)))


def _smooth_images(n, seed):
    """Spatially correlated inputs (like images): channels are predictable from each other."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 12, 12, generator=g)
    return F.avg_pool2d(x, 3, 1, 1) + 0.3 * x.mean(1, keepdim=True)


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_beats_per_consumer_lstsq_on_a_conv_net(frontend):
    torch.manual_seed(0)
    m = ConvNet().eval()
    data = [_smooth_images(32, i) for i in range(4)]
    test = _smooth_images(64, 99)
    errors = {}
    for method in ("lstsq", "sequential"):
        p = fxprune.compress(m, data[0][:2], ratio=0.5, calibration=data, compensate=method,
                             frontend=frontend)
        assert fxprune.verify(p).ok
        with torch.no_grad():
            errors[method] = float((p(test) - m(test)).norm() / m(test).norm())
        if method == "sequential":  # b (3 x 3: patches), c and fc (fewer outputs than
            # inputs) on their output, from aten.conv2d / aten.linear calls too; dw its affine
            assert len(fxprune.result_of(p).report.compensation.output_fits) == 3
    none = fxprune.compress(m, data[0][:2], ratio=0.5, frontend=frontend)
    with torch.no_grad():
        errors["none"] = float((none(test) - m(test)).norm() / m(test).norm())
    assert errors["sequential"] < 0.8 * errors["lstsq"], errors
    if frontend == "fx":  # lstsq refits conv modules; the ATen graph's functional convs it
        assert errors["lstsq"] < 0.8 * errors["none"], errors  # leaves (sequential does not)


@pytest.mark.parametrize("hf_config", [None, "uniform"])
def test_llama_decoder_layers_are_refitted(hf_config, tmp_path):
    """On a Hugging Face Llama (export graph, ATen linear calls without biases): refitted
    layers reduce the deviation; with hf_config='uniform' no bias is created (the config has
    none for lm_head) and save_pretrained / from_pretrained round-trips the result."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=8,
                                   num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(3)
    calib = [{"input_ids": torch.randint(0, 96, (4, 12), generator=g)} for _ in range(3)]
    pruned = fxprune.compress(model, (), example_kwargs=calib[0], ratio=0.5,
                              importance="flap", calibration=calib, compensate="sequential",
                              hf_config=hf_config)
    comp = fxprune.result_of(pruned).report.compensation
    assert comp.sites and comp.deviation_after < 0.6 * comp.deviation_before
    assert fxprune.verify(pruned).ok
    has_bias = pruned.lm_head.bias is not None
    assert has_bias == (hf_config is None)
    if hf_config:
        pruned.save_pretrained(tmp_path)
        back = transformers.LlamaForCausalLM.from_pretrained(tmp_path)
        ids = calib[0]["input_ids"]
        with torch.no_grad():
            assert torch.allclose(back(ids).logits, pruned(ids).logits, atol=1e-6)


def test_a_refit_that_is_not_finite_is_not_written(monkeypatch):
    real = reconstruct.Moments.solve

    def overflow(*args, **kwargs):
        m, used = real(*args, **kwargs)
        return m * float("inf"), used

    monkeypatch.setattr(reconstruct.Moments, "solve", overflow)
    torch.manual_seed(0)
    m = ConvNet().eval()
    data = [_smooth_images(16, i) for i in range(2)]
    p = fxprune.compress(m, data[0][:2], ratio=0.5, calibration=data, compensate="sequential")
    comp = fxprune.result_of(p).report.compensation
    solved = [name for name, _ in comp.skipped]
    assert solved == ["b", "c", "fc"] and comp.sites == ["dw"]  # dw: its affine, no solve
    assert all(why == "FloatingPointError: the refit is not finite" for _, why in comp.skipped)
    plain = fxprune.compress(m, data[0][:2], ratio=0.5)
    for name in solved:
        assert torch.equal(getattr(p, name).weight, getattr(plain, name).weight)
    assert all(torch.isfinite(t).all() for t in p.state_dict().values())


def test_a_layer_whose_refit_fails_keeps_its_plain_pruning(monkeypatch):
    """A failure inside one layer's refit is contained to that layer: it is skipped (and
    reported), the others are refitted, and the model is still the verified rewrite there."""
    real = reconstruct.Moments.solve
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("planted failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(reconstruct.Moments, "solve", flaky)
    torch.manual_seed(0)
    m = ConvNet().eval()
    data = [_smooth_images(16, i) for i in range(2)]
    p = fxprune.compress(m, data[0][:2], ratio=0.5, calibration=data, compensate="sequential")
    comp = fxprune.result_of(p).report.compensation
    assert comp.skipped == [("b", "RuntimeError: planted failure")]
    assert "b" not in comp.sites and comp.sites
    plain = fxprune.compress(m, data[0][:2], ratio=0.5)
    assert torch.equal(p.b.weight, plain.b.weight)  # left as the plain rewrite made it
    assert fxprune.verify(p).ok


class Shifted(nn.Module):
    """a's channels 1 and 3 are channels 0 and 2 one row down, halved: only a fit that sees
    b's whole window (the output fit) can replace them; a per-pixel channel map cannot.
    (Exactly so on images whose first row is zero, as padding is above it.)"""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.b = nn.Conv2d(4, 2, 3, stride=2, padding=1, bias=False)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            w = torch.zeros(4, 1, 3, 3)
            w[0, 0, 1, 1] = 1.0
            w[1, 0, 2, 1] = 0.5  # a1(i, j) = a0(i + 1, j) / 2
            r = torch.randn(3, generator=g)
            w[2, 0, 1] = r  # one row, so a2 is zero one row past the border, as padding is
            w[3, 0, 2] = 0.5 * r  # a3(i, j) = a2(i + 1, j) / 2
            self.a.weight.copy_(w)
            v = torch.randn(2, 4, 3, 3, generator=g)
            v[:, [1, 3], 2] = 0.0  # b's taps on a1 / a3 are taps of a0 / a2 one row lower
            v[:, [1, 3]] *= 0.3
            self.b.weight.copy_(v)

    def forward(self, x):
        return self.b(self.a(x))


@pytest.mark.parametrize("subsampled", [True, False])
def test_output_fit_sees_the_window(subsampled, monkeypatch):
    if not subsampled:  # every output position (F.unfold) instead of gathered taps
        monkeypatch.setattr(reconstruct, "ROWS_PER_FEATURE", 10 ** 6)
    m = Shifted().double().eval()
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(8, 1, 10, 10, generator=g, dtype=torch.float64) for _ in range(5)]
    for x in data:
        x[:, :, 0] = 0.0
    test = data.pop()
    errors = {}
    for fit, limit in (("output", reconstruct.OUTPUT_FEATURES), ("channel map", 0)):
        monkeypatch.setattr(reconstruct, "OUTPUT_FEATURES", limit)
        p = fxprune.compress(m, data[0][:2], ratio=0.5, calibration=data,
                             compensate="sequential", ridge=0.0)
        assert torch.equal(p.a.weight, m.a.weight[[0, 2]])  # the shifted copies went
        with torch.no_grad():
            errors[fit] = float((p(test) - m(test)).norm() / m(test).norm())
        comp = fxprune.result_of(p).report.compensation
        assert comp.output_fits == (["b"] if fit == "output" else [])
        # b's output fit: (F + 1)^2 + O' (F + 1) for F = 2 kept channels x 9 taps, O' = 2;
        # its channel map: C (K + 1) + (K + 1)^2 for C = 4 inputs, K = 2 kept
        assert comp.accumulator_bytes == 8 * (
            (18 + 1) ** 2 + 2 * (18 + 1) if fit == "output" else 4 * (2 + 1) + (2 + 1) ** 2)
    assert errors["output"] < 1e-9 and errors["channel map"] > 0.05, errors


def test_gathered_taps_are_the_unfolded_patches():
    """The subsampled path gathers exactly F.unfold's columns (stride, padding, dilation)."""
    window = reconstruct.Window((3, 2), (2, 1), (2, 1), (2, 3))
    z = torch.randn(3, 4, 11, 9)
    full = F.unfold(z, window.kernel, window.dilation, window.padding, window.stride)
    assert reconstruct.output_rows(z, window) == 3 * full.shape[2]
    pick = torch.randperm(full.shape[2])[:7]
    as_columns = full[:, :, pick].transpose(0, 1).reshape(full.shape[1], -1)
    assert torch.equal(reconstruct._patches(z, window, pick), as_columns)
