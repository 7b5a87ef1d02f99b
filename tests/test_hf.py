"""Hugging Face transformers, zero edits: tiny random configs (nothing downloaded), keyword
inputs as users pass them, the same class back with its own output objects. Checked by the
independent value-provenance oracle, by the GQA structure of what was kept, and by a
``save_pretrained`` / ``from_pretrained`` round trip of the config-compatible mode."""

from __future__ import annotations

import copy
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from oracle import distinct_values, masked_by_values, tamed_values  # noqa: E402

import fxprune  # noqa: E402
from fxprune.errors import FxPruneError, OptionError  # noqa: E402

T = transformers
VOCAB, SEQ = 96, 12


def _decoder(cls, config_cls, **extra):
    cfg = config_cls(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=32,
                     **extra)
    return cls(cfg).eval()


MODELS = {
    "llama": lambda: _decoder(T.LlamaForCausalLM, T.LlamaConfig),
    "qwen2": lambda: _decoder(T.Qwen2ForCausalLM, T.Qwen2Config),
    "mistral": lambda: _decoder(T.MistralForCausalLM, T.MistralConfig),
    "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(
        vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=32, bos_token_id=0,
        eos_token_id=0)).eval(),
    "bert": lambda: T.BertForSequenceClassification(T.BertConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=96, max_position_embeddings=32)).eval(),
    "vit": lambda: T.ViTForImageClassification(T.ViTConfig(
        image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=96, num_labels=10)).eval(),
}


def _inputs(name: str) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(1)
    if name == "vit":
        return (torch.randn(2, 3, 32, 32, generator=g),), {}
    ids = torch.randint(0, VOCAB, (2, SEQ), generator=g)
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[1, :3] = 0  # a padded row: the mask path is exercised too
    return (), {"input_ids": ids, "attention_mask": mask}


def _logits(model, args, kwargs):
    with torch.no_grad():
        return model(*args, **kwargs).logits


@pytest.mark.parametrize("name", list(MODELS))
def test_prunes_and_matches_the_independent_oracle(name):
    torch.manual_seed(0)
    model = tamed_values(MODELS[name]())
    before = copy.deepcopy(model.state_dict())
    args, kwargs = _inputs(name)
    pruned = fxprune.compress(model, args, example_kwargs=kwargs, ratio=0.5)
    assert type(pruned) is type(model)  # the caller's own class, its own output objects
    out = pruned(*args, **kwargs)
    assert type(out) is type(model(*args, **kwargs))
    report = fxprune.result_of(pruned).report
    assert report.output == "module" and report.frontend == "export"
    assert report.verify.ok and report.module_verify.ok
    assert report.params_after < 0.8 * report.params_before
    # the hidden size (an approximate LayerNorm/RMSNorm group) is left alone by default
    if name != "vit":
        assert pruned.get_input_embeddings().weight.shape[1] == 64
    for k, v in model.state_dict().items():  # the caller's model is untouched
        assert torch.equal(v, before[k]), k
    # independent oracle: float32 (transformers computes RoPE / masks in float32), 1e-5
    ref = _masked_float(model, pruned)
    a, b = _logits(ref, args, kwargs), _logits(pruned, args, kwargs)
    assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(a.abs().max()))
    if name != "vit":  # a longer input than the capture's: position tables were not cut
        g = torch.Generator().manual_seed(2)
        longer = {"input_ids": torch.randint(0, VOCAB, (1, 2 * SEQ), generator=g)}
        a, b = _logits(ref, (), longer), _logits(pruned, (), longer)
        assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(a.abs().max()))


def _masked_float(model, pruned):
    """The value-provenance oracle in the model's own dtype: a distinct-valued copy of the
    original is zeroed wherever the pruned model holds no value of it."""
    return masked_by_values(model, pruned).float()


