"""The torch.export frontend: ATen rules (each checked exact by verify and by the independent
value oracle), both outputs, keyword inputs, frontend selection, stale Python sizes caught
by running the module, and models symbolic tracing cannot enter."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from oracle import check_by_values, distinct_values

import fxprune
from fxprune.errors import TraceError


def _exact(model: nn.Module, inputs: tuple, **kw):
    """compress through export with both outputs; both checked by verify and the oracle."""
    model = distinct_values(model.eval())
    outs = {}
    for output in ("graph", "module"):
        out = fxprune.compress(model, inputs, ratio=0.5, frontend="export", output=output, **kw)
        report = fxprune.result_of(out).report
        assert report.verify.ok, report.summary()
        assert report.frontend == "export" and report.output == output
        if output == "module":
            assert type(out) is type(model) and report.module_verify.ok
        check_by_values(model, out, inputs)
        outs[output] = out
    return outs, fxprune.result_of(outs["module"]).report


class Blocks(nn.Module):
    """conv/bn/act, residual add, chunk + cat, split, slice, depthwise conv, pad, upsample,
    pooling, flatten -> linear: the ATen ops of CNN detectors in one model."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.SiLU())
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.cv1 = nn.Conv2d(16, 32, 1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.cv2 = nn.Conv2d(48, 24, 1)
        self.gn = nn.GroupNorm(4, 24)
        self.head = nn.Linear(24 * 4 * 4, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + F.relu(self.a(x))
        a, b = self.cv1(x).chunk(2, 1)
        y = [a, b, F.hardswish(self.dw(b))]
        x = self.cv2(torch.cat(y, 1))
        x = F.pad(self.gn(x), (1, 1, 1, 1))[:, :, 1:-1, 1:-1]
        x = F.interpolate(F.max_pool2d(x, 2), scale_factor=0.5, mode="nearest")
        return self.head(torch.flatten(x, 1))


def test_cnn_ops_exact_both_outputs():
    outs, report = _exact(Blocks(), (torch.randn(2, 3, 16, 16),))
    module = outs["module"]
    assert module.cv1.out_channels < 32 and module.cv1.out_channels % 2 == 0
    assert module.dw.groups == module.dw.in_channels == module.dw.out_channels < 16
    assert module.gn.num_groups < 4 and module.gn.num_channels == module.cv2.out_channels
    assert module.head.in_features == module.cv2.out_channels * 16
    assert any("dw.groups" in a for a in report.attributes)


class Attention(nn.Module):
    """embedding, layer_norm, linear -> view heads -> sdpa, matmul, softmax, select, index."""

    def __init__(self, vocab=50, dim=32, heads=4):
        super().__init__()
        self.heads = heads
        self.emb = nn.Embedding(vocab, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 64), nn.Linear(64, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids):
        x = self.emb(ids)
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(
            b, n, c))
        h = torch.softmax(self.fc1(self.norm(x)), -1)
        x = x + self.fc2(h)
        return x[:, 0] + x[:, torch.tensor([1, 2])].sum(1)


def test_attention_ops_exact():
    ids = torch.randint(0, 50, (2, 6))
    outs, report = _exact(Attention(), (ids,), exact_only=True)
    # the MLP hidden units are pruned (fc1 -> softmax over them freezes: kept whole)
    assert outs["module"].fc1.out_features == 64
    assert report.params_after <= report.params_before


class KwargModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x, *, gate=None, scale: float = 1.0):
        y = self.b(F.relu(self.a(x)))
        return {"out": y * gate * scale if gate is not None else y}


def test_keyword_inputs():
    x, gate = torch.randn(1, 3, 8, 8), torch.rand(1, 4, 1, 1)
    model = KwargModel().eval()
    out = fxprune.compress(model, (x,), example_kwargs={"gate": gate}, ratio=0.5)
    report = fxprune.result_of(out).report
    assert report.frontend == "export" and report.output == "module" and report.verify.ok
    assert out.a.out_channels == 4
    with torch.no_grad():
        y = out(x, gate=gate)["out"]
    assert y.shape == (1, 4, 8, 8)
    graph = fxprune.compress(model, (x,), example_kwargs={"gate": gate}, output="graph")
    with torch.no_grad():  # the graph takes the flattened inputs: x, then gate
        assert torch.allclose(graph(x, gate)["out"], y, atol=1e-6)


