"""Hugging Face transformers: called as users call them, returned as ``from_pretrained``
can load them.

``adapt`` fills in what a user should not have to: ``use_cache=False`` for the capture
(a ``DynamicCache`` is no tensor tree), and the residual stream (hidden size, normalised by
RMSNorm/LayerNorm: an approximate group) left alone unless ``exact_only=False`` is asked.
``hf_config="uniform"`` also keeps every layer's counts equal and only prunes what the
config can express; ``write_config`` then rewrites ``model.config`` and the attention
modules' size attributes, and proves the config right by building the class from it on the
meta device and comparing every tensor shape. Nothing here imports transformers unless the
model is one of its classes.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import FxPruneError, OptionError

log = logging.getLogger(__name__)
CONFIG_MODES = (None, "uniform")


def is_hf_model(model: nn.Module) -> bool:
    return any(c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers")
               for c in type(model).__mro__)


def adapt(model: nn.Module, options):
    """Options with the Hugging Face defaults filled in (only where the user left them)."""
    mode = options.hf_config
    if mode not in CONFIG_MODES:
        raise OptionError(f"hf_config must be one of {CONFIG_MODES}, got {mode!r}")
    if not is_hf_model(model):
        if mode is not None:
            raise OptionError(f"hf_config={mode!r} needs a transformers PreTrainedModel, got "
                              f"{type(model).__name__}")
        return options
    trace, sel, att = options.trace, options.select, options.attention
    kwargs = dict(trace.example_kwargs or {})
    if "use_cache" not in kwargs and "use_cache" in _parameters(model.forward):
        kwargs["use_cache"] = False
    trace = dataclasses.replace(trace, example_kwargs=kwargs or None)
    if sel.exact_only is None:
        sel = dataclasses.replace(sel, exact_only=True)
    if mode == "uniform":
        if options.budget is not None or sel.global_ranking:
            raise OptionError("hf_config='uniform' keeps every layer's counts equal: pass a "
                              "ratio (or per-module ratios that name every layer alike), not a "
                              "budget or global_ranking")
        if not sel.exact_only:
            raise OptionError("hf_config='uniform' keeps the hidden size: exact_only=False "
                              "(pruning it) cannot go through the config")
        # head dims are one config value for q/k/v and RoPE; whole heads only where the
        # config names the head size itself (else head size = hidden / heads)
        att = dataclasses.replace(att, prune_head_dims=False, prune_heads=att.prune_heads
                                  and hasattr(model.config, "head_dim"))
        sel = dataclasses.replace(sel, ignore=tuple(sel.ignore) + tuple(config_ignore(model)))
    if options.output == "graph" and mode is not None:
        raise OptionError("hf_config rewrites model.config: it needs output='module'")
    return dataclasses.replace(options, trace=trace, select=sel, attention=att)


def _parameters(fn) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # a forward without a signature: pass nothing extra
        return set()


@dataclass
class ConfigEdit:
    values: dict[str, Any] = field(default_factory=dict)  # config key -> new value
    attributes: list[str] = field(default_factory=list)  # "module.attr: old -> new"


def write_config(module: nn.Module, original: nn.Module) -> ConfigEdit:
    """Make ``module.config`` and its attention modules describe the pruned sizes. The config
    is the module's own copy (module output copies the model), edited in place so that the
    submodules holding it see the same values. Raises when the layers disagree or the config
    cannot build these shapes."""
    config = module.config
    if config is original.config:
        raise FxPruneError("hf_config: the pruned module shares its config with the caller's")
    edit = ConfigEdit()
    counts: dict[str, Counter] = {}

    def vote(key: str, value: int) -> None:
        counts.setdefault(key, Counter())[int(value)] += 1

    for m in module.modules():
        for key, value in _sizes_of(m).items():
            vote(key, value)
    for key, votes in counts.items():
        if len(votes) > 1:
            raise FxPruneError(f"hf_config='uniform': the layers disagree on {key} "
                               f"({dict(votes)}); save with fxprune.save instead")
        value = next(iter(votes))
        target = _CONFIG_KEYS[key](config)
        if key == "head_dim" and getattr(config, "head_dim", None) is None and \
                set(counts.get("heads", ())) == {_config_heads(original.config)}:
            continue  # heads unchanged: the derived head size still holds
        if target is not None and getattr(config, target, None) != value:
            setattr(config, target, value)
            edit.values[target] = value
    for name, m in module.named_modules():
        for attr, new in _attributes_of(m).items():
            old = getattr(m, attr)
            if old != new:
                setattr(m, attr, new)
                edit.attributes.append(f"{name}.{attr}: {old} -> {new}")
    _check_buildable(module, edit)
    return edit


def _config_heads(config) -> int | None:
    key = _CONFIG_KEYS["heads"](config)
    return getattr(config, key) if key else None


def config_ignore(model: nn.Module) -> list[str]:
    """Under ``hf_config='uniform'``: every projection the config does not size (pooler,
    classifier, lm_head, embeddings) is left alone."""
    sized = set()
    for name, m in model.named_modules():
        if _heads(m) is not None:
            sized.update(f"{name}.{p}" for p in ("q_proj", "k_proj", "v_proj", "query", "key",
                                                 "value"))
        elif hasattr(getattr(m, "c_attn", None), "nf"):
            sized.add(f"{name}.c_attn")
        for up in ("gate_proj", "up_proj", "fc1", "c_fc"):
            if hasattr(m, up):
                sized.add(f"{name}.{up}")
        if type(m).__name__.endswith("Intermediate") and hasattr(m, "dense"):
            sized.add(f"{name}.dense")
    return [name for name, m in model.named_modules()
            if (isinstance(m, (nn.Linear, nn.Embedding)) or hasattr(m, "nf"))
            and name not in sized]


def _heads(m: nn.Module) -> tuple[int, int, int] | None:
    """(query heads, kv heads, head dim) of a q/k/v attention module, from its weights."""
    q, k = getattr(m, "q_proj", None), getattr(m, "k_proj", None)
    head_dim = getattr(m, "head_dim", None)
    if isinstance(q, nn.Linear) and isinstance(k, nn.Linear) and isinstance(head_dim, int):
        return q.out_features // head_dim, k.out_features // head_dim, head_dim
    q, size = getattr(m, "query", None), getattr(m, "attention_head_size", None)
    if isinstance(q, nn.Linear) and isinstance(size, int):
        return q.out_features // size, q.out_features // size, size
    return None


def _sizes_of(m: nn.Module) -> dict[str, int]:
    out: dict[str, int] = {}
    heads = _heads(m)
    if heads is not None:
        out["heads"], out["kv_heads"], out["head_dim"] = heads
    for up in ("gate_proj", "up_proj", "fc1"):
        lin = getattr(m, up, None)
        if isinstance(lin, nn.Linear) and hasattr(m, "down_proj" if up != "fc1" else "fc2"):
            out["intermediate"] = lin.out_features
            break
    dense = getattr(m, "dense", None)
    if type(m).__name__.endswith("Intermediate") and isinstance(dense, nn.Linear):
        out["intermediate"] = dense.out_features
    c_fc = getattr(m, "c_fc", None)
    if c_fc is not None and hasattr(c_fc, "nf"):
        out["intermediate"] = int(c_fc.nf)
    return out


def _attributes_of(m: nn.Module) -> dict[str, int]:
    """Size attributes the module's own forward (or a later ``generate``) reads."""
    heads = _heads(m)
    if heads is None:
        return {}
    nq, nkv, d = heads
    wanted = {"num_heads": nq, "num_attention_heads": nq, "num_key_value_heads": nkv,
              "num_key_value_groups": nq // max(nkv, 1), "all_head_size": nq * d}
    return {a: v for a, v in wanted.items() if isinstance(getattr(m, a, None), int)}


_CONFIG_KEYS = {
    "heads": lambda c: next((k for k in ("num_attention_heads", "n_head") if hasattr(c, k)),
                            None),
    "kv_heads": lambda c: "num_key_value_heads" if hasattr(c, "num_key_value_heads") else None,
    # set when the head count changes: hidden / heads would no longer be the head size (a
    # config that ignores the key is caught by the meta-device build)
    "head_dim": lambda c: "head_dim",
    "intermediate": lambda c: next((k for k in ("intermediate_size", "n_inner", "ffn_dim")
                                    if hasattr(c, k)), None),
}


_BIAS_FLAGS = ("mlp_bias", "attention_bias", "bias")


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        fresh = type(module)(module.config)
    return {k: tuple(v.shape) for k, v in fresh.state_dict().items()}


def _enable_biases(module: nn.Module, want: dict, got: dict, edit: ConfigEdit) -> dict:
    """Compensation gave some projections a bias the config does not build: switch on the
    config flag that builds it, and give the flag's other projections a zero bias (exact)."""
    config = module.config
    for flag in _BIAS_FLAGS:
        extra = [k for k in want if k not in got and k.endswith(".bias")]
        if not extra:
            break
        if getattr(config, flag, None) is not False:
            continue
        setattr(config, flag, True)
        trial = _shapes(module)
        if not any(k in trial for k in extra):
            setattr(config, flag, False)
            continue
        edit.values[flag] = True
        for key in [k for k in trial if k not in want and k.endswith(".bias")]:
            owner = module.get_submodule(key.rpartition(".")[0])
            w = owner.weight
            owner.bias = nn.Parameter(torch.zeros(trial[key], dtype=w.dtype, device=w.device))
            edit.attributes.append(f"{key}: zero bias (for {flag})")
        got = trial
    return got


def _check_buildable(module: nn.Module, edit: ConfigEdit) -> None:
    """The class built from the new config on the meta device has exactly these tensors and
    shapes: what ``from_pretrained`` will do, without memory or weights."""
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = _enable_biases(module, want, _shapes(module), edit)
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    bad = [k for k in want if k in got and want[k] != got[k]]
    if set(want) != set(got):
        key = sorted(set(want) ^ set(got))[0]
        where = "only in the pruned model" if key in want else "missing from the pruned model"
        raise FxPruneError(f"hf_config='uniform': the config cannot build the pruned tensors "
                           f"(e.g. {key} is {where}); save with fxprune.save instead")
    if bad:
        raise FxPruneError(f"hf_config='uniform': the config cannot express the pruned shapes "
                           f"(e.g. {bad[0]}: pruned {want[bad[0]]}, config builds "
                           f"{got[bad[0]]}); save with fxprune.save instead")
