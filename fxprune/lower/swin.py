"""torchvision Swin: ``shifted_window_attention`` and ``_patch_merging_pad`` are
``torch.fx.wrap``-ed (their control flow reads shapes), so they arrive as opaque calls. With
the recorded shapes they are re-emitted as primitive ops: the padding, shift and window sizes
become literals, the shift mask a constant buffer, and the heads ordinary structure.
"""

from __future__ import annotations

import inspect
import math
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from .mha import Builder

try:
    from torchvision.models import swin_transformer as _swin
except ImportError:  # pragma: no cover
    _swin = None


def _shift_mask(pad_h: int, pad_w: int, ws: list[int], shift: list[int]) -> torch.Tensor:
    """The additive mask that keeps shifted windows from attending across the wrap-around."""
    region = torch.zeros(pad_h, pad_w)
    count = 0
    for h0, h1 in ((0, -ws[0]), (-ws[0], -shift[0]), (-shift[0], None)):
        for w0, w1 in ((0, -ws[1]), (-ws[1], -shift[1]), (-shift[1], None)):
            region[h0:h1, w0:w1] = count
            count += 1
    n_w = (pad_h // ws[0]) * (pad_w // ws[1])
    region = region.view(pad_h // ws[0], ws[0], pad_w // ws[1], ws[1]).permute(0, 2, 1, 3)
    region = region.reshape(n_w, ws[0] * ws[1])
    diff = region.unsqueeze(1) - region.unsqueeze(2)
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


def lower_window_attention(gm: fx.GraphModule, node: fx.Node, values: dict) -> bool:
    bound = inspect.signature(_swin.shifted_window_attention).bind(*node.args, **node.kwargs)
    bound.apply_defaults()
    a = bound.arguments
    x_in = a["input"]
    batch, h, w, c = values[x_in.name].shape
    ws, heads, shift = list(a["window_size"]), int(a["num_heads"]), list(a["shift_size"])
    pad_r, pad_b = (ws[1] - w % ws[1]) % ws[1], (ws[0] - h % ws[0]) % ws[0]
    pad_h, pad_w = h + pad_b, w + pad_r
    if ws[0] >= pad_h:
        shift[0] = 0
    if ws[1] >= pad_w:
        shift[1] = 0
    n_w, n = (pad_h // ws[0]) * (pad_w // ws[1]), ws[0] * ws[1]
    b = Builder(gm.graph)
    with gm.graph.inserting_before(node):
        x = b.fn(F.pad, x_in, (0, 0, 0, pad_r, 0, pad_b)) if pad_r or pad_b else x_in
        if sum(shift) > 0:
            x = b.fn(torch.roll, x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        x = b.meth("view", x, -1, pad_h // ws[0], ws[0], pad_w // ws[1], ws[1], c)
        x = b.meth("reshape", b.meth("permute", x, 0, 1, 3, 2, 4, 5), -1, n, c)
        qkv_bias = a["qkv_bias"]
        if a["logit_scale"] is not None and qkv_bias is not None:  # v2: no bias on k
            keep = torch.ones(3 * c)
            keep[c:2 * c] = 0
            name = _buffer(gm, "_fxprune_swin_kbias", keep)
            qkv_bias = b.fn(operator.mul, qkv_bias, b.attr(name))
        qkv = b.fn(F.linear, x, a["qkv_weight"], qkv_bias)
        qkv = b.meth("permute", b.meth("reshape", qkv, -1, n, 3, heads, c // heads),
                     2, 0, 3, 1, 4)
        q, k, v = (b.fn(operator.getitem, qkv, i) for i in range(3))
        if a["logit_scale"] is not None:
            qn, kn = b.fn(F.normalize, q, dim=-1), b.fn(F.normalize, k, dim=-1)
            attn = b.fn(operator.matmul, qn, b.meth("transpose", kn, -2, -1))
            scale = b.meth("exp", b.fn(torch.clamp, a["logit_scale"], max=math.log(100.0)))
            attn = b.fn(operator.mul, attn, scale)
        else:
            q = b.fn(operator.mul, q, (c // heads) ** -0.5)
            attn = b.meth("matmul", q, b.meth("transpose", k, -2, -1))
        attn = b.fn(operator.add, attn, a["relative_position_bias"])
        if sum(shift) > 0:
            name = _buffer(gm, "_fxprune_swin_mask", _shift_mask(pad_h, pad_w, ws, shift))
            mask = b.meth("unsqueeze", b.meth("unsqueeze", b.attr(name), 1), 0)
            attn = b.fn(operator.add, b.meth("view", attn, -1, n_w, heads, n, n), mask)
            attn = b.meth("view", attn, -1, heads, n, n)
        attn = b.fn(F.softmax, attn, dim=-1)
        attn = b.fn(F.dropout, attn, p=a["attention_dropout"], training=a["training"])
        x = b.meth("reshape", b.meth("transpose", b.meth("matmul", attn, v), 1, 2), -1, n, c)
        x = b.fn(F.linear, x, a["proj_weight"], a["proj_bias"])
        x = b.fn(F.dropout, x, p=a["dropout"], training=a["training"])
        x = b.meth("view", x, -1, pad_h // ws[0], pad_w // ws[1], ws[0], ws[1], c)
        x = b.meth("reshape", b.meth("permute", x, 0, 1, 3, 2, 4, 5), -1, pad_h, pad_w, c)
        if sum(shift) > 0:
            x = b.fn(torch.roll, x, shifts=(shift[0], shift[1]), dims=(1, 2))
        if pad_r or pad_b:
            x = b.meth("contiguous", b.fn(operator.getitem, x,
                                          (slice(None), slice(None, h), slice(None, w))))
    del batch
    node.replace_all_uses_with(x)
    gm.graph.erase_node(node)
    return True


def lower_patch_merging_pad(gm: fx.GraphModule, node: fx.Node, values: dict) -> bool:
    x_in = node.args[0]
    h, w = values[x_in.name].shape[-3:-1]
    b = Builder(gm.graph)
    with gm.graph.inserting_before(node):
        x = b.fn(F.pad, x_in, (0, 0, 0, w % 2, 0, h % 2)) if h % 2 or w % 2 else x_in
        parts = [b.fn(operator.getitem, x, (Ellipsis, slice(i, None, 2), slice(j, None, 2),
                                            slice(None)))
                 for j, i in ((0, 0), (0, 1), (1, 0), (1, 1))]
        out = b.fn(torch.cat, parts, -1)
    node.replace_all_uses_with(out)
    gm.graph.erase_node(node)
    return True


def lower_relative_position_bias(gm: fx.GraphModule, node: fx.Node, values: dict) -> bool:
    table, index, ws = (list(node.args) + [None, None, None])[:3]
    ws = ws if ws is not None else node.kwargs["window_size"]
    n = ws[0] * ws[1]
    b = Builder(gm.graph)
    with gm.graph.inserting_before(node):
        bias = b.meth("view", b.fn(operator.getitem, table, index), n, n, -1)
        out = b.meth("unsqueeze", b.meth("contiguous", b.meth("permute", bias, 2, 0, 1)), 0)
    node.replace_all_uses_with(out)
    gm.graph.erase_node(node)
    return True


def _buffer(gm: fx.GraphModule, prefix: str, value: torch.Tensor) -> str:
    k = 0
    while hasattr(gm, f"{prefix}_{k}"):
        k += 1
    gm.register_buffer(f"{prefix}_{k}", value)
    return f"{prefix}_{k}"


SHAPED_LOWERINGS = {}
if _swin is not None:
    SHAPED_LOWERINGS[_swin.shifted_window_attention] = lower_window_attention
    SHAPED_LOWERINGS[_swin._patch_merging_pad] = lower_patch_merging_pad
    SHAPED_LOWERINGS[_swin._get_relative_position_bias] = lower_relative_position_bias
