"""Sequential reconstruction (``compensate="sequential"``): every conv (groups = 1) and linear
of the pruned graph is refitted, in graph order, so that its output on the *pruned* prefix's
actual inputs matches the original layer's output on the original's inputs - each layer also
corrects the error of the layers before it (He et al. 2017, ThiNet; FLAP / SliceGPT for LLMs).

Both graphs run node by node in lockstep, one interpreter per calibration batch (one layer's
activations of each graph are live, freed after their last use). Each consumer is fitted from
streamed moments, one consumer at a time (``reconstruct``): a channel map of its input
(C x (K + 1) and (K + 1)^2 float64 accumulators; against its O' outputs instead where they are
fewer, the same fit for a linear or 1 x 1 conv), or a k x k conv on its output from its
input's patches where K k^2 features are affordable. Inputs nothing upstream changed are
skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from ..analyze.graph import ChannelGraph
from ..analyze.layout import kept_positions
from ..calibrate import batches
from ..errors import first_line
from ..ops.base import arg
from ..util import eval_mode
from .compensate import CompensationReport
from .inputs import inputs_for
from .reconstruct import Window, affine_map, channel_map, output_fit, output_fit_fits, output_rows

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
    window: Window | None = None  # a zero-padded 2-d conv's (its output fit reads patches)


def _window(node: fx.Node, mod: torch.nn.Module | None, weight_shape) -> Window | None:
    if len(weight_shape) != 4:
        return None
    if node.op == "call_module":
        if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            return None
        geometry = mod.stride, mod.padding, mod.dilation
    elif node.target in (F.conv2d, torch.ops.aten.conv2d.default):
        geometry = tuple(arg(node, i, name, 1 if name != "padding" else 0)
                         for i, name in ((3, "stride"), (4, "padding"), (5, "dilation")))
        if isinstance(geometry[1], str):
            return None
    else:
        return None
    return Window(tuple(weight_shape[2:]), *(_pair(v) for v in geometry))


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
        window = None if linear or kind != "dense" else _window(node, modules.get(node.target),
                                                                 info.shape)
        out[node.name] = Consumer(node.name, weight.rpartition(".")[0], node.args[0].name, kind,
                                  in_kept, out_kept, node.op == "call_function", linear, window)
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


def refit(original: fx.GraphModule, pruned: fx.GraphModule, graph: ChannelGraph,
          removed_units: np.ndarray, data, *, ridge: float = 1e-3,
          max_batches: int | None = None, new_biases: bool = True
          ) -> tuple[CompensationReport, dict]:
    """Refit ``pruned`` in place, layer after layer; returns the report and the tensors as
    they were (verify restores them to prove the structural rewrite). Without
    ``new_biases`` a layer that has no bias is refitted without an offset (a config that
    must describe the model, ``hf_config``, may have no bias to switch on for it)."""
    fit = _Refitter(pruned, graph, ridge, new_biases)
    sites = consumers(graph, graph.keep_mask(removed_units))
    items = [inp for inp, _ in batches(data, len(graph.traced.example_inputs), max_batches,
                                       graph.traced.split_batch)]
    # one interpreter per batch and graph, all advanced together (an exported graph has its
    # batch size baked in, so batches are not concatenated)
    orig = [_Stepper(original, b) for b in items]
    new = [_Stepper(pruned, inputs_for(pruned, graph, removed_units, b)) for b in items]
    with torch.no_grad(), eval_mode(original), eval_mode(pruned):
        for node in list(pruned.graph.nodes):
            site, extra = sites.get(node.name), None
            if site is not None:
                for o in orig:
                    o.until(site.input)
                z = [n.value(site.input) for n in new]
                try:
                    fit.one(site, orig, z)
                except Exception as exc:  # noqa: BLE001 - this layer keeps its plain pruning
                    _undo(pruned, site, fit.before)
                    fit.report.skipped.append((site.node, first_line(exc)))
                if site.call_function and site in fit.add_bias:  # not an argument of it yet
                    extra = pruned.get_submodule(site.target).bias
                    extra = extra if site.linear else extra.view(-1, *[1] * (z[0].dim() - 2))
            for n in new:
                n.execute(node, extra)
    for site in fit.add_bias:  # a call that had no bias reads the new one
        _bias_argument(pruned, site)
    log.info("%s", fit.report)
    return fit.report, fit.before


@dataclass
class _Refitter:
    """Refits one layer at a time; keeps what verify restores (``before``), the calls that
    need a bias argument and the last channel map (consumers of one input share it)."""

    pruned: fx.GraphModule
    graph: ChannelGraph
    ridge: float
    new_biases: bool
    report: CompensationReport = field(
        default_factory=lambda: CompensationReport("sequential", accumulator_bytes=0))
    before: dict = field(default_factory=dict)
    add_bias: list = field(default_factory=list)
    last_map: tuple = (None, None, 0)

    def one(self, site: Consumer, orig: list[_Stepper], z: list[torch.Tensor]) -> None:
        """Refit ``site`` from every batch: ``orig`` the original's interpreters (at the
        layer's input), ``z`` the pruned network's inputs of the layer."""
        dim = z[0].dim() - 1 if site.linear else 1  # where the layer reads its channels
        x = [o.value(site.input) for o in orig]
        if all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(x, z)):
            return  # nothing upstream changed this input
        mod = self.pruned.get_submodule(site.target)
        offset = self.new_biases or getattr(mod, "bias", None) is not None
        tensors = self.graph.traced.tensors
        w0 = tensors[f"{site.target}.weight"].detach().double()
        b0 = tensors.get(f"{site.target}.bias")
        b0 = torch.zeros(w0.shape[0], dtype=torch.float64) if b0 is None else b0.detach().double()
        rows = torch.as_tensor(site.out_kept)
        if self._on_output(site, z, dim, w0.shape[1]):
            del x  # the layer's own output is the target
            for o in orig:
                o.until(site.node)
            y = [o.value(site.node) for o in orig]
            w, b, used = output_fit(y, z, dim, rows, site.window, mod.weight.detach().double(),
                                    self.ridge, offset)
            self.report.output_fits.append(site.node)
        elif site.kind == "depthwise":  # x_c ~ a_c z_c + c_c for each kept channel
            kept = torch.as_tensor(site.in_kept)
            a, c, used = affine_map([v.index_select(dim, kept) for v in x], z, dim, offset)
            w = w0[rows] * a.view(-1, *([1] * (w0.dim() - 1)))
            b = b0[rows] + c * w0[rows].flatten(1).sum(1)
        else:
            cols = torch.as_tensor(site.in_kept)
            key = (site.input, offset, site.in_kept.tobytes())
            if self.last_map[0] != key:
                self.last_map = (key, *channel_map(x, z, dim, cols, self.ridge, offset))
            a_aug, used = self.last_map[1].clone(), self.last_map[2]
            a, c = a_aug[:, :-1], a_aug[:, -1]
            a[cols, torch.arange(len(cols))] += 1.0
            w = torch.einsum("oc...,ck->ok...", w0, a)[rows]
            b = b0[rows] + torch.einsum("oc...,c->o", w0, c)[rows]
        self._write(site, mod, w, b if offset else None)
        self.report.sites.append(site.node)
        self.report.accumulator_bytes = max(self.report.accumulator_bytes, used)

    def _on_output(self, site: Consumer, z: list[torch.Tensor], dim: int, inputs: int) -> bool:
        """A linear, or a 2-d conv whose window ``reconstruct`` knows (not conv1d / 3d)."""
        if site.kind != "dense" or not (site.linear or site.window is not None):
            return False
        samples = sum(v.numel() // v.shape[dim] if site.linear else
                      output_rows(v, site.window) for v in z)
        features = int(np.prod(self.pruned.get_submodule(site.target).weight.shape[1:]))
        return output_fit_fits(features, len(site.out_kept), inputs, samples, site.window)

    def _write(self, site: Consumer, mod: torch.nn.Module, w: torch.Tensor,
               b: torch.Tensor | None) -> None:
        """Store the refit (the old tensors in ``before``; a new bias where there was none)."""
        if not (torch.isfinite(w).all() and (b is None or torch.isfinite(b).all())):
            raise FloatingPointError("the refit is not finite")  # the layer stays as it was
        before = self.before
        before[f"{site.target}.weight"] = mod.weight.detach().clone()
        mod.weight.data.copy_(w.to(mod.weight.dtype))
        if b is not None and getattr(mod, "bias", None) is None:
            before[f"{site.target}.bias"] = None
            mod.bias = torch.nn.Parameter(b.to(mod.weight.dtype))
            if site.call_function:
                self.add_bias.append(site)
        elif b is not None:
            before[f"{site.target}.bias"] = mod.bias.detach().clone()
            mod.bias.data.copy_(b.to(mod.bias.dtype))
