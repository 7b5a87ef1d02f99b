"""Torch-Pruning's own LLM pruning recipe as a function, for same-run comparisons.

Source: ``examples/LLMs/prune_llm.py`` (with ``examples/LLMs/readme.md``) in VainF/Torch-Pruning
at commit e80127d7c6935c319a7dd6719b8a72e3c1fcbff9 ("v1.6.1: enhance code style", 2025-09-08;
the script itself last changed in 6c62641, 2025-03-24). The torch_pruning package installed here
is 1.6.1, and its ``base_pruner.py`` / ``graph.py`` / ``importance.py`` are byte-identical to that
commit. The script's pruning section is re-implemented below (not copied); settings followed:

* importance: ``tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean")``
  (weight magnitude, no calibration data: the script's activation-importance block is
  commented out);
* pruner: ``tp.pruner.BasePruner`` with ``global_pruning=False`` (local, uniform width),
  ``pruning_ratio=ratio`` (MLP intermediate units and, in the script, the hidden size),
  ``head_pruning_ratio=ratio``, ``round_to=4``, ``ignored_layers=[model.lm_head]``,
  ``output_transform=lambda out: out.logits``;
* ``num_heads``: for every ``*.self_attn`` with separate projections,
  ``q_proj -> config.num_attention_heads`` and ``k_proj``/``v_proj ->
  config.num_key_value_heads`` (a fused ``qkv_proj`` gets ``num_attention_heads``; a fused
  ``gate_up_proj`` gets ``out_channel_groups = 2``, as the script does for Phi-3);
* ``prune_num_heads=True``, ``prune_head_dims=False``: whole heads are removed and head_dim is
  kept, so RoPE needs no pruning;
* GQA: nothing extra is passed. TP 1.6 sees that k/v carry fewer heads than q, removes
  ``ceil(ceil(ratio * n_q) / n_kv)`` q heads inside *each* kv group and leaves k_proj/v_proj
  whole (their indices are emptied in the group), so ``num_key_value_heads`` does not change;
* the groups are taken one by one from ``pruner.step(interactive=True)`` and pruned;
* hand edits afterwards, as the script does: ``config.hidden_size = lm_head.in_features``;
  per ``self_attn``: ``hidden_size = q_proj.out_features``, ``num_heads = hidden_size //
  head_dim``, ``config.num_attention_heads = num_heads``, and without GQA also
  ``num_key_value_heads`` (module and config) ``= num_heads``; ``num_key_value_groups =
  num_heads // config.num_key_value_heads``; per ``mlp``: ``hidden_size =
  gate_proj.in_features``, ``config.intermediate_size = gate_proj.out_features`` (or
  ``gate_up_proj.out_features // 2``). ``config.head_dim`` is not touched (head dims are kept).

Deviations (the first by request, the others needed to run it here at all):

* ``prune_hidden=False`` (the default) also puts ``model.model.embed_tokens`` in
  ``ignored_layers``. The script always prunes the hidden size at ``ratio``; ignoring the
  embedding makes TP skip the one group that holds the hidden dimension (embedding, norms, every
  projection's input, o_proj/down_proj outputs, lm_head input), so only MLP units and heads go.
  ``prune_hidden=True`` is the script's exact setting.
* The script's ``input_ids`` are the tokens of ``"Hello world."``; here the caller's are used.
* The recipe's call as written never returns with transformers 5 (here 5.24): with the
  model's default ``use_cache=True`` the traced graph holds the KV cache's ``torch.cat``
  (``DynamicLayer.update`` concatenates onto a lazily created empty tensor along the sequence
  dim), TP takes it for a channel concat, and its index mapping shifts the indices by a fixed
  offset (128 here) on every turn of a cycle through RoPE's slice/concat, so
  ``get_pruning_group`` never revisits a state and spins in
  ``_fix_dependency_graph_non_recursive`` (inside ``BasePruner.__init__``; cf.
  VainF/Torch-Pruning issue #527, Qwen3 with transformers 5.1). It is therefore run under a
  time limit (``timeout_s``, SIGALRM, main thread only; skipped elsewhere), and when it fails
  one fallback is tried, my own and not in the script: ``forward_fn`` returns
  ``model(x, use_cache=False).logits``, every other setting unchanged. That one traces in
  milliseconds on the test model. ``info['attempt']`` says which ran.
* TP's plain call (no transform) fails on transformers' outputs with ``AttributeError: 'tuple'
  object has no attribute 'grad_fn'``; the script's ``output_transform`` is its fix for that.
  ``probe_default_call=True`` records it in ``info['default_call_error']`` (nothing pruned).
* After the edits the config is checked against the layer shapes (``info['config_check']``);
  nothing is corrected beyond what the script edits.

Quirks seen (tiny Llama, 8 q / 2 kv heads, head_dim 16, intermediate 344): with GQA the q-head
count moves in steps of ``n_kv`` heads (one per kv group) and the cut rounds *up*: ratio 0.2
leaves 6 q heads (25% cut), 0.3 and 0.5 leave 4; when the cut would empty the kv groups (0.9)
TP's ``check_pruning_group`` drops the attention group: the heads stay whole and only the MLP
is pruned. The readme's advice is a ratio that is a multiple of ``n_kv / n_q``. ``round_to=4``
applies to the MLP and hidden groups (344 -> 272 at 0.2, 172 at 0.5; hidden 128 -> 100 at 0.2),
not to heads, whose dims are kept.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

RECIPE_SOURCE = ("VainF/Torch-Pruning@e80127d7c6935c319a7dd6719b8a72e3c1fcbff9:"
                 "examples/LLMs/prune_llm.py")


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _hook_snapshot(model: nn.Module) -> dict[nn.Module, set[int]]:
    return {m: set(m._forward_hooks) for m in model.modules()}


def _drop_new_hooks(model: nn.Module, before: dict[nn.Module, set[int]]) -> None:
    """TP's tracer removes its forward hooks only if the forward returns; undo leftovers."""
    for m in model.modules():
        for k in list(m._forward_hooks):
            if k not in before.get(m, set()):
                del m._forward_hooks[k]