class Starred(nn.Module):
    """What symbolic trace cannot enter: ``*args`` iterated and ``list(x.chunk(...))``."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x, *args):
        parts = list(self.a(x).chunk(2, 1))
        for extra in args:
            parts[0] = parts[0] + extra
        return self.b(torch.cat(parts, 1))


def test_auto_picks_fx_when_it_traces_and_export_when_not():
    x = torch.randn(1, 3, 4, 4)
    traced = fxprune.compress(Blocks().eval(), torch.randn(1, 3, 16, 16))
    assert fxprune.result_of(traced).report.frontend == "fx"
    assert isinstance(traced, torch.fx.GraphModule)
    with pytest.raises(TraceError):
        fxprune.compress(Starred(), (x,), frontend="fx")
    out = fxprune.compress(Starred(), (x,))
    assert type(out) is Starred and fxprune.result_of(out).report.frontend == "export"
    assert out.a.out_channels == 4


class Cumulative(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.cumsum(self.a(x), 1)  # an ATen op with no rule: its channels stay
        return self.c(F.relu(self.b(y)))


def test_unknown_aten_op_freezes_its_channels():
    model = distinct_values(Cumulative().eval())
    x = torch.randn(1, 3, 4, 4)
    out = fxprune.compress(model, (x,), frontend="export", ratio=0.5)
    report = fxprune.result_of(out).report
    assert out.a.out_channels == 8 and out.b.out_channels == 4  # a frozen, b pruned
    assert any("cumsum" in f.message for f in report.frozen)
    check_by_values(model, out, (x,))


class DerivedWidth(nn.Module):
    """The forward computes a width from an attribute no graph size equals (``k * 4``): the
    module check catches it, those channels are kept, the rest is pruned."""

    def __init__(self):
        super().__init__()
        self.k = 2
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1)
        self.c, self.d = nn.Conv2d(8, 6, 1), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = self.b(F.relu(self.a(x)))
        y = y.view(y.shape[0], 2, self.k * 4 // 2, -1).flatten(1, 2).view(x.shape[0], 8, 4, 5)
        return self.d(F.relu(self.c(y)))


def test_stale_python_size_is_caught_and_kept():
    model = distinct_values(DerivedWidth().eval())
    x = torch.randn(1, 3, 4, 5)  # 5: no other split in the forward is sized 4 (see ops/shape)
    out = fxprune.compress(model, (x,), ratio=0.5, frontend="export")
    report = fxprune.result_of(out).report
    assert report.module_verify.ok
    assert report.fallbacks and "<root>" in report.fallbacks[0]
    assert out.b.out_channels == 8 and out.c.out_channels == 3  # b kept, c pruned
    check_by_values(model, out, (x,))


def test_caller_model_untouched_on_export_paths():
    model = DerivedWidth().eval()
    state = copy.deepcopy(model.state_dict())
    attrs = {n: dict(vars(m)) for n, m in model.named_modules()}
    fxprune.compress(model, (torch.randn(1, 3, 4, 5),), ratio=0.5, output="graph",
                     frontend="export")
    fxprune.compress(model, (torch.randn(1, 3, 4, 5),), ratio=0.5, frontend="export")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert {n: {k: v for k, v in vars(m).items() if k in attrs[n]}
            for n, m in model.named_modules()}.keys() == attrs.keys()
    assert model.k == 2 and model.b.out_channels == 8


def test_output_module_needs_export():
    with pytest.raises(fxprune.OptionError, match="export"):
        fxprune.compress(Blocks().eval(), torch.randn(1, 3, 16, 16), frontend="fx",
                         output="module")
    with pytest.raises(fxprune.OptionError):
        fxprune.compress(Blocks().eval(), torch.randn(1, 3, 16, 16), output="both")


class AuxInTraining(nn.Module):
    """An auxiliary head only the training forward reads (googlenet's aux1/aux2)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 2, 1)
        self.aux = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = F.relu(self.a(x))
        out = self.head(F.relu(self.b(y)))
        return (out, self.aux(y)) if self.training else out


def test_training_only_branch_is_reported_not_hidden():
    model = AuxInTraining().eval()
    out = fxprune.compress(model, (torch.randn(2, 3, 4, 4),), frontend="export")
    report = fxprune.result_of(out).report
    assert report.module_verify.ok and out.a.out_channels == 4
    assert out.aux.in_channels == 8  # unread by the captured forward: untouched
    assert any("training-mode forward fails in aux" in n for n in report.notes), report.notes
    with pytest.raises(RuntimeError):
        out.train()(torch.randn(2, 3, 4, 4))
