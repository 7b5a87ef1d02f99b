"""BatchNorm re-estimation (adaptive BN): after channels go upstream, every later BN still
normalises with the statistics of the unpruned network. One pass over the calibration batches
of the *pruned* graph measures each BN's actual input - normalising with the batch's own
statistics meanwhile (as a training-mode BN does, but with the unbiased variance eval mode
uses), so later layers see what they will see once the new statistics are in - and then
sets running_mean / running_var to the statistics of all calibration samples (streamed sums,
unbiased variance as torch keeps it). Everything else runs in eval mode; only the pruned
model's own buffers are written.

Works on both graph kinds: BatchNorm modules (fx) and the ATen batch-norm calls the export
frontend captures (whose running statistics are get_attr buffers of the graph).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..calibrate import all_reduce_fields, batches, reduce_across_ranks
from ..frontends.base import Traced
from ..util import eval_mode

log = logging.getLogger(__name__)
_aten = torch.ops.aten
# call_function target -> its argument names in order (the ones read here are input,
# weight, bias, running_mean, running_var, training, eps) and whether it returns
# (out, save_mean, save_invstd)
_CALLS = {
    _aten._native_batch_norm_legit_no_training.default: (
        ("input", "weight", "bias", "running_mean", "running_var", "momentum", "eps"), True),
    _aten.batch_norm.default: (("input", "weight", "bias", "running_mean", "running_var",
                                "training", "momentum", "eps"), False),
    F.batch_norm: (("input", "running_mean", "running_var", "weight", "bias", "training",
                    "momentum", "eps"), False),
}
_DEFAULTS = {"weight": None, "bias": None, "training": False, "eps": 1e-5}


def _named(node: fx.Node, values: tuple, kwargs: dict, names: tuple) -> dict:
    """Arguments by name: positional, keyword or default (raw nodes under ``node``)."""
    out = {}
    for k, name in enumerate(names):
        if k < len(values):
            out[name] = (values[k], node.args[k])
        elif name in kwargs:
            out[name] = (kwargs[name], node.kwargs.get(name))
        else:
            out[name] = (_DEFAULTS.get(name), None)
    return out


class BNSums:
    """Per-channel running sums of one BN's input over every sample position."""

    def __init__(self) -> None:
        self.s1: torch.Tensor | None = None
        self.s2: torch.Tensor | None = None
        self.count = 0

    def update(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add a batch; returns its own (mean, unbiased variance) per channel: the variance
        kind eval mode normalises with, so on one batch the pass is what eval will compute."""
        dims = [d for d in range(x.dim()) if d != 1]
        xd = x.detach()  # sums in float64 without a float64 copy of the activation
        s1, s2 = xd.sum(dims, dtype=torch.float64), (xd * xd).sum(dims, dtype=torch.float64)
        n = x.numel() // x.shape[1]
        self.s1 = s1 if self.s1 is None else self.s1 + s1
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.count += n
        mean = s1 / n
        return mean, (s2 / n - mean * mean).clamp_min(0) * n / max(n - 1, 1)

    def all_reduce(self) -> None:
        all_reduce_fields(self, ("s1", "s2", "count"))

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.s1 / self.count
        var = (self.s2 / self.count - mean * mean).clamp_min(0)
        return mean, var * self.count / max(self.count - 1, 1)


@dataclass
class RecalibrationReport:
    layers: list[str] = field(default_factory=list)  # the BatchNorm nodes re-estimated
    batches: int = 0
    deviation_before: float | None = None  # relative output error vs the dense original
    deviation_after: float | None = None

    def __str__(self) -> str:
        text = (f"BatchNorm statistics re-estimated on {self.batches} calibration batch(es) "
                f"for {len(self.layers)} layer(s)")
        if self.deviation_before is not None:
            text += (f"; output deviation from the unpruned model {self.deviation_before:.3g}"
                     f" -> {self.deviation_after:.3g}")
        return text


class _Measure(fx.Interpreter):
    """Runs the graph with every BN in training-mode normalisation, recording its input."""

    def __init__(self, gm: fx.GraphModule, sums: dict[str, BNSums], buffers: dict):
        super().__init__(gm)
        self.sums, self.buffers = sums, buffers

    def run_node(self, n: fx.Node):
        if n.op == "call_module":
            mod = self.module.get_submodule(n.target)
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and mod.track_running_stats:
                (x,), _ = self.fetch_args_kwargs_from_env(n)
                self.buffers[n.name] = (f"{n.target}.running_mean", f"{n.target}.running_var")
                return self._normalise(n.name, x, mod.weight, mod.bias, mod.eps)
        elif n.op == "call_function" and n.target in _CALLS:
            names, as_tuple = _CALLS[n.target]
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            a = _named(n, args, kwargs, names)
            stats = (a["running_mean"][1], a["running_var"][1])
            # statistics read from buffers, in eval (a training-mode call never reads them)
            if all(isinstance(s, fx.Node) and s.op == "get_attr" for s in stats) and not \
                    a.get("training", (False,))[0]:
                self.buffers[n.name] = (stats[0].target, stats[1].target)
                out = self._normalise(n.name, a["input"][0], a["weight"][0], a["bias"][0],
                                      float(a["eps"][0]))
                return (out, out.new_empty(0), out.new_empty(0)) if as_tuple else out
        return super().run_node(n)

    def _normalise(self, name, x, weight, bias, eps):
        mean, var = self.sums.setdefault(name, BNSums()).update(x)
        shape = [1, -1] + [1] * (x.dim() - 2)
        y = (x - mean.to(x.dtype).view(shape)) / torch.sqrt(var.to(x.dtype).view(shape) + eps)
        if weight is not None:
            y = y * weight.view(shape)
        if bias is not None:
            y = y + bias.view(shape)
        return y


def recalibrate_bn(gm: fx.GraphModule, traced: Traced, data, max_batches: int | None = None
                   ) -> tuple[RecalibrationReport, dict[str, torch.Tensor]]:
    """Re-estimate the running statistics of every BatchNorm of ``gm`` (the pruned graph) in
    place from the calibration batches; ``traced`` says how a batch becomes graph inputs.
    Returns the report and the statistics as they were (by qualified name), so a later
    verify can still prove the structural rewrite exact."""
    sums: dict[str, BNSums] = {}
    buffers: dict[str, tuple[str, str]] = {}  # BN node -> qualified names of its statistics
    report = RecalibrationReport()
    measure = _Measure(gm, sums, buffers)
    with torch.no_grad(), eval_mode(gm):
        for inputs, _ in batches(data, len(traced.example_inputs), max_batches,
                                 traced.split_batch):
            measure.run(*inputs)
            report.batches += 1
    reduce_across_ranks(sums.values())
    before: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, stat in sums.items():
            for qual, value in zip(buffers[name], stat.mean_var()):
                t = gm.get_buffer(qual)
                before.setdefault(qual, t.detach().clone())
                t.copy_(value.to(t.dtype))
            report.layers.append(name)
    log.info("%s", report)
    return report, before