def _heads_and_groups(model: nn.Module) -> tuple[dict[nn.Module, int], dict[nn.Module, int]]:
    """The script's ``num_heads`` / ``out_channel_groups`` dicts."""
    cfg = model.config
    num_heads: dict[nn.Module, int] = {}
    out_groups: dict[nn.Module, int] = {}
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            if hasattr(m, "q_proj"):
                num_heads[m.q_proj] = cfg.num_attention_heads
                num_heads[m.k_proj] = cfg.num_key_value_heads
                num_heads[m.v_proj] = cfg.num_key_value_heads
            elif hasattr(m, "qkv_proj"):
                num_heads[m.qkv_proj] = cfg.num_attention_heads
        if name.endswith("mlp") and hasattr(m, "gate_up_proj"):
            out_groups[m.gate_up_proj] = 2
    return num_heads, out_groups


def _edit_config(model: nn.Module, is_gqa: bool) -> None:
    """The script's hand edits of ``model.config`` and the module attributes."""
    cfg = model.config
    cfg.hidden_size = model.lm_head.in_features
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            if hasattr(m, "q_proj"):
                m.hidden_size = m.q_proj.out_features
            else:
                m.hidden_size = m.qkv_proj.out_features // 3
            m.num_heads = m.hidden_size // m.head_dim
            cfg.num_attention_heads = m.num_heads
            if not is_gqa:
                m.num_key_value_heads = m.num_heads
                cfg.num_key_value_heads = m.num_heads
            if hasattr(m, "num_key_value_groups"):
                m.num_key_value_groups = m.num_heads // cfg.num_key_value_heads
        elif name.endswith("mlp"):
            if hasattr(m, "gate_proj"):
                m.hidden_size = m.gate_proj.in_features
                cfg.intermediate_size = m.gate_proj.out_features
            elif hasattr(m, "gate_up_proj"):
                m.hidden_size = m.gate_up_proj.in_features
                cfg.intermediate_size = m.gate_up_proj.out_features // 2
            else:
                raise ValueError(f"unknown mlp layer {name}")
    if not is_gqa:
        cfg.num_key_value_heads = cfg.num_attention_heads


