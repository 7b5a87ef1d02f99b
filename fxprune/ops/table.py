"""THE rules table: one entry per op. To teach fxprune an op, write its :class:`Rule` in the
``ops`` module it belongs to (or reuse one) and add its entry here.

Keys are module types (``call_module``), callables (``call_function``: torch functions and,
for graphs of other frontends, ATen overloads) and method names (``call_method``). Anything
not listed is frozen by :class:`~fxprune.ops.base.Unknown`.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .addmm import Addmm
from .attention import Einsum, MatMul, ScaledDotProductAttention
from .base import Rule, Unknown
from .elementwise import (
    GLU,
    Broadcast,
    Creation,
    GetAttr,
    NonTensor,
    Output,
    Placeholder,
    Unary,
)
from .layers import ChannelNorm, Conv, Convolution, Embedding, GroupNorm, LayerNorm, Linear
from .shape import ChannelShuffle, Expand, ExpandAs, Permute, PixelShuffle, Repeat, Reshape
from .slicing import Cat, GetItem, Index, Narrow, Select, Slice, Split, Stack, Unbind
from .spatial import Pad, Reduce, Roll, Softmax, Spatial

try:  # torchvision is optional for the table
    from torchvision.ops import StochasticDepth, stochastic_depth
except ImportError:  # pragma: no cover
    StochasticDepth = stochastic_depth = None

_BN = ChannelNorm(((3, "weight"), (4, "bias"), (1, "running_mean"), (2, "running_var")),
                  "num_features")
_IN = ChannelNorm(((3, "weight"), (4, "bias"), (1, "running_mean"), (2, "running_var")),
                  "num_features")
_PRELU = ChannelNorm(((1, "weight"),), "num_parameters")
_UNARY, _BROADCAST, _RESHAPE, _PERMUTE = Unary(), Broadcast(), Reshape(), Permute()
_SPLIT, _REDUCE, _SIZE = Split(), Reduce(), NonTensor()
_SOFTMAX, _GLU, _MATMUL = Softmax(), GLU(), MatMul()

_ACTIVATIONS = (
    "ReLU ReLU6 SiLU GELU Hardswish Hardsigmoid Sigmoid Tanh LeakyReLU ELU SELU CELU Softplus "
    "Mish Hardtanh LogSigmoid Tanhshrink Softsign Softshrink Hardshrink Threshold RReLU "
    "Dropout Dropout1d Dropout2d Dropout3d AlphaDropout FeatureAlphaDropout Identity"
).split()
_UNARY_FUNCS = (
    "relu relu_ relu6 silu gelu hardswish hardsigmoid sigmoid tanh leaky_relu leaky_relu_ elu "
    "elu_ selu celu softplus mish hardtanh hardtanh_ logsigmoid tanhshrink softsign softshrink "
    "hardshrink threshold rrelu dropout dropout1d dropout2d dropout3d alpha_dropout "
    "feature_alpha_dropout"
).split()
_TORCH_UNARY = (
    "relu relu_ sigmoid tanh exp abs neg sqrt clamp clip clamp_min clamp_max selu celu rrelu "
    "square rsqrt log1p expm1 erf"
).split()
_UNARY_METHODS = (
    "relu relu_ sigmoid sigmoid_ tanh tanh_ exp abs neg sqrt clamp clamp_ clamp_min clamp_max "
    "clip contiguous clone detach float double half bfloat16 to type_as square rsqrt erf "
    "silu hardswish"
).split()
_BINARY = (operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
           operator.mod, operator.iadd,
           operator.imul, operator.isub, torch.add, torch.sub, torch.mul, torch.div,
           torch.true_divide, torch.maximum, torch.minimum, torch.where, operator.gt,
           operator.lt, operator.ge, operator.le, operator.eq, operator.ne, operator.and_,
           operator.or_, torch.gt, torch.lt, torch.ge, torch.le, torch.eq, torch.ne,
           torch.logical_and, torch.logical_or, torch.pow, operator.pow)
_BINARY_METHODS = (
    "add add_ sub sub_ mul mul_ div div_ maximum minimum where gt lt ge le eq ne pow "
    "logical_and logical_or masked_fill"
).split()
_POOLS = (("MaxPool", "max_pool"), ("AvgPool", "avg_pool"),
          ("AdaptiveAvgPool", "adaptive_avg_pool"), ("AdaptiveMaxPool", "adaptive_max_pool"))
_REDUCE_FUNCS = (torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var,
                 torch.logsumexp, torch.prod)
_REDUCE_METHODS = "mean sum amax amin std var logsumexp prod max min".split()


def _build() -> tuple[dict[Any, Rule], dict[Any, Rule], dict[str, Rule]]:
    modules: dict[Any, Rule] = {
        nn.Conv1d: Conv(), nn.Conv2d: Conv(), nn.Conv3d: Conv(),
        nn.ConvTranspose1d: Conv(True), nn.ConvTranspose2d: Conv(True),
        nn.ConvTranspose3d: Conv(True),
        nn.Linear: Linear(),
        nn.BatchNorm1d: _BN, nn.BatchNorm2d: _BN, nn.BatchNorm3d: _BN, nn.SyncBatchNorm: _BN,
        nn.InstanceNorm1d: _IN, nn.InstanceNorm2d: _IN, nn.InstanceNorm3d: _IN,
        nn.GroupNorm: GroupNorm(), nn.PReLU: _PRELU,
        nn.Flatten: _RESHAPE, nn.Unflatten: _RESHAPE,
        nn.ChannelShuffle: ChannelShuffle(),
        nn.PixelShuffle: PixelShuffle(), nn.PixelUnshuffle: PixelShuffle(inverse=True),
        nn.LPPool1d: Spatial(1), nn.LPPool2d: Spatial(2), nn.Upsample: Spatial(None),
        nn.Softmax: _SOFTMAX, nn.LogSoftmax: _SOFTMAX, nn.Softmin: _SOFTMAX,
        nn.Softmax2d: Softmax(-3), nn.GLU: _GLU,
        nn.LayerNorm: LayerNorm(), nn.Embedding: Embedding(),
    }
    for name in _ACTIVATIONS:
        modules[getattr(nn, name)] = _UNARY
    if StochasticDepth is not None:
        modules[StochasticDepth] = _UNARY

    functions: dict[Any, Rule] = {
        F.conv1d: Conv(), F.conv2d: Conv(), F.conv3d: Conv(),
        F.conv_transpose1d: Conv(True), F.conv_transpose2d: Conv(True),
        F.conv_transpose3d: Conv(True),
        F.linear: Linear(), F.batch_norm: _BN, F.instance_norm: _IN, F.group_norm: GroupNorm(),
        F.prelu: _PRELU,
        torch.flatten: _RESHAPE, torch.reshape: _RESHAPE, torch.unflatten: _RESHAPE,
        torch.squeeze: _RESHAPE, torch.unsqueeze: _RESHAPE,
        torch.permute: _PERMUTE, torch.transpose: _PERMUTE, torch.t: _PERMUTE,
        torch.movedim: _PERMUTE, torch.swapaxes: _PERMUTE,
        torch.cat: Cat(), torch.concat: Cat(), torch.stack: Stack(),
        torch.split: _SPLIT, torch.chunk: _SPLIT, torch.unbind: Unbind(), torch.narrow: Narrow(),
        operator.getitem: GetItem(), getattr: _SIZE, len: _SIZE,
        torch.channel_shuffle: ChannelShuffle(), F.channel_shuffle: ChannelShuffle(),
        torch.native_channel_shuffle: ChannelShuffle(),
        F.pixel_shuffle: PixelShuffle(), F.pixel_unshuffle: PixelShuffle(inverse=True),
        F.interpolate: Spatial(None),
        F.softmax: _SOFTMAX, F.log_softmax: _SOFTMAX, F.softmin: _SOFTMAX,
        torch.softmax: _SOFTMAX, torch.log_softmax: _SOFTMAX, F.glu: _GLU,
        F.layer_norm: LayerNorm(), F.embedding: Embedding(), F.pad: Pad(), torch.roll: Roll(),
        torch.matmul: _MATMUL, torch.bmm: _MATMUL, torch.mm: _MATMUL, operator.matmul: _MATMUL,
        F.scaled_dot_product_attention: ScaledDotProductAttention(), torch.einsum: Einsum(),
    }
    for nd in (1, 2, 3):  # pooling: module and functional forms
        for module_name, function_name in _POOLS:
            modules[getattr(nn, f"{module_name}{nd}d")] = Spatial(nd)
            functions[getattr(F, f"{function_name}{nd}d")] = Spatial(nd)
    for name in _UNARY_FUNCS:
        functions[getattr(F, name)] = _UNARY
    for name in _TORCH_UNARY:
        functions[getattr(torch, name)] = _UNARY
    if stochastic_depth is not None:
        functions[stochastic_depth] = _UNARY
    for f in _BINARY:
        functions[f] = _BROADCAST
    for f in _REDUCE_FUNCS:
        functions[f] = _REDUCE
    functions[operator.neg] = _UNARY

    methods: dict[str, Rule] = {
        "view": _RESHAPE, "reshape": _RESHAPE, "flatten": _RESHAPE, "unflatten": _RESHAPE,
        "squeeze": _RESHAPE, "unsqueeze": _RESHAPE, "view_as": _RESHAPE, "reshape_as": _RESHAPE,
        "permute": _PERMUTE, "transpose": _PERMUTE, "t": _PERMUTE, "movedim": _PERMUTE,
        "swapaxes": _PERMUTE, "swapdims": _PERMUTE,
        "split": _SPLIT, "chunk": _SPLIT, "split_with_sizes": _SPLIT, "unbind": Unbind(),
        "narrow": Narrow(), "expand": Expand(), "expand_as": ExpandAs(), "repeat": Repeat(),
        "tile": Repeat(), "size": _SIZE, "dim": _SIZE, "numel": _SIZE,
        "softmax": _SOFTMAX, "log_softmax": _SOFTMAX,
        "matmul": _MATMUL, "bmm": _MATMUL, "mm": _MATMUL, "roll": Roll(),
    }
    for name in _UNARY_METHODS:
        methods[name] = _UNARY
    for name in _BINARY_METHODS:
        methods[name] = _BROADCAST
    for name in _REDUCE_METHODS:
        methods[name] = _REDUCE
    return modules, functions, methods


# ---- ATen overloads (the export frontend's graphs) ----------------------------------------
aten = torch.ops.aten
_ATEN_BN = ChannelNorm(((1, "weight"), (2, "bias"), (3, "running_mean"), (4, "running_var")),
                       None)  # aten.batch_norm(x, weight, bias, mean, var, ...)
_ATEN_UNARY = (
    "relu relu_ relu6 silu silu_ gelu gelu_ hardswish hardswish_ hardsigmoid hardsigmoid_ "
    "sigmoid sigmoid_ tanh tanh_ leaky_relu leaky_relu_ elu elu_ selu celu softplus mish "
    "mish_ hardtanh hardtanh_ abs neg exp sqrt rsqrt log log1p expm1 erf reciprocal sin cos "
    "floor ceil round sign logical_not square clamp clamp_ clamp_min clamp_max "
    "contiguous clone detach alias dropout dropout_ lift_fresh_copy zeros_like ones_like "
    "full_like empty_like zero_ fill_.Scalar fill_.Tensor"
).split()
_ATEN_BINARY = (
    "add.Tensor add.Scalar add_.Tensor sub.Tensor sub.Scalar sub_.Tensor rsub.Tensor "
    "rsub.Scalar mul.Tensor mul.Scalar mul_.Tensor div.Tensor div.Scalar div.Tensor_mode "
    "div_.Tensor floor_divide.default remainder.Tensor remainder.Scalar maximum.default "
    "minimum.default where.self where.ScalarOther where.ScalarSelf gt.Tensor gt.Scalar "
    "lt.Tensor lt.Scalar ge.Tensor ge.Scalar le.Tensor le.Scalar eq.Tensor eq.Scalar "
    "ne.Tensor ne.Scalar logical_and.default logical_or.default pow.Tensor_Tensor "
    "pow.Tensor_Scalar pow.Scalar masked_fill.Scalar masked_fill.Tensor"
).split()
_ATEN_REDUCE = (
    "mean.dim mean.default sum.dim_IntList sum.default amax.default amin.default max.dim "
    "min.dim var.correction std.correction var.dim std.dim logsumexp.default prod.dim_int"
).split()
_ATEN_CREATION = (
    "arange.default arange.start arange.start_step full.default zeros.default ones.default "
    "empty.memory_format new_full.default new_zeros.default new_ones.default "
    "new_empty.default scalar_tensor.default meshgrid.default meshgrid.indexing "
    "linspace.default tensor.default"
).split()
_ATEN_UPSAMPLE = (
    "upsample_nearest1d.vec upsample_nearest2d.vec upsample_nearest3d.vec "
    "upsample_linear1d.vec upsample_bilinear2d.vec upsample_bicubic2d.vec "
    "upsample_trilinear3d.vec _upsample_nearest_exact1d.vec _upsample_nearest_exact2d.vec "
    "_upsample_nearest_exact3d.vec _upsample_bilinear2d_aa.vec upsample_nearest2d.default "
    "upsample_bilinear2d.default"
).split()
_ATEN_NON_TENSOR = "item.default sym_size.int _assert_tensor_metadata.default " \
    "_assert_scalar.default sym_constrain_range_for_size.default".split()


def _overload(name: str):
    """``"add.Tensor"`` -> aten.add.Tensor; a bare name is its ``.default`` overload. None
    when this torch has no such overload."""
    op, _, overload = name.partition(".")
    packet = getattr(aten, op, None)
    return getattr(packet, overload or "default", None) if packet is not None else None


def _build_aten() -> dict[Any, Rule]:
    rules: dict[Any, Rule] = {
        aten.conv1d.default: Conv(), aten.conv2d.default: Conv(), aten.conv3d.default: Conv(),
        aten.conv1d.padding: Conv(), aten.conv2d.padding: Conv(), aten.conv3d.padding: Conv(),
        aten.conv_transpose1d.default: Conv(True), aten.conv_transpose2d.input: Conv(True),
        aten.conv_transpose3d.input: Conv(True), aten.convolution.default: Convolution(),
        aten.linear.default: Linear(),
        aten.batch_norm.default: _ATEN_BN, aten.instance_norm.default: _ATEN_BN,
        aten._native_batch_norm_legit_no_training.default: _ATEN_BN,
        aten.layer_norm.default: LayerNorm(), aten.group_norm.default: GroupNorm(),
        aten.prelu.default: _PRELU, aten.embedding.default: Embedding(weight_at=0),
        aten.matmul.default: _MATMUL, aten.mm.default: _MATMUL, aten.bmm.default: _MATMUL,
        aten.scaled_dot_product_attention.default: ScaledDotProductAttention(),
        aten.softmax.int: _SOFTMAX, aten._softmax.default: _SOFTMAX,
        aten.log_softmax.int: _SOFTMAX, aten._log_softmax.default: _SOFTMAX,
        aten.glu.default: _GLU,
        aten.view.default: _RESHAPE, aten.reshape.default: _RESHAPE,
        aten._unsafe_view.default: _RESHAPE, aten.flatten.using_ints: _RESHAPE,
        aten.unflatten.int: _RESHAPE, aten.squeeze.dim: _RESHAPE, aten.squeeze.dims: _RESHAPE,
        aten.squeeze.default: _RESHAPE, aten.unsqueeze.default: _RESHAPE,
        aten.permute.default: _PERMUTE, aten.transpose.int: _PERMUTE, aten.t.default: _PERMUTE,
        aten.movedim.int: _PERMUTE, aten.swapaxes.default: _PERMUTE,
        aten.expand.default: Expand(), aten.expand_as.default: ExpandAs(),
        aten.repeat.default: Repeat(), aten.tensor_split.indices: _SPLIT,
        aten.linalg_vector_norm.default: Reduce(dim_at=2),
        aten.cat.default: Cat(), aten.stack.default: Stack(), aten.split.Tensor: _SPLIT,
        aten.split_with_sizes.default: _SPLIT, aten.chunk.default: _SPLIT,
        aten.unbind.int: Unbind(), aten.narrow.default: Narrow(), aten.slice.Tensor: Slice(),
        aten.select.int: Select(), aten.index.Tensor: Index(),
        aten.pad.default: Pad(), aten.constant_pad_nd.default: Pad(),
        aten.roll.default: Roll(),
        aten.channel_shuffle.default: ChannelShuffle(),
        aten.native_channel_shuffle.default: ChannelShuffle(),
        aten.pixel_shuffle.default: PixelShuffle(),
        aten.pixel_unshuffle.default: PixelShuffle(inverse=True),
        aten.type_as.default: Unary(first_only=True), aten.to.dtype: _UNARY,
        aten.to.dtype_layout: _UNARY, aten._to_copy.default: _UNARY,
        aten.addmm.default: Addmm(), aten.to.device: _UNARY, aten.to.other: Unary(first_only=True),
        aten.to.prim_Device: _UNARY,
    }
    for nd in (1, 2, 3):
        for op in ("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool"):
            rules[getattr(aten, f"{op}{nd}d").default] = Spatial(nd)
    for name in _ATEN_UPSAMPLE:
        op = _overload(name)
        if op is not None:
            rules[op] = Spatial(None)
    for names, rule in ((_ATEN_UNARY, _UNARY), (_ATEN_BINARY, _BROADCAST),
                        (_ATEN_REDUCE, _REDUCE), (_ATEN_CREATION, Creation()),
                        (_ATEN_NON_TENSOR, _SIZE)):
        for name in names:
            op = _overload(name)
            if op is not None:
                rules[op] = rule
    return rules


MODULE_RULES, FUNCTION_RULES, METHOD_RULES = _build()
FUNCTION_RULES.update(_build_aten())
_PLACEHOLDER, _OUTPUT, _GETATTR, _UNKNOWN = Placeholder(), Output(), GetAttr(), Unknown()


def rule_for(node: fx.Node, modules: dict[str, nn.Module]) -> Rule:
    """The rule of one node (Unknown when the table has none)."""
    if node.op == "placeholder":
        return _PLACEHOLDER
    if node.op == "output":
        return _OUTPUT
    if node.op == "get_attr":
        return _GETATTR
    if node.op == "call_module":
        return MODULE_RULES.get(type(modules[node.target]), _UNKNOWN)
    if node.op == "call_function":
        return FUNCTION_RULES.get(node.target, _UNKNOWN)
    if node.op == "call_method":
        return METHOD_RULES.get(node.target, _UNKNOWN)
    return _UNKNOWN


def leaf_types() -> tuple[type, ...]:
    """Non-torch.nn module types the tracer keeps as leaves because a rule knows them."""
    return tuple(t for t in MODULE_RULES if not t.__module__.startswith("torch.nn"))
