"""``nn.MultiheadAttention`` → linear projections (reading the module's own parameters, so the
names are kept), view into heads, ``scaled_dot_product_attention`` with the scale pinned (or
matmul/softmax when the attention weights are used), output projection. Cases it does not
cover (bias_k/bias_v, add_zero_attn, is_causal) stay leaves, whose channels are then kept.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F


class Builder:
    """Small helper to emit nodes before an anchor node."""

    def __init__(self, graph: fx.Graph):
        self.g = graph

    def fn(self, f, *args, **kwargs) -> fx.Node:
        return self.g.call_function(f, args, kwargs)

    def meth(self, name: str, *args) -> fx.Node:
        return self.g.call_method(name, args)

    def attr(self, target: str) -> fx.Node:
        return self.g.get_attr(target)


def _lowerable(mha: nn.MultiheadAttention) -> bool:
    return mha.bias_k is None and not mha.add_zero_attn


def lower_multihead_attention(gm: fx.GraphModule, name: str, mha: nn.MultiheadAttention,
                              node: fx.Node) -> bool:
    args = list(node.args) + [None] * 3
    q_in = args[0] if args[0] is not None else node.kwargs.get("query")
    k_in = args[1] if args[1] is not None else node.kwargs.get("key")
    v_in = args[2] if args[2] is not None else node.kwargs.get("value")
    kw = dict(node.kwargs)
    extra = dict(zip(("key_padding_mask", "need_weights", "attn_mask", "average_attn_weights",
                      "is_causal"), node.args[3:]))
    kw.update(extra)
    if not _lowerable(mha) or kw.get("is_causal"):
        return False
    users = list(node.users)
    if any(u.op != "call_function" or u.target is not operator.getitem for u in users):
        return False
    wants_weights = any(u.args[1] == 1 for u in users) and kw.get("need_weights", True)
    heads, embed = mha.num_heads, mha.embed_dim
    head_dim = embed // heads
    b = Builder(gm.graph)
    with gm.graph.inserting_before(node):
        def batch_first(t):
            return t if mha.batch_first else b.meth("transpose", t, 0, 1)

        q_t, k_t, v_t = batch_first(q_in), batch_first(k_in), batch_first(v_in)
        if mha._qkv_same_embed_dim and q_in is k_in and k_in is v_in:  # one packed projection
            w = b.attr(f"{name}.in_proj_weight")
            bias = b.attr(f"{name}.in_proj_bias") if mha.in_proj_bias is not None else None
            qkv = b.fn(F.linear, q_t, w, bias)
            q, k, v = (b.fn(operator.getitem, b.meth("chunk", qkv, 3, -1), i) for i in range(3))
        elif mha._qkv_same_embed_dim:  # packed weights, distinct inputs: slices of the pack
            w = b.attr(f"{name}.in_proj_weight")
            full = b.attr(f"{name}.in_proj_bias") if mha.in_proj_bias is not None else None
            q, k, v = (
                b.fn(F.linear, t, b.fn(operator.getitem, w, slice(i * embed, (i + 1) * embed)),
                     None if full is None else
                     b.fn(operator.getitem, full, slice(i * embed, (i + 1) * embed)))
                for i, t in enumerate((q_t, k_t, v_t)))
        else:
            biases = [None] * 3
            if mha.in_proj_bias is not None:
                full = b.attr(f"{name}.in_proj_bias")
                biases = [b.fn(operator.getitem, full, slice(i * embed, (i + 1) * embed))
                          for i in range(3)]
            q = b.fn(F.linear, q_t, b.attr(f"{name}.q_proj_weight"), biases[0])
            k = b.fn(F.linear, k_t, b.attr(f"{name}.k_proj_weight"), biases[1])
            v = b.fn(F.linear, v_t, b.attr(f"{name}.v_proj_weight"), biases[2])

        def heads_view(t, src):
            n, length = b.meth("size", src, 0), b.meth("size", src, 1)
            return b.meth("transpose", b.meth("view", t, n, length, heads, head_dim), 1, 2)

        qh, kh, vh = heads_view(q, q_t), heads_view(k, k_t), heads_view(v, v_t)
        mask = _combined_mask(b, kw.get("attn_mask"), kw.get("key_padding_mask"))
        scale = 1.0 / math.sqrt(head_dim)
        p = mha.dropout if mha.training else 0.0
        weights = None
        if wants_weights:
            scores = b.fn(operator.mul, b.fn(torch.matmul, qh, b.meth("transpose", kh, -2, -1)),
                          scale)
            if mask is not None:
                scores = b.fn(operator.add, scores, mask)
            attn = b.fn(F.softmax, scores, dim=-1)
            weights = b.meth("mean", attn, 1) if kw.get("average_attn_weights", True) else attn
            if p:
                attn = b.fn(F.dropout, attn, p=p)
            out = b.fn(torch.matmul, attn, vh)
        else:
            out = b.fn(F.scaled_dot_product_attention, qh, kh, vh, attn_mask=mask,
                       dropout_p=p, scale=scale)
        n, length = b.meth("size", q_t, 0), b.meth("size", q_t, 1)
        out = b.meth("reshape", b.meth("transpose", out, 1, 2), n, length, embed)
        ow = b.attr(f"{name}.out_proj.weight")
        ob = b.attr(f"{name}.out_proj.bias") if mha.out_proj.bias is not None else None
        out = b.fn(F.linear, out, ow, ob)
        if not mha.batch_first:
            out = b.meth("transpose", out, 0, 1)
    for u in users:
        u.replace_all_uses_with(out if u.args[1] == 0 else weights)
        gm.graph.erase_node(u)
    gm.graph.erase_node(node)
    return True


def _combined_mask(b: Builder, attn_mask, key_padding_mask):
    """One additive float mask of shape broadcastable to (N, H, L, S)."""
    out = None
    if isinstance(attn_mask, fx.Node):
        out = b.fn(_additive_mask, attn_mask)
    if isinstance(key_padding_mask, fx.Node):
        kp = b.meth("unsqueeze", b.meth("unsqueeze", b.fn(_additive_mask, key_padding_mask), 1),
                    1)
        out = kp if out is None else b.fn(operator.add, out, kp)
    return out


@torch.fx.wrap
def _additive_mask(mask: torch.Tensor) -> torch.Tensor:
    """MHA's mask convention: bool True = do not attend; float masks are added as they are."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, device=mask.device).masked_fill(mask, float("-inf"))
    return mask
