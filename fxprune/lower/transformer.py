"""Traceable forwards for ``nn.TransformerEncoderLayer`` / ``nn.TransformerEncoder``.

torch.fx keeps torch.nn modules as leaves, and their own forwards cannot be traced (the
fast-path checks branch on tensor properties), so a model built from them would prune
nothing inside. The tracer calls these instead: torch's reference ("slow path") computation,
written with the modules' own submodules, so the attention becomes an ``nn.MultiheadAttention``
call that ``lower`` opens into heads, and the feed-forward hidden units an ordinary group.
Masks are passed through only when absent: a layer called with a mask stays a leaf (its
mask canonicalisation branches on the mask's dtype), and its channels are kept.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn


def encoder_layer(m: nn.TransformerEncoderLayer, src: Any, src_mask: Any = None,
                  src_key_padding_mask: Any = None, is_causal: bool = False) -> Any:
    def sa(x: Any) -> Any:
        out = m.self_attn(x, x, x, attn_mask=None, key_padding_mask=None, need_weights=False,
                          is_causal=is_causal)[0]
        return m.dropout1(out)

    def ff(x: Any) -> Any:
        return m.dropout2(m.linear2(m.dropout(m.activation(m.linear1(x)))))

    x = src
    if m.norm_first:
        x = x + sa(m.norm1(x))
        return x + ff(m.norm2(x))
    x = m.norm1(x + sa(x))
    return m.norm2(x + ff(x))


def encoder(m: nn.TransformerEncoder, src: Any, mask: Any = None,
            src_key_padding_mask: Any = None, is_causal: bool | None = None) -> Any:
    out = src
    for layer in m.layers:
        out = layer(out, src_mask=None, src_key_padding_mask=None, is_causal=bool(is_causal))
    return m.norm(out) if m.norm is not None else out


def _no_masks(args: tuple, kwargs: dict, names: tuple[str, ...]) -> bool:
    """True when every mask argument (positional after the input, or by name) is None."""
    given = dict(zip(names, args[1:]))
    given.update({k: v for k, v in kwargs.items() if k in names})
    return all(v is None for v in given.values())


TRACEABLE = {
    nn.TransformerEncoderLayer: (encoder_layer, ("src_mask", "src_key_padding_mask")),
    nn.TransformerEncoder: (encoder, ("mask", "src_key_padding_mask")),
}


def traceable_forward(m: nn.Module, args: tuple, kwargs: dict):
    """The replacement forward for ``m``'s call, or None to keep it a leaf."""
    entry = TRACEABLE.get(type(m))
    if entry is None or not _no_masks(args, kwargs, entry[1]):
        return None
    fn = entry[0]
    return lambda *a, **k: fn(m, *a, **k)
