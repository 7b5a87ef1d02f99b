"""Containment: only FxPruneErrors leave fxprune, each naming what failed; a failure inside
one rule keeps that rule's channels and the rest still prunes; the failures once seen on
hand-written shuffles, weight-standardised convs and timm attention blocks stay fixed."""

import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import prune_and_check, verified_on_fresh

import fxprune
from fxprune.analyze.elements import Category
from fxprune.ops import layers

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


class ShuffleUnit(nn.Module):
    """A ShuffleNet-v2 unit written by hand, as users write it."""

    def __init__(self, c: int):
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(
            nn.Conv2d(h, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU(),
            nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h),
            nn.Conv2d(h, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU())

    def forward(self, x):
        a, b = x.chunk(2, 1)
        x = torch.cat([a, self.branch(b)], 1)
        n, c, h, w = x.size()
        return x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleNetByHand(nn.Module):
    def __init__(self, c: int = 16, units: int = 1):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.units = nn.Sequential(*[ShuffleUnit(c) for _ in range(units)])
        self.head = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        return self.head(self.units(self.stem(x)))


@pytest.mark.parametrize("c,units,ratio", [(8, 1, 0.5), (16, 1, 0.3), (24, 2, 0.7)])
def test_hand_written_shuffle_unit_prunes_without_fallback(c, units, ratio):
    gm = prune_and_check(ShuffleNetByHand(c, units), X, ratio=ratio)
    report = gm.meta["fxprune"].report
    assert report.fallbacks == []
    assert gm.stem.out_channels < c  # the stream through the shuffles is pruned


class WSConv(nn.Conv2d):
    """timm-style weight standardisation: the weight goes through batch_norm over itself."""

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                         training=True, momentum=0.0, eps=1e-5).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class WSNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = WSConv(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 1)
        self.d = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.d(F.relu(self.c(F.relu(self.b(F.relu(self.a(x)))))))


def test_weight_standardised_conv_is_kept_and_the_rest_prunes():
    gm = prune_and_check(WSNet(), X, ratio=0.5)
    report = gm.meta["fxprune"].report
    assert (gm.a.out_channels, gm.c.out_channels) == (8, 4)  # b's channels kept, c pruned
    assert any("computed in the graph" in f.message for f in report.frozen)
    assert report.fallbacks == []


@pytest.mark.parametrize("name,kw", [
    ("cait_xxs24_224", dict(depth=2, img_size=32, patch_size=8)),  # class + talking heads
    ("coat_tiny", dict(img_size=32)),  # sizes computed as C // heads
])
def test_timm_attention_blocks_prune_the_rest(name, kw):
    import timm  # an optional zoo of the package, part of the dev extra

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kw).eval()
    x = torch.randn(1, 3, kw["img_size"], kw["img_size"])
    gm = fxprune.compress(model, x)
    report = gm.meta["fxprune"].report
    assert report.params_after < 0.8 * report.params_before
    assert verified_on_fresh(gm).ok


class ValueBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = self.a(x)
        if y.sum() > 0:  # control flow on a value: symbolic tracing cannot follow it
            y = y * 2
        return y


def test_value_dependent_branch_is_a_clear_trace_error():
    with pytest.raises(fxprune.TraceError) as info:
        fxprune.compress(ValueBranch(), X)
    text = str(info.value)
    assert "ValueBranch" in text and "if y.sum() > 0" in text and "leaf_modules" in text


class TwoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1)
        self.fc1, self.fc2 = nn.Linear(8, 6), nn.Linear(6, 2)

    def forward(self, x):
        y = F.relu(self.b(F.relu(self.a(x)))).mean((2, 3))
        return self.fc2(F.relu(self.fc1(y)))


def test_a_rule_that_fails_to_analyse_keeps_its_node_and_the_rest_prunes(monkeypatch):
    real = layers.Linear.analyze

    def broken(self, ctx, node):
        if node.target == "fc1":
            raise IndexError("a bug in the linear rule")
        return real(self, ctx, node)

    monkeypatch.setattr(layers.Linear, "analyze", broken)
    gm = fxprune.compress(TwoLinear().eval(), X, ratio=0.5)
    report = gm.meta["fxprune"].report
    assert any(f.node == "fc1" and f.category == Category.UNSUPPORTED
               and "rule linear failed (IndexError" in f.message for f in report.frozen)
    assert gm.a.out_channels == 4 and gm.fc1.out_features == 6  # a pruned, fc1's kept
    assert verified_on_fresh(gm).ok


def test_a_rule_that_fails_to_rewrite_is_frozen_reported_and_logged(monkeypatch, caplog):
    real = layers.Conv.rewrite

    def broken(self, rctx, node):
        if node.target == "b":
            raise KeyError("a bug in the conv rewrite")
        return real(self, rctx, node)

    monkeypatch.setattr(layers.Conv, "rewrite", broken)
    with caplog.at_level(logging.WARNING, logger="fxprune"):
        gm = fxprune.compress(TwoLinear().eval(), X, ratio=0.5)
    report = gm.meta["fxprune"].report
    assert len(report.fallbacks) == 1 and report.fallbacks[0].startswith("b (conv)")
    assert any("rewrite failed at b" in r.getMessage() for r in caplog.records)
    assert gm.b.out_channels == 8 and gm.fc1.out_features == 3  # b kept, the head pruned
    assert verified_on_fresh(gm).ok


class Exploding(fxprune.Importance):
    name = "exploding"

    def scores(self, graph, calib=None):
        raise ZeroDivisionError("plugin bug")


def test_a_failing_plugin_or_callback_is_named():
    with pytest.raises(fxprune.FxPruneError, match="importance 'exploding'.*ZeroDivision"):
        fxprune.compress(TwoLinear().eval(), X, importance=Exploding())

    def callback(gm, step):
        raise RuntimeError("fine-tune crashed")

    with pytest.raises(fxprune.FxPruneError, match="callback raised after step 1"):
        fxprune.compress(TwoLinear().eval(), X, ratio=0.5, steps=2, callback=callback)


def test_public_entry_points_raise_only_fxprune_errors(tmp_path):
    with pytest.raises(fxprune.OptionError):
        fxprune.verify(torch.fx.symbolic_trace(TwoLinear()))
    gm = fxprune.compress(TwoLinear().eval(), X, ratio=0.5)
    fxprune.save(gm, tmp_path / "a")

    def factory():
        raise OSError("weights not found")

    with pytest.raises(fxprune.FxPruneError, match="fxprune.load failed: OSError"):
        fxprune.load(tmp_path / "a", factory)
    with pytest.raises(fxprune.FxPruneError):
        fxprune.load(tmp_path / "a", WSNet)  # another model: the plan does not fit
    with pytest.raises(fxprune.FxPruneError):
        fxprune.analyze(TwoLinear(), "not a tensor")
