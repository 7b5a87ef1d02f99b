"""Sequential reconstruction (``compensate="sequential"``): every conv (groups = 1) and linear
of the pruned graph is refitted, in graph order, so that its output on the *pruned* prefix's
actual inputs matches the original layer's output on the original's inputs - each layer also
corrects the error of the layers before it (He et al. 2017, ThiNet; FLAP / SliceGPT for LLMs).

Both graphs run node by node in lockstep on all calibration samples at once (one layer's
activations of each graph are live, freed after their last use). At a consumer with original
input x (C channels) and pruned input z (the K kept ones), the channel map x ~ A z + c is the
ridge least-squares solution from the cross-moments E[x z^T] and E[z z^T] (accumulators of
C x (K + 1) and (K + 1)^2 float64 values, one consumer at a time), and the layer becomes
W A (summed over the kernel for a conv) with bias b + W c: exact wherever the channels are
related linearly at every pixel (zero padding makes the bias term approximate at borders).
A depthwise conv gets a per-channel affine refit of its kept channels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx

from ..analyze.graph import ChannelGraph
from ..analyze.layout import kept_positions
from ..calibrate import batches
from ..errors import first_line
from ..util import eval_mode
from .compensate import CompensationReport
from .inputs import inputs_for

log = logging.getLogger(__name__)


@dataclass
class Consumer:
    node: str
    target: str  # module path holding weight / bias
    input: str
    kind: str  # "dense" (conv groups = 1, linear) or "depthwise"
    in_kept: np.ndarray  # original input channels the pruned layer reads, in its order
    out_kept: np.ndarray  # original output rows the pruned layer holds, in its order
    call_function: bool  # an ATen/functional call (bias is an argument, not an attribute)
    linear: bool = False  # reads its channels on the last dim (else dim 1, a conv)


def consumers(graph: ChannelGraph, keep: np.ndarray) -> dict[str, Consumer]:
    """Every conv / linear of the original graph that a refit can express."""
    out = {}
    modules = graph.ctx.modules
    for node in graph.traced.gm.graph.nodes:
        rule = graph.rules.get(node.name)
        if rule is None or node.op not in ("call_module", "call_function"):
            continue
        weight = rule.weight_of(node) if hasattr(rule, "weight_of") else None
        if weight is None or weight not in graph.params or not isinstance(node.args[0],
                                                                          fx.Node):
            continue
        info = graph.params[weight]
        if node.op == "call_module":
            mod = modules[node.target]
            if isinstance(mod, torch.nn.Linear):
                kind = "dense"
            elif isinstance(mod, torch.nn.modules.conv._ConvNd) and not mod.transposed:
                kind = "dense" if mod.groups == 1 else (
                    "depthwise" if mod.groups == mod.in_channels == mod.out_channels else None)
            else:
                kind = None
        elif rule.name == "linear":
            kind = "dense"
        elif rule.name == "conv" and not getattr(rule, "transposed", True):
            groups = rule._groups(graph.ctx, node)  # aten.conv2d / F.conv2d: an argument
            kind = "dense" if groups == 1 else (
                "depthwise" if groups == info.shape[0] and info.shape[1] == 1 else None)
        else:
            kind = None
        if kind is None:
            continue
        in_kept = kept_positions(info.order.get(1, info.axes[1]), keep)
        out_kept = kept_positions(info.order.get(0, info.axes[0]), keep)
        if kind == "depthwise":
            in_kept = out_kept
        linear = rule.name == "linear" or isinstance(modules.get(node.target), torch.nn.Linear)
        out[node.name] = Consumer(node.name, weight.rpartition(".")[0], node.args[0].name, kind,
                                  in_kept, out_kept, node.op == "call_function", linear)
    return out


class _Stepper(fx.Interpreter):
    """An interpreter advanced one node at a time (values freed after their last use)."""

    def __init__(self, gm: fx.GraphModule, inputs: tuple):
        super().__init__(gm, garbage_collect_values=True)
        self.args_iter = iter(inputs)
        self.nodes = iter(gm.graph.nodes)
        self.done: set[str] = set()

    def step(self) -> fx.Node | None:
        node = next(self.nodes, None)
        if node is not None:
            self.execute(node)
        return node

    def execute(self, node: fx.Node, extra: torch.Tensor | None = None) -> None:
        """Run ``node`` (plus ``extra`` added to its output: a bias it does not read yet)."""
        out = self.run_node(node)
        self.env[node] = out if extra is None else out + extra
        self.done.add(node.name)
        for dead in self.user_to_last_uses.get(node, []):
            del self.env[dead]

    def until(self, name: str) -> None:
        while name not in self.done:
            if self.step() is None:
                raise KeyError(name)

    def value(self, name: str) -> torch.Tensor:
        return next(v for n, v in self.env.items() if n.name == name)


def _undo(pruned: fx.GraphModule, site: Consumer, before: dict) -> None:
    """Put back what a failed refit of ``site`` had already written."""
    mod = pruned.get_submodule(site.target)
    for local in ("weight", "bias"):
        qual = f"{site.target}.{local}"
        if qual in before:
            old = before.pop(qual)
            if old is None:
                mod.bias = None
            else:
                getattr(mod, local).data.copy_(old)


def _bias_argument(pruned: fx.GraphModule, site: Consumer) -> None:
    """aten.linear / aten.conv2d take the bias as their third argument."""
    node = next(n for n in pruned.graph.nodes if n.name == site.node)
    with pruned.graph.inserting_before(node):
        bias = pruned.graph.get_attr(f"{site.target}.bias")
    args = list(node.args) + [None] * max(0, 3 - len(node.args))
    args[2] = bias
    node.args = tuple(args)
    pruned.recompile()


CHUNK = 1 << 16  # sample positions per float32 product; the sums are float64


def _channels_last(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(samples, channels), in float32 at least (a float64 model keeps float64); always a
    new tensor, so it may be edited."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    out = x.movedim(dim, -1).reshape(-1, x.shape[dim]).to(dtype)
    return out.clone() if out.data_ptr() == x.data_ptr() else out


def _sums(xs: list[torch.Tensor], zs: list[torch.Tensor], dim: int, cols: torch.Tensor | None
          ) -> tuple[torch.Tensor, ...]:
    """Streamed over batches (and chunks of rows, float32 products summed in float64):
    n, sum z, sum d, z^T z, d^T z with d = x minus z at its own positions; ``cols`` None (the
    depthwise case): d = x, and only the diagonals of the products (channel c with c)."""
    f64 = torch.float64
    n, s_z, s_d, zz, dz = 0, 0.0, 0.0, 0.0, 0.0
    for x, z in zip(xs, zs):
        zb, db = _channels_last(z, dim), _channels_last(x, dim)
        if cols is not None:
            db[:, cols] -= zb
        for i in range(0, zb.shape[0], CHUNK):
            zc, dc = zb[i:i + CHUNK], db[i:i + CHUNK]
            if cols is None:
                zz = zz + (zc * zc).sum(0, dtype=f64)
                dz = dz + (dc * zc).sum(0, dtype=f64)
            else:
                zz = zz + (zc.T @ zc).to(f64)
                dz = dz + (dc.T @ zc).to(f64)
        s_z, s_d, n = s_z + zb.sum(0, dtype=f64), s_d + db.sum(0, dtype=f64), n + zb.shape[0]
    return n, s_z, s_d, zz, dz


def _fit_dense(x: list[torch.Tensor], z: list[torch.Tensor], dim: int, cols: torch.Tensor,
               ridge: float, intercept: bool = True) -> tuple[torch.Tensor, int]:
    """A_aug (C x K+1) with x ~ (A + S) z + c, S placing z at its own positions: the ridge
    shrinks the correction A towards plain pruning (c = 0 without ``intercept``); and the
    accumulators' bytes."""
    n, s_z, s_d, zz, dz = _sums(x, z, dim, cols)
    k = zz.shape[0]
    s_zz = torch.zeros(k + 1, k + 1, dtype=torch.float64)  # E[z1 z1^T], z1 = (z, 1)
    s_xz = torch.zeros(dz.shape[0], k + 1, dtype=torch.float64)  # E[d z1^T]
    s_zz[:k, :k] = zz / n
    s_xz[:, :k] = dz / n
    if intercept:
        s_zz[:k, k] = s_zz[k, :k] = s_z / n
        s_zz[k, k] = 1.0
        s_xz[:, k] = s_d / n
    lam = ridge * float(torch.diagonal(s_zz)[:-1].mean().clamp_min(1e-12))
    reg = lam * torch.eye(k + 1, dtype=torch.float64)
    reg[-1, -1] = 0.0 if intercept else 1.0  # the offset is not shrunk (or is pinned at 0)
    a = None
    try:
        a = torch.linalg.solve(s_zz + reg, s_xz.T).T
    except RuntimeError:  # singular without a ridge (kept channels that are collinear)
        pass
    if a is None or not torch.isfinite(a).all():
        a = s_xz @ torch.linalg.pinv(s_zz + reg, hermitian=True)
    return a, (s_zz.numel() + s_xz.numel()) * 8


