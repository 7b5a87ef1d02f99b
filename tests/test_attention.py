"""Attention and normalisation: heads and head dims, MultiheadAttention lowering, LayerNorm
groups (approximate, reported), MLP-mixer transposes, small ViT/Swin/ConvNeXt/MaxViT export."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from conftest import prune_and_check, verified_on_fresh

import fxprune


class TimmAttention(nn.Module):
    """timm-style: qkv Linear, literal reshape into heads, unbind, q @ k^T * scale, softmax,
    @ v, transpose, reshape with a literal width."""

    def __init__(self, form="unbind"):
        super().__init__()
        self.form = form
        self.qkv = nn.Linear(32, 96)
        self.proj = nn.Linear(32, 32)
        self.scale = 8 ** -0.5
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, 4, 8).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0) if self.form != "index" else (qkv[0], qkv[1], qkv[2])
        if self.form == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            y = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1) @ v
        y = y.transpose(1, 2).reshape(b, n, 32)
        return self.fc(x + self.proj(y))


def _reshapes(gm):
    return [n.args[3:] for n in gm.graph.nodes if n.target == "reshape"]


@pytest.mark.parametrize("form", ["unbind", "index", "sdpa"])
@pytest.mark.parametrize("heads,dims,expect", [
    (True, False, [(3, 2, 8), (16,)]),   # whole heads: 4 -> 2, head dim kept
    (False, True, [(3, 4, 4), (16,)]),   # head dims: 8 -> 4 in every head
    (True, True, [(3, 3, 6), (18,)]),    # both: 1 - sqrt(0.5) each
])
def test_timm_attention_heads_and_head_dims_exact(form, heads, dims, expect):
    gm = prune_and_check(TimmAttention(form), torch.randn(2, 6, 32), prune_heads=heads,
                         prune_head_dims=dims)
    assert _reshapes(gm) == expect
    assert gm.proj.in_features == expect[1][0]
    if form == "sdpa":  # the scale stays the original head dim's
        sdpa = next(n for n in gm.graph.nodes if n.target is F.scaled_dot_product_attention)
        assert sdpa.kwargs["scale"] == pytest.approx(8 ** -0.5)


def test_head_dims_keep_q_k_positions_equal_v_free():
    m = TimmAttention().eval()
    with torch.no_grad():  # make v prefer other positions than q/k inside each head
        m.qkv.weight[64:] *= torch.linspace(2, 0.1, 32)[:, None]
        m.qkv.weight[:64] *= torch.linspace(0.1, 2, 32).repeat(2)[:, None]
    gm = prune_and_check(m, torch.randn(2, 6, 32), prune_heads=False)
    removed = set(gm.meta["fxprune"].plan.removed["qkv.weight[0]"])
    kept = [c for c in range(96) if c not in removed]
    q = [c % 8 for c in kept if c < 32]
    k = [c % 8 for c in kept if 32 <= c < 64]
    v = [c % 8 for c in kept if c >= 64]
    assert q == k and q != v and len(q) == len(v) == 16


class MixerBlock(nn.Module):
    def __init__(self, tokens=6, dim=16):
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.tok1 = nn.Linear(tokens, 12)
        self.tok2 = nn.Linear(12, tokens)
        self.ln2 = nn.LayerNorm(dim)
        self.ch1 = nn.Linear(dim, 32)
        self.ch2 = nn.Linear(32, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.embed(x)
        y = self.ln1(x).transpose(1, 2)
        x = x + self.tok2(F.gelu(self.tok1(y))).transpose(1, 2)
        x = x + self.ch2(F.gelu(self.ch1(self.ln2(x))))
        return self.head(x.mean(1))


def test_mlp_mixer_token_and_channel_mixing():
    gm = prune_and_check(MixerBlock(), torch.randn(2, 6, 8), exact_only=True)
    assert gm.tok1.out_features == 6 and gm.ch1.out_features == 16
    assert gm.ln1.normalized_shape == (16,)  # the LayerNorm stream is approximate: left alone


def test_layer_norm_groups_are_approximate_and_reported():
    m = MixerBlock().eval()
    graph = fxprune.analyze(m, torch.randn(2, 6, 8))
    approx = [g for g in graph.groups if g.approximate]
    assert len(approx) == 1 and "ln1.weight[0]" in approx[0].members
    gm = fxprune.compress(m, torch.randn(2, 6, 8))
    res = gm.meta["fxprune"].report.verify
    assert res.ok and res.max_abs_err <= 1e-10 * res.scale  # the exact groups stay exact
    assert res.approx_deviation is not None and res.approx_deviation > 1e-6
    assert gm.ln1.normalized_shape == (8,) and gm.ln1.weight.shape == (8,)
    assert "approximate" in str(graph)


class MHABlock(nn.Module):
    def __init__(self, batch_first, kdim=None, cross=False):
        super().__init__()
        self.fc0 = nn.Linear(16, 32)
        self.mha = nn.MultiheadAttention(32, 4, batch_first=batch_first, kdim=kdim, vdim=kdim)
        self.mem = nn.Linear(16, kdim or 32)
        self.fc = nn.Linear(32, 5)
        self.cross = cross or kdim is not None

    def forward(self, x, mask, pad):
        h = self.fc0(x)
        kv = self.mem(x) if self.cross else h
        y, w = self.mha(h, kv, kv, attn_mask=mask, key_padding_mask=pad)
        return self.fc(y), w


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim,cross", [(None, False), (None, True), (24, True)])
def test_multihead_attention_lowered_and_pruned(batch_first, kdim, cross):
    m = MHABlock(batch_first, kdim, cross).eval()
    x = torch.randn(2, 6, 16) if batch_first else torch.randn(6, 2, 16)
    mask = torch.rand(6, 6) > 0.7
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, -2:] = True
    traced = fxprune.trace(m.double(), (x.double(), mask, pad))
    assert not any(n.op == "call_module" and n.target == "mha" for n in traced.gm.graph.nodes)
    ref, low = m(x.double(), mask, pad), traced.gm(x.double(), mask, pad)
    for a, b in zip(ref, low):  # the lowering has the module's numerics
        assert (a - b).abs().max() <= 1e-12
    gm = prune_and_check(m.float(), (x, mask, pad))
    assert gm.get_submodule("mha.out_proj").weight.shape[1] < 32
    assert "mha.in_proj_weight" in gm.state_dict() or "mha.q_proj_weight" in gm.state_dict()


def small_vit():
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                               num_heads=4, hidden_dim=32, mlp_dim=64,
                                               num_classes=10)


def small_swin():
    return torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2],
                                              num_heads=[2, 4], window_size=[4, 4],
                                              num_classes=10)


def _blind_proof(model):
    with torch.no_grad():  # zero heads / 1e-6 layer scales would make the oracle blind
        for n, p in model.named_parameters():
            if float(p.abs().max()) <= 1e-5:
                p.normal_(1.0, 0.1) if "scale" in n else p.normal_(0, 0.02)
    return model.eval()


@pytest.mark.parametrize("factory", [small_vit, small_swin])
def test_small_transformers_compress_verify_and_export(factory):
    model = _blind_proof(factory())
    x = torch.randn(1, 3, 32, 32)
    gm = fxprune.compress(model, x)
    rep = gm.meta["fxprune"].report
    assert verified_on_fresh(gm).ok and rep.params_after < rep.params_before
    ep = torch.export.export(gm, (x,))  # no stale constant left in the pruned module
    assert (ep.module()(x) - gm(x)).abs().max() <= 1e-6


def test_small_vit_prunes_heads():
    model = _blind_proof(small_vit())
    gm = fxprune.compress(model, torch.randn(1, 3, 32, 32), prune_head_dims=False)
    w = gm.get_submodule("encoder.layers.encoder_layer_0.self_attention").in_proj_weight
    assert w.shape[0] == 3 * 16  # 4 heads of 8 -> 2 heads of 8 (ratio 0.5 on heads only)


@pytest.mark.parametrize("size", [32, 36])  # 36: padded windows and odd patch merging
def test_swin_lowering_keeps_numerics_and_prunes_heads(size):
    model = _blind_proof(small_swin()).double()
    x = torch.randn(1, 3, size, size, dtype=torch.float64)
    traced = fxprune.trace(model, x)
    targets = {getattr(n.target, "__name__", n.target) for n in traced.gm.graph.nodes}
    assert "shifted_window_attention" not in targets and "_patch_merging_pad" not in targets
    assert (traced.gm(x) - model(x)).abs().max() <= 1e-10
    gm = fxprune.compress(model.float(), x.float(), prune_head_dims=False)
    assert verified_on_fresh(gm).ok
    qkv = gm.get_submodule("features.3.1.attn.qkv")  # stage 2: 4 heads of 8 -> 2 heads
    assert qkv.weight.shape[0] == 3 * 16


def test_small_vit_slices_class_token_and_positions_with_the_stream():
    model = _blind_proof(small_vit())
    gm = fxprune.compress(model, torch.randn(1, 3, 32, 32))
    width = gm.get_submodule("encoder.ln").weight.shape[0]
    assert width < 32  # the residual stream (LayerNorm: approximate) was pruned
    assert gm.class_token.shape == (1, 1, width)
    assert gm.get_submodule("encoder").pos_embedding.shape == (1, 17, width)
    assert gm.get_submodule("conv_proj").out_channels == width


def test_convnext_layer_norm_2d_and_layer_scale():
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    model = _blind_proof(ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)],
                                  num_classes=10))
    gm = fxprune.compress(model, torch.randn(1, 3, 32, 32))
    rep = gm.meta["fxprune"].report
    assert verified_on_fresh(gm).ok and rep.verify.approx_deviation is not None
    block = gm.get_submodule("features.1.0")
    assert block.layer_scale.shape[0] == gm.get_submodule("features.1.0.block.0").out_channels
    exact = fxprune.compress(model, torch.randn(1, 3, 32, 32), exact_only=True)
    assert exact.meta["fxprune"].report.verify.approx_deviation is None
    assert exact.get_submodule("features.1.0.block.0").out_channels == 16


def test_embedding_and_einsum():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 16)
            self.w = nn.Parameter(torch.randn(16, 12))
            self.fc = nn.Linear(12, 3)

        def forward(self, ids):
            e = torch.relu(self.emb(ids))  # (B, T, 16)
            h = torch.einsum("btc,cd->btd", e, self.w)
            return self.fc(torch.einsum("btd->bd", h))

    gm = prune_and_check(Net(), torch.randint(0, 10, (2, 5)))
    assert gm.emb.embedding_dim == 8 and gm.emb.weight.shape == (10, 8)
    assert gm.w.shape == (8, 6) and gm.fc.in_features == 6


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_b_16", "swin_t"])
def test_full_size_export(name):
    model = _blind_proof(torchvision.models.get_model(name))
    x = torch.randn(1, 3, 224, 224)
    gm = fxprune.compress(model, x)
    ep = torch.export.export(gm, (x,))
    assert (ep.module()(x) - gm(x)).abs().max() <= 1e-5