def test_gqa_keeps_whole_groups_with_equal_counts():
    """Each kept KV head keeps every query head that reads it, and every layer keeps the
    same number of query heads per KV head (repeat_kv's n_rep is unchanged)."""
    torch.manual_seed(0)
    model = distinct_values(MODELS["llama"]())
    args, kwargs = _inputs("llama")
    pruned = fxprune.compress(model, args, example_kwargs=kwargs, ratio=0.5)
    d = model.config.hidden_size // model.config.num_attention_heads
    n_rep = model.config.num_attention_heads // model.config.num_key_value_heads
    for layer, new in zip(model.model.layers, pruned.model.layers):
        att, natt = layer.self_attn, new.self_attn
        q_heads = _kept_heads(att.q_proj.weight, natt.q_proj.weight, d)
        kv_heads = _kept_heads(att.k_proj.weight, natt.k_proj.weight, d)
        assert kv_heads == _kept_heads(att.v_proj.weight, natt.v_proj.weight, d)
        assert 0 < len(kv_heads) < model.config.num_key_value_heads
        assert q_heads == [j * n_rep + r for j in kv_heads for r in range(n_rep)]
        assert natt.num_key_value_groups == n_rep and natt.head_dim == d
        assert natt.o_proj.in_features == len(q_heads) * d


def _kept_heads(old: torch.Tensor, new: torch.Tensor, d: int) -> list[int]:
    heads = old.reshape(-1, d, old.shape[1])
    kept = []
    for row in new.reshape(-1, d, new.shape[1]):
        match = [h for h in range(heads.shape[0]) if torch.equal(heads[h], row)]
        assert len(match) == 1
        kept.append(match[0])
    return kept


@pytest.mark.parametrize("name,expected", [
    ("llama", {"num_attention_heads": 4, "num_key_value_heads": 1, "intermediate_size": 48}),
    ("qwen2", {"num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 8,
               "intermediate_size": 48}),
    ("mistral", {"num_attention_heads": 4, "num_key_value_heads": 1, "intermediate_size": 48}),
    ("bert", {"num_attention_heads": 4, "intermediate_size": 48}),
    ("gpt2", {"n_head": 4, "n_inner": 128}),
    ("vit", {"num_attention_heads": 4, "intermediate_size": 48}),
])
def test_uniform_config_round_trips_through_from_pretrained(name, expected, tmp_path):
    torch.manual_seed(0)
    model = MODELS[name]()
    config_before = model.config.to_dict()
    args, kwargs = _inputs(name)
    pruned = fxprune.compress(model, args, example_kwargs=kwargs, ratio=0.5, hf_config="uniform")
    assert model.config.to_dict() == config_before  # the user's config is never edited
    for key, value in expected.items():
        assert getattr(pruned.config, key) == value, key
    pruned.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path).eval()
    for key, value in expected.items():
        assert getattr(back.config, key) == value, key
    a, b = _logits(pruned, args, kwargs), _logits(back, args, kwargs)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(a.abs().max()))
    assert sum(p.numel() for p in back.parameters()) < sum(p.numel() for p in model.parameters())


def test_pruned_llama_generates_with_its_kv_cache():
    """Captured with use_cache=False, returned as the model: generate() runs its cache on
    the pruned KV heads, and greedy decoding agrees with a cache-free re-run."""
    torch.manual_seed(0)
    model = MODELS["llama"]()
    args, kwargs = _inputs("llama")
    pruned = fxprune.compress(model, args, example_kwargs=kwargs, ratio=0.5, hf_config="uniform")
    ids = kwargs["input_ids"][:1]
    out = pruned.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, SEQ + 4)
    with torch.no_grad():
        step = pruned(out[:, :-1], use_cache=False).logits[:, SEQ - 1:].argmax(-1)
    assert torch.equal(step, out[:, SEQ:])


def test_options_are_checked_before_any_work():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    with pytest.raises(OptionError, match="PreTrainedModel"):
        fxprune.compress(conv, torch.randn(1, 3, 8, 8), hf_config="uniform")
    llama = MODELS["llama"]()
    args, kwargs = _inputs("llama")
    with pytest.raises(OptionError, match="not a budget"):
        fxprune.compress(llama, args, example_kwargs=kwargs, target_params=0.5,
                         hf_config="uniform")
    with pytest.raises(OptionError, match="hf_config must be"):
        fxprune.compress(llama, args, example_kwargs=kwargs, hf_config="per-layer")


