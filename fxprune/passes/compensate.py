"""Data-driven compensation of the layers that read removed channels.

For a consumer (conv with groups=1, linear) whose input x lost positions R and kept K, the
removed inputs are predicted from the kept ones, x_R ~ A x_K + c, from streamed first and
second moments of x on calibration data; then ``W_K += W_R A`` and ``b += W_R c`` (summed
over the kernel). ``lstsq`` takes the ridge solution ``A = S_RK (S_KK + lambda I)^-1``;
``merge`` maps each removed channel to its most correlated kept one with the least-squares
scale and offset (QSFM's merging); ``mean`` keeps only the offset, x_R ~ E[x_R] (FLAP's bias
compensation: first moments only, O(D)). Statistics come from the original model; each consumer
is corrected on its own. Zero padding makes the bias term approximate at borders.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx

from ..analyze.elements import axis_ids
from ..analyze.graph import ChannelGraph
from ..analyze.layout import kept_positions
from ..calibrate import all_reduce_fields, run_taps
from ..errors import first_line

log = logging.getLogger(__name__)
MAX_FEATURES = 4096  # second moments are D x D: wider inputs (flatten -> linear) are skipped


class Moments:
    """Running sum of x and x x^T (``first_only``: x alone) over every sample position of a
    (N, D, *rest) tensor."""

    def __init__(self, first_only: bool = False):
        self.s1: torch.Tensor | None = None
        self.s2: torch.Tensor | None = None
        self.count = 0
        self.first_only = first_only

    def update(self, x: torch.Tensor) -> None:
        f = x.movedim(1, -1).reshape(-1, x.shape[1]).double()
        s1 = f.sum(0)
        self.s1 = s1 if self.s1 is None else self.s1 + s1
        self.count += f.shape[0]
        if not self.first_only:
            s2 = f.T @ f
            self.s2 = s2 if self.s2 is None else self.s2 + s2

    def all_reduce(self) -> None:
        all_reduce_fields(self, ("s1", "count") if self.first_only else ("s1", "s2", "count"))

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        mu = self.s1 / self.count
        return mu, None if self.first_only else self.s2 / self.count - torch.outer(mu, mu)


@dataclass
class Site:
    """A consumer module reading removed channels of input ``input`` along ``dim``."""

    node: str
    target: str
    input: str
    dim: int
    kept: np.ndarray  # positions of the input the pruned weight holds, in its order
    removed: np.ndarray
    out_kept: np.ndarray  # output rows the pruned weight holds, in its order


@dataclass
class CompensationReport:
    method: str
    sites: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (node, why)
    deviation_before: float | None = None  # relative output error vs the dense original
    deviation_after: float | None = None
    accumulator_bytes: int | None = None  # sequential: the largest consumer's moments
    output_fits: list[str] = field(default_factory=list)  # sequential: fitted on their output

    def __str__(self) -> str:
        text = f"compensation ({self.method}): {len(self.sites)} consumer(s) corrected"
        if self.output_fits:
            text += f" ({len(self.output_fits)} on their output)"
        if self.deviation_before is not None:
            text += (f"; output deviation from the unpruned model {self.deviation_before:.3g}"
                     f" -> {self.deviation_after:.3g}")
        if self.skipped:
            text += f"; skipped {len(self.skipped)} (e.g. {self.skipped[0][0]}: "
            text += f"{self.skipped[0][1]})"
        return text


def find_sites(graph: ChannelGraph, removed_units: np.ndarray, report: CompensationReport,
               method: str = "lstsq") -> list[Site]:
    """Consumers whose input lost channels: conv (groups = 1) and linear modules, and linear
    calls on parameters (what the export frontend captures)."""
    keep = graph.keep_mask(removed_units)
    sites = []
    for node in graph.traced.gm.graph.nodes:
        rule = graph.rules.get(node.name)
        if rule is None or not rule.refits or node.op not in ("call_module", "call_function"):
            continue
        weight = rule.weight_of(node)
        if weight is None or weight not in graph.params:
            continue
        if node.op == "call_module" and getattr(graph.ctx.modules[node.target], "groups", 1) != 1:
            continue
        if node.op == "call_function" and rule.name != "linear":
            continue  # functional convs carry groups/padding as arguments: not refitted
        src = node.args[0]
        axes = graph.ctx.axes.get(src.name) if isinstance(src, fx.Node) else None
        if not isinstance(axes, list):
            continue
        dim = rule.producer_dim % len(axes)  # its input channels sit where it makes its own
        if not axes[dim].full or keep[axis_ids(axes[dim])].all():
            continue  # part of a reshaped block, or nothing removed from this input
        info = graph.params[weight]
        kept = kept_positions(info.order.get(1, info.axes[1]), keep)
        removed = np.setdiff1d(np.arange(info.shape[1]), kept)
        if not removed.size:
            continue
        if info.shape[1] > MAX_FEATURES and method != "mean":
            report.skipped.append((node.name, f"{info.shape[1]} input features > {MAX_FEATURES}"))
            continue
        out_kept = kept_positions(info.order.get(0, info.axes[0]), keep)
        target = weight.rpartition(".")[0]
        sites.append(Site(node.name, target, src.name, dim, kept, removed, out_kept))
    return sites


def collect(graph: ChannelGraph, sites: list[Site], data, max_batches,
            first_only: bool = False) -> dict:
    stats = {(s.input, s.dim): Moments(first_only) for s in sites}
    if stats:
        run_taps(graph, stats, data, max_batches=max_batches)
    return stats


def solve(mu: torch.Tensor, cov: torch.Tensor, kept: np.ndarray, removed: np.ndarray,
          method: str, ridge: float) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(A, c) with x_R ~ A x_K + c (A None: zero)."""
    k, r = torch.as_tensor(kept), torch.as_tensor(removed)
    if method == "mean":  # FLAP's bias compensation: the removed inputs at their mean
        return None, mu[r]
    s_kk, s_rk = cov[k][:, k], cov[r][:, k]
    if method == "lstsq":
        lam = ridge * float(torch.diagonal(s_kk).mean().clamp_min(1e-12))
        a = torch.linalg.solve(s_kk + lam * torch.eye(len(k), dtype=cov.dtype), s_rk.T).T
    else:
        var_k = torch.diagonal(s_kk).clamp_min(1e-12)
        var_r = torch.diagonal(cov)[r].clamp_min(1e-12)
        corr = s_rk / torch.sqrt(var_r[:, None] * var_k[None, :])
        partner = corr.abs().argmax(1)
        a = torch.zeros_like(s_rk)
        rows = torch.arange(len(r))
        a[rows, partner] = s_rk[rows, partner] / var_k[partner]
    return a, mu[r] - a @ mu[k]