def refit(original: fx.GraphModule, pruned: fx.GraphModule, graph: ChannelGraph,
          removed_units: np.ndarray, data, *, ridge: float = 1e-3,
          max_batches: int | None = None, new_biases: bool = True
          ) -> tuple[CompensationReport, dict]:
    """Refit ``pruned`` in place, layer after layer; returns the report and the tensors as
    they were (verify restores them to prove the structural rewrite). Without
    ``new_biases`` a layer that has no bias is refitted without an offset (a config that
    must describe the model, ``hf_config``, may have no bias to switch on for it)."""
    report = CompensationReport("sequential")
    keep = graph.keep_mask(removed_units)
    sites = consumers(graph, keep)
    items = [inp for inp, _ in batches(data, len(graph.traced.example_inputs), max_batches,
                                       graph.traced.split_batch)]
    # one interpreter per batch and graph, all advanced together (an exported graph has its
    # batch size baked in, so batches are not concatenated)
    orig = [_Stepper(original, b) for b in items]
    new = [_Stepper(pruned, inputs_for(pruned, graph, removed_units, b)) for b in items]
    before: dict[str, torch.Tensor | None] = {}
    add_bias: list[Consumer] = []
    peak = 0
    with torch.no_grad(), eval_mode(original), eval_mode(pruned):
        for node in list(pruned.graph.nodes):
            site, extra = sites.get(node.name), None
            if site is not None:
                for o in orig:
                    o.until(site.input)
                x = [o.value(site.input) for o in orig]
                z = [n.value(site.input) for n in new]
                try:
                    peak = max(peak, _refit_one(site, x, z, pruned, graph, ridge, before,
                                                report, add_bias, new_biases))
                except Exception as exc:  # noqa: BLE001 - this layer keeps its plain pruning
                    _undo(pruned, site, before)
                    report.skipped.append((site.node, first_line(exc)))
                if site.call_function and site in add_bias:  # not an argument of it yet
                    extra = pruned.get_submodule(site.target).bias
                    extra = extra if site.linear else extra.view(-1, *[1] * (x[0].dim() - 2))
            for n in new:
                n.execute(node, extra)
    for site in add_bias:  # a call that had no bias reads the new one
        _bias_argument(pruned, site)
    report.accumulator_bytes = peak
    log.info("%s", report)
    return report, before