def test_per_layer_counts_refuse_the_config_path():
    """Different ratios per layer cannot be written as one config value: a clear error that
    names the size and points at fxprune.save (which keeps per-layer shapes)."""
    llama = MODELS["llama"]()
    args, kwargs = _inputs("llama")
    with pytest.raises(FxPruneError, match="layers disagree on .*fxprune.save"):
        fxprune.compress(llama, args, example_kwargs=kwargs, ratios={"model.layers.0.*": 0.5},
                         ratio=0.0, hf_config="uniform")
    pruned = fxprune.compress(llama, args, example_kwargs=kwargs,
                              ratios={"model.layers.0.*": 0.5}, ratio=0.0)
    assert pruned.model.layers[0].mlp.gate_proj.out_features == 48
    assert pruned.model.layers[1].mlp.gate_proj.out_features == 96


def test_flap_with_bias_compensation_round_trips(tmp_path):
    """FLAP's compensation gives o_proj/down_proj a bias Llama's config does not build:
    attention_bias / mlp_bias are switched on and the other projections get zero biases,
    so from_pretrained loads exactly the compensated model. Calibration batches are dicts,
    as a tokenizer returns them."""
    torch.manual_seed(0)
    model = MODELS["llama"]()
    g = torch.Generator().manual_seed(3)
    calib = [{"input_ids": torch.randint(0, VOCAB, (2, SEQ), generator=g),
              "attention_mask": torch.ones(2, SEQ, dtype=torch.long)} for _ in range(3)]
    pruned = fxprune.compress(model, (), example_kwargs=calib[0], ratio=0.5, importance="flap",
                              calibration=calib, hf_config="uniform")
    report = fxprune.result_of(pruned).report
    assert report.compensation.method == "mean" and report.verify.ok
    assert pruned.config.attention_bias and pruned.config.mlp_bias
    assert not model.config.attention_bias  # the caller's config is untouched
    layer = pruned.model.layers[0]
    assert torch.count_nonzero(layer.self_attn.q_proj.bias) == 0  # added zeros
    assert torch.count_nonzero(layer.self_attn.o_proj.bias) > 0  # FLAP's compensation
    assert any("config:" in n for n in report.notes)
    pruned.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path).eval()
    a, b = _logits(pruned, (), calib[1]), _logits(back, (), calib[1])
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(a.abs().max()))


def test_block_by_block_verification_when_float64_copies_do_not_fit(monkeypatch):
    """A model too big for two float64 copies is checked decoder layer by decoder layer on
    inputs recorded from the original: exact blocks pass, a tampered block is caught, and a
    removed unit outside the blocks (the hidden size) falls back to the whole-model check."""
    import fxprune.verify_blocks as vb

    monkeypatch.setattr(vb, "MEMORY_SHARE", 1e-12)  # "nothing fits"
    torch.manual_seed(0)
    model = MODELS["llama"]()
    args, kwargs = _inputs("llama")
    pruned = fxprune.compress(model, args, example_kwargs=kwargs, ratio=0.5)
    result = fxprune.result_of(pruned)
    verify = result.report.verify
    assert verify.ok and verify.blocks == 3  # two decoder layers and the final norm
    assert "one by one" in str(verify) and verify.dtype == "float64"
    assert vb.repeated_blocks(model) == ["model.layers.0", "model.layers.1", "model.norm"]
    tampered = copy.deepcopy(pruned)
    with torch.no_grad():
        tampered.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3
    bad = vb.check_blocks(model, tampered, result.graph, result.removed_units, ((), kwargs))
    assert bad is not None and not bad.ok
    bert = MODELS["bert"]()  # its LayerNorm'd hidden size goes too: outside every block
    args, kwargs = _inputs("bert")
    wide = fxprune.compress(bert, args, example_kwargs=kwargs, ratio=0.5, exact_only=False)
    assert fxprune.result_of(wide).report.verify.blocks == 0  # whole-model check instead
    assert fxprune.result_of(wide).report.verify.ok


def test_every_module_sees_the_rewritten_config():
    torch.manual_seed(0)
    model = MODELS["llama"]()
    args, kwargs = _inputs("llama")
    pruned = fxprune.compress(model, args, example_kwargs=kwargs, ratio=0.5, hf_config="uniform")
    assert pruned.model.layers[0].self_attn.config is pruned.config is not model.config
    assert pruned.model.config.num_key_value_heads == 1 and model.config.num_key_value_heads == 2