def _check_config(model: nn.Module) -> list[str]:
    """Every layer's shapes against what ``model.config`` now says (empty list: consistent)."""
    cfg = model.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    h, nq, nkv, inter = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                         cfg.intermediate_size)
    bad: list[str] = []
    if model.model.embed_tokens.embedding_dim != h:
        bad.append(f"embed_tokens dim {model.model.embed_tokens.embedding_dim} != hidden {h}")
    for i, layer in enumerate(model.model.layers):
        a, f = layer.self_attn, layer.mlp
        want = {"q_proj": (nq * hd, h), "k_proj": (nkv * hd, h), "v_proj": (nkv * hd, h),
                "o_proj": (h, nq * hd)}
        for k, shape in want.items():
            lin = getattr(a, k, None)
            if lin is not None and (lin.out_features, lin.in_features) != shape:
                bad.append(f"layer {i} {k} {(lin.out_features, lin.in_features)} != {shape}")
        for k, shape in {"gate_proj": (inter, h), "up_proj": (inter, h),
                         "down_proj": (h, inter)}.items():
            lin = getattr(f, k, None)
            if lin is not None and (lin.out_features, lin.in_features) != shape:
                bad.append(f"layer {i} {k} {(lin.out_features, lin.in_features)} != {shape}")
    return bad


def _config_values(model: nn.Module) -> dict[str, Any]:
    cfg = model.config
    return {k: getattr(cfg, k, None) for k in
            ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size",
             "head_dim")}


def _logits_no_cache(model: nn.Module, example_inputs: torch.Tensor) -> torch.Tensor:
    """The fallback's ``forward_fn``: no KV cache in the traced graph, logits only."""
    return model(example_inputs, use_cache=False).logits


class AttemptTimeout(Exception):
    """A TP call ran past its time limit (TP 1.6 loops forever on some graphs)."""


@contextmanager
def _time_limit(seconds: float | None) -> Iterator[bool]:
    """Raise AttemptTimeout in the main thread after ``seconds`` (SIGALRM / ITIMER_REAL).

    Yields whether a limit is armed. A timer the caller had armed is honoured (ours is cut to
    what is left of it) and re-armed afterwards with its remaining time."""
    if (seconds is None or not hasattr(signal, "setitimer")
            or threading.current_thread() is not threading.main_thread()):
        yield False
        return
    outer_left = signal.getitimer(signal.ITIMER_REAL)[0]
    limit = seconds if outer_left <= 0 else min(seconds, outer_left)

    def _raise(signum: int, frame: Any) -> None:
        raise AttemptTimeout(f"no result after {limit:.0f}s (TP's dependency walk did not end)")

    old = signal.signal(signal.SIGALRM, _raise)
    t0 = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if outer_left > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - t0), 1e-3))