def apply(pruned: fx.GraphModule, graph: ChannelGraph, sites: list[Site], stats: dict,
          method: str, ridge: float, report: CompensationReport) -> dict[str, torch.Tensor]:
    """Correct the consumers of ``pruned`` in place; returns their uncompensated tensors
    (by qualified name) so verify can still prove the structural rewrite exact."""
    before: dict[str, torch.Tensor] = {}
    for site in sites:
        st = stats[(site.input, site.dim)]
        if st.count == 0:
            report.skipped.append((site.node, "no calibration samples"))
            continue
        try:
            dw, db = _correction(graph, site, st, method, ridge)
        except (RuntimeError, FloatingPointError) as exc:  # this consumer stays as pruned
            report.skipped.append((site.node, first_line(exc)))
            continue
        mod = pruned.get_submodule(site.target)
        before[f"{site.target}.weight"] = mod.weight.detach().clone()
        with torch.no_grad():
            if dw is not None:
                mod.weight.add_(dw.to(mod.weight.dtype))
            if getattr(mod, "bias", None) is None:
                before[f"{site.target}.bias"] = None
                mod.bias = torch.nn.Parameter(db.to(mod.weight.dtype))
                _read_bias(pruned, site)
            else:
                before[f"{site.target}.bias"] = mod.bias.detach().clone()
                mod.bias.add_(db.to(mod.bias.dtype))
        report.sites.append(site.node)
    return before


def _correction(graph: ChannelGraph, site: Site, st, method: str, ridge: float
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The weight and bias corrections of one consumer (float64); never non-finite."""
    mu, cov = st.mean_cov()
    a, c = solve(mu, cov, site.kept, site.removed, method, ridge)
    w = graph.traced.tensors[f"{site.target}.weight"].detach().double()
    w_r = w[:, torch.as_tensor(site.removed)]
    rows = torch.as_tensor(site.out_kept)
    dw = None if a is None else torch.einsum("or...,rk->ok...", w_r, a)[rows]
    db = torch.einsum("or...,r->o", w_r, c)[rows]
    if not (torch.isfinite(db).all() and (dw is None or torch.isfinite(dw).all())):
        raise FloatingPointError("the fit is not finite")
    return dw, db


def _read_bias(pruned: fx.GraphModule, site: Site) -> None:
    """A linear call that had no bias reads the new one (module calls read it themselves)."""
    node = next((n for n in pruned.graph.nodes if n.name == site.node), None)
    if node is None or node.op != "call_function":
        return
    with pruned.graph.inserting_before(node):
        bias = pruned.graph.get_attr(f"{site.target}.bias")
    node.args = (*node.args[:2], bias)
    pruned.recompile()


def restore(module: torch.nn.Module, before: dict[str, torch.Tensor | None]) -> None:
    """Put the uncompensated tensors back (on a copy, for verification)."""
    for qual, t in before.items():
        owner, _, local = qual.rpartition(".")
        mod = module.get_submodule(owner)
        if t is None:
            setattr(mod, local, None)
        else:
            getattr(mod, local).data.copy_(t)


def compensate(pruned: fx.GraphModule, graph: ChannelGraph, removed_units: np.ndarray, data,
               *, method: str = "lstsq", ridge: float = 1e-3,
               max_batches: int | None = None) -> tuple[CompensationReport, dict]:
    """Refit the consumers of ``pruned`` in place (``method`` and ``ridge`` as validated by
    ``options.CompensationOptions``); returns the report and the uncompensated tensors."""
    report = CompensationReport(method)
    sites = find_sites(graph, removed_units, report, method)
    stats = collect(graph, sites, data, max_batches, first_only=method == "mean")
    before = apply(pruned, graph, sites, stats, method, ridge, report)
    log.info("%s", report)
    return report, before