def _refit_one(site: Consumer, x: list[torch.Tensor], z: list[torch.Tensor],
               pruned: fx.GraphModule, graph: ChannelGraph, ridge: float, before: dict,
               report: CompensationReport, add_bias: list, new_biases: bool = True) -> int:
    """Refit one layer from its inputs on every batch: ``x`` the original's, ``z`` the
    pruned network's."""
    dim = x[0].dim() - 1 if site.linear else 1  # where the layer reads its input channels
    if all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(x, z)):
        return 0  # nothing upstream changed this input
    mod = pruned.get_submodule(site.target)
    offset = new_biases or getattr(mod, "bias", None) is not None
    w0 = graph.traced.tensors[f"{site.target}.weight"].detach().double()
    b0 = graph.traced.tensors.get(f"{site.target}.bias")
    b0 = torch.zeros(w0.shape[0], dtype=torch.float64) if b0 is None else b0.detach().double()
    rows = torch.as_tensor(site.out_kept)
    if site.kind == "depthwise":  # x_c ~ a_c z_c + c_c for each kept channel
        kept = torch.as_tensor(site.in_kept)
        n, s_z, s_x, zz, xz = _sums([v.index_select(dim, kept) for v in x], z, dim, None)
        mz, mx = s_z / n, s_x / n
        var = (zz / n - mz * mz).clamp_min(1e-12)
        a = (xz / n - mx * mz) / var
        c = (mx - a * mz) if offset else torch.zeros_like(a)
        w = w0[rows] * a.view(-1, *([1] * (w0.dim() - 1)))
        b = b0[rows] + c * w0[rows].flatten(1).sum(1)
        used = (zz.numel() + xz.numel()) * 8
    else:
        cols = torch.as_tensor(site.in_kept)
        a_aug, used = _fit_dense(x, z, dim, cols, ridge, offset)
        a, c = a_aug[:, :-1], a_aug[:, -1]
        a[cols, torch.arange(len(cols))] += 1.0
        w = torch.einsum("oc...,ck->ok...", w0, a)[rows]
        b = b0[rows] + torch.einsum("oc...,c->o", w0, c)[rows]
    before[f"{site.target}.weight"] = mod.weight.detach().clone()
    mod.weight.data.copy_(w.to(mod.weight.dtype))
    if offset and getattr(mod, "bias", None) is None:
        before[f"{site.target}.bias"] = None
        mod.bias = torch.nn.Parameter(b.to(mod.weight.dtype))
        if site.call_function:
            add_bias.append(site)
    elif offset:
        before[f"{site.target}.bias"] = mod.bias.detach().clone()
        mod.bias.data.copy_(b.to(mod.bias.dtype))
    report.sites.append(site.node)
    return used