def test_a_block_that_cannot_be_rerun_falls_back_to_the_whole_model(monkeypatch):
    import fxprune.verify_blocks as vb

    def broken(*_a, **_k):
        raise RuntimeError("a block that needs its neighbours")

    monkeypatch.setattr(vb, "MEMORY_SHARE", 1e-12)
    monkeypatch.setattr(vb, "check_blocks", broken)
    model = MODELS["llama"]()
    args, kwargs = _inputs("llama")
    pruned = fxprune.compress(model, args, example_kwargs=kwargs, ratio=0.5)
    verify = fxprune.result_of(pruned).report.verify
    assert verify.ok and verify.blocks == 0


def _rope_llama():
    """head_dim 16 = 64 / 4 heads, 2 KV heads: no head count shares the head size's value (a
    module attribute is then found from its own literal, see module_output)."""
    cfg = T.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=32)
    return T.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("output", ["module", "graph"])
def test_rope_head_dims_prune_in_rotate_half_pairs(output):
    """prune_heads=False prunes RoPE head dims: the same dims in every q and k head, dim i
    with i + d/2 (rotate-half), the rotary inv_freq sliced with them; v's head dims follow
    q's count (one head_dim attribute), and the result matches the value oracle."""
    torch.manual_seed(0)
    model = tamed_values(_rope_llama())
    args, kwargs = _inputs("llama")
    pruned = fxprune.compress(model, args, example_kwargs=kwargs, ratio=0.5, prune_heads=False,
                              output=output)
    report = fxprune.result_of(pruned).report
    assert report.verify.ok and not report.fallbacks
    d, half = 16, 8
    new = dict(pruned.named_parameters())
    new.update(pruned.named_buffers())
    old_inv = model.model.rotary_emb.inv_freq
    for i, layer in enumerate(model.model.layers):
        att = layer.self_attn
        pre = f"model.layers.{i}.self_attn."
        kept = {}
        for proj, heads in (("q_proj", 4), ("k_proj", 2), ("v_proj", 2)):
            w_old = getattr(att, proj).weight.reshape(heads, d, -1)
            w_new = new[_name(new, pre + proj + ".weight")]
            dn = w_new.shape[0] // heads
            rows = w_new.reshape(heads, dn, -1)
            kept[proj] = [[next(j for j in range(d) if torch.equal(w_old[h, j], r))
                           for r in rows[h]] for h in range(heads)]
        q_dims = kept["q_proj"][0]
        assert 0 < len(q_dims) < d
        assert all(k == q_dims for k in kept["q_proj"] + kept["k_proj"])  # same in every head
        low = [j for j in q_dims if j < half]
        assert q_dims == low + [j + half for j in low]  # rotate-half pairs, in order
        inv = new[_name(new, "rotary_emb.inv_freq")]
        assert torch.equal(inv, old_inv[low])
        if output == "module":  # one head_dim for q, k and v; v's positions are its own
            assert pruned.model.layers[i].self_attn.head_dim == len(q_dims)
            assert all(len(k) == len(q_dims) for k in kept["v_proj"])
    ref = _masked_float(model, pruned)
    a = _logits(ref, args, kwargs)
    b = _logits(pruned, args, kwargs) if output == "module" else _graph_logits(pruned, kwargs)
    assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(a.abs().max()))
    if output == "module":  # the KV cache holds the new head_dim: a cached step agrees
        ids = kwargs["input_ids"][:1]
        with torch.no_grad():
            past = pruned(ids[:, :-1], use_cache=True).past_key_values
            step = pruned(ids[:, -1:], past_key_values=past, use_cache=True).logits[:, -1]
            full = pruned(ids, use_cache=False).logits[:, -1]
        assert torch.allclose(step, full, rtol=0, atol=1e-5 * float(full.abs().max()))


def _name(tensors: dict, suffix: str) -> str:
    """The key ending in ``suffix`` (the graph output flattens module paths)."""
    flat = suffix.replace(".", "_")
    hits = [k for k in tensors if k.endswith(suffix) or k.replace(".", "_").endswith(flat)]
    assert len(hits) == 1, (suffix, hits)
    return hits[0]


def _graph_logits(gm, kwargs):
    with torch.no_grad():
        out = gm(kwargs["input_ids"], kwargs["attention_mask"], False)  # use_cache=False
    return out.logits