def tp_prune_llama(model: nn.Module, input_ids: torch.Tensor, ratio: float, *,
                   prune_hidden: bool = False, timeout_s: float | None = 60.0,
                   probe_default_call: bool = False) -> tuple[nn.Module, dict]:
    """Prune a transformers LlamaForCausalLM (GQA allowed) in place with Torch-Pruning's LLM recipe
    at `ratio` (MLP intermediate units and attention heads; hidden size only if prune_hidden).
    Returns (model, info) where info has 'seconds', 'error' (None or 'Type: message' if TP raised),
    and the config values after the hand edits.

    Attempts, in order, stopping at the first that works: ``'recipe'`` (the script's call:
    ``output_transform=lambda out: out.logits``, the model's own ``use_cache``), then
    ``'no_cache'`` (``forward_fn`` returning ``model(x, use_cache=False).logits``). Each runs under
    ``timeout_s`` (main thread only; ``None`` = no limit): with transformers 5 the recipe's call
    never returns. Without a usable timer (not the main thread), ``'recipe'`` is skipped rather
    than risk hanging.

    ``info`` keys: ``error`` (None when an attempt pruned the model, else the last failure),
    ``attempt`` (which one worked, or None), ``attempt_errors`` (label -> 'Type: message' for each
    failed or skipped attempt), ``seconds`` (the working attempt: pruner construction + step +
    hand edits; all attempts when none worked), ``seconds_total``, ``hidden_size``,
    ``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size``, ``head_dim``
    (``model.config`` after the edits), ``before`` / ``after`` (the same, as dicts),
    ``params_before`` / ``params_after``, ``groups_pruned``, ``is_gqa``, ``expected_q_heads``
    (GQA: what TP's per-kv-group rounding should leave), ``tied_embeddings``, ``config_check``
    (layer shapes that disagree with the config; [] = consistent), ``partial`` (TP failed after it
    had pruned some groups; the model is left so and no retry is made) and, with
    ``probe_default_call``, ``default_call_error`` (TP's plain call, no transform; nothing pruned).
    Never raises on its own; a timer the caller armed may still fire.
    """
    info: dict[str, Any] = {"recipe": RECIPE_SOURCE, "ratio": ratio, "prune_hidden": prune_hidden,
                            "seconds": 0.0, "seconds_total": 0.0, "error": None, "attempt": None,
                            "attempt_errors": {}, "groups_pruned": 0, "partial": False}
    t_all = time.perf_counter()
    try:
        import torch_pruning as tp

        info["tp_version"] = getattr(tp, "__version__", None)
        cfg = model.config
        info["before"] = _config_values(model)
        info["params_before"] = _n_params(model)
        is_gqa = cfg.num_attention_heads != cfg.num_key_value_heads
        info["is_gqa"] = is_gqa
        info["tied_embeddings"] = model.lm_head.weight is model.model.embed_tokens.weight
        if is_gqa:
            per_kv = cfg.num_attention_heads // cfg.num_key_value_heads
            cut = math.ceil(math.ceil(ratio * cfg.num_attention_heads) / cfg.num_key_value_heads)
            left = per_kv - cut  # TP skips the head cut when it would empty the groups
            info["expected_q_heads"] = cfg.num_key_value_heads * (left if left > 0 else per_kv)
        model.eval()
        ignored: list[nn.Module] = [model.lm_head]
        if not prune_hidden:
            ignored.append(model.model.embed_tokens)

        if probe_default_call:
            hooks = _hook_snapshot(model)
            try:
                with _time_limit(timeout_s):
                    tp.pruner.BasePruner(
                        model, input_ids, importance=tp.importance.GroupMagnitudeImportance(p=2),
                        pruning_ratio=ratio, ignored_layers=[model.lm_head])
                info["default_call_error"] = None
            except Exception as e:  # noqa: BLE001 - recorded, never raised
                info["default_call_error"] = _err(e)
            finally:
                _drop_new_hooks(model, hooks)

        attempts: list[tuple[str, dict[str, Callable]]] = [
            ("recipe", {"output_transform": lambda out: out.logits}),
            ("no_cache", {"forward_fn": _logits_no_cache}),
        ]
        for label, trace_kw in attempts:
            t0 = time.perf_counter()
            num_heads, out_groups = _heads_and_groups(model)
            hooks = _hook_snapshot(model)
            try:
                with _time_limit(timeout_s) as armed:
                    if label == "recipe" and not armed:
                        raise AttemptTimeout("skipped: no timer to stop it outside the main "
                                             "thread, and it never returns on transformers 5")
                    pruner = tp.pruner.BasePruner(
                        model,
                        example_inputs=input_ids,
                        importance=tp.importance.GroupMagnitudeImportance(
                            p=2, group_reduction="mean"),
                        global_pruning=False,
                        pruning_ratio=ratio,
                        ignored_layers=ignored,
                        num_heads=num_heads,
                        prune_num_heads=True,
                        prune_head_dims=False,
                        head_pruning_ratio=ratio,
                        out_channel_groups=out_groups,
                        round_to=4,
                        **trace_kw,
                    )
                    for group in pruner.step(interactive=True):
                        group.prune()
                        info["groups_pruned"] += 1
                    del pruner
            except Exception as e:  # noqa: BLE001 - recorded, never raised
                _drop_new_hooks(model, hooks)
                info["attempt_errors"][label] = info["error"] = _err(e)
                log.warning("TP %s attempt failed: %s", label, _err(e))
                if info["groups_pruned"] > 0:
                    info["partial"] = True
                    break
                continue
            _edit_config(model, is_gqa)
            info["seconds"] = time.perf_counter() - t0
            info["attempt"] = label
            info["error"] = None
            break
    except Exception as e:  # noqa: BLE001 - recorded, never raised
        info["error"] = _err(e)
        log.warning("TP LLM recipe failed: %s", _err(e))
    info["seconds_total"] = time.perf_counter() - t_all
    if info["attempt"] is None:
        info["seconds"] = info["seconds_total"]
    try:
        info["after"] = _config_values(model)
        info.update(info["after"])
        info["params_after"] = _n_params(model)
        info["config_check"] = _check_config(model)
    except Exception as e:  # noqa: BLE001 - recorded, never raised
        info["config_check"] = [f"check failed: {_err(e)}"]
    return model, info
