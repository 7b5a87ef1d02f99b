"""nn.TransformerEncoderLayer / nn.TransformerEncoder are traced through (not leaves), so
their heads and feed-forward units prune like any other structure."""

import pytest
import torch
import torch.nn as nn
from conftest import verified_on_fresh

import fxprune


class Encoder(nn.Module):
    def __init__(self, norm_first=False, activation="relu", batch_first=True, masked=False):
        super().__init__()
        torch.manual_seed(0)
        self.batch_first, self.masked = batch_first, masked
        self.emb = nn.Linear(10, 32)
        layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.1,
                                           activation=activation, norm_first=norm_first,
                                           batch_first=batch_first)
        self.enc = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(32),
                                         enable_nested_tensor=False)
        self.head = nn.Linear(32, 3)
        self.register_buffer("mask", torch.zeros(7, 7))

    def forward(self, x):
        h = self.emb(x if self.batch_first else x.transpose(0, 1))
        if self.masked:
            h = self.enc(h, mask=self.mask)
        else:
            h = self.enc(h)
        return self.head(h.mean(1 if self.batch_first else 0))


@pytest.mark.parametrize("norm_first,activation,batch_first", [
    (False, "relu", True), (True, "gelu", True), (False, "gelu", False)])
def test_encoder_heads_and_ffn_are_pruned_exactly(norm_first, activation, batch_first):
    model = Encoder(norm_first, activation, batch_first).eval()
    x = torch.randn(2, 7, 10)
    graph = fxprune.analyze(model, x)
    with torch.no_grad():  # torch's fast path vs the traced reference path: float32 noise
        torch.testing.assert_close(graph.traced.gm(x), model(x), rtol=1e-5, atol=1e-5)
    gm = fxprune.compress(model, x, ratio=0.5, exact_only=True)
    assert verified_on_fresh(gm).ok
    for i in range(2):
        assert gm.get_submodule(f"enc.layers.{i}.linear1").out_features == 32  # 64 -> 32
        assert gm.get_submodule(f"enc.layers.{i}.linear2").in_features == 32
    heads = sum(1 for n in gm.graph.nodes if "scaled_dot_product_attention" in str(n.target))
    assert heads == 2  # both attentions were opened into heads, not left as leaves
    params = fxprune.report.count_params
    assert params(gm) < 0.75 * params(model)


def test_a_masked_call_stays_a_leaf_and_keeps_its_channels():
    model = Encoder(masked=True).eval()
    x = torch.randn(2, 7, 10)
    graph = fxprune.analyze(model, x)
    assert any(n.op == "call_module" and n.target == "enc" for n in graph.traced.gm.graph.nodes)
    gm = fxprune.compress(model, x, ratio=0.5)
    assert verified_on_fresh(gm).ok
    assert gm.get_submodule("enc.layers.0.linear1").out_features == 64  # kept: a leaf


def test_user_leaf_wins():
    model = Encoder().eval()
    x = torch.randn(2, 7, 10)
    gm = fxprune.compress(model, x, ratio=0.5, leaf_modules=[nn.TransformerEncoderLayer])
    assert gm.get_submodule("enc.layers.0.linear1").out_features == 64
    assert verified_on_fresh(gm).ok
