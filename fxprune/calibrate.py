"""Streaming calibration: run batches through a copy of the traced graph with *tap* calls
inserted after chosen nodes. Each tap feeds a running statistic, so memory is O(C) or O(C^2)
per tap, never O(images x C x H x W). The generated code runs (no per-node interpreter).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.fx as fx

from .analyze.elements import axis_ids
from .analyze.graph import ChannelGraph
from .errors import OptionError
from .util import eval_mode

log = logging.getLogger(__name__)


class Statistic(Protocol):
    """A running statistic of one tapped tensor, given as (N, C, *rest) with channels at 1."""

    def update(self, x: torch.Tensor) -> None: ...


@dataclass
class Tap:
    """A tensor dim to observe: ``labels[p]`` is the unit of channel position ``p``."""

    node: str
    dim: int
    labels: np.ndarray

    @property
    def key(self) -> tuple[str, int]:
        return (self.node, self.dim)


TAP_POINTS = ("post_act", "post_act_all", "producer")


def tap_points(graph: ChannelGraph, where: str = "post_act") -> list[Tap]:
    """Where a group's channels are observed, deduplicated.

    Each producer (conv / linear output) is followed through channel-wise ops (norm,
    activation, residual add, SE scaling) while it has a single user, so a residual stream is
    observed after its add, as CFDP's code does. ``"post_act"`` (default) then observes each
    set of units once, at the LAST such tensor: a depthwise chain at the depthwise output its
    consumer reads, a residual stream at the stage's final sum, which holds every block's
    contribution (half the work on inverted-residual nets, a third on ResNet-50).
    ``"post_act_all"`` keeps every producer's tap (scores then sum over them);
    ``"producer"`` observes each producer's own output.
    """
    if where not in TAP_POINTS:
        raise OptionError(f"tap point {where!r}: use one of {', '.join(TAP_POINTS)}")
    taps: dict[tuple[str, int], Tap] = {}
    for node in graph.traced.gm.graph.nodes:
        rule = graph.rules.get(node.name)
        if rule is None or rule.producer_dim is None:
            continue
        spec = graph.traced.values.get(node.name)
        if getattr(spec, "shape", None) is None or len(spec.shape) < 2:
            continue
        dim = rule.producer_dim % len(spec.shape)
        end = node if where == "producer" else follow(graph, node)
        tap = _tap_for(graph, end, node, dim)
        if tap is not None:
            taps.setdefault(tap.key, tap)
    if where == "post_act":  # one tap per set of units: the last tensor that carries it
        order = {n.name: i for i, n in enumerate(graph.traced.gm.graph.nodes)}
        last = {t.labels.tobytes(): t for t in sorted(taps.values(), key=lambda t: order[t.node])}
        return sorted(last.values(), key=lambda t: order[t.node])
    return list(taps.values())


def follow(graph: ChannelGraph, node: fx.Node) -> fx.Node:
    """The last tensor reached from ``node`` through single-user, shape-keeping channel-wise
    ops (norm, activation, residual add, SE scaling): where its channels are observed."""
    shape = graph.traced.values[node.name].shape
    while len(node.users) == 1:
        user = next(iter(node.users))
        spec = graph.traced.values.get(user.name)
        rule = graph.rules.get(user.name)
        if rule is None or not rule.channelwise or getattr(spec, "shape", None) != shape:
            break
        node = user
    return node


def _tap_for(graph: ChannelGraph, node: fx.Node, producer: fx.Node, dim: int) -> Tap | None:
    axes = graph.ctx.axes.get(node.name)
    if not isinstance(axes, list) or dim >= len(axes) or not axes[dim].full:
        log.debug("no tap for %s: its channel axis is part of a reshaped block", producer.name)
        return None
    return Tap(node.name, dim, graph.labels[axis_ids(axes[dim])])


class _TapModule(torch.nn.Module):
    def __init__(self, stat: Statistic, dim: int):
        super().__init__()
        self.stat, self.dim = stat, dim

    def forward(self, x: torch.Tensor) -> None:
        self.stat.update(x.detach().movedim(self.dim, 1))


def split_item(item: Any, n_inputs: int) -> tuple[tuple, Any]:
    """A calibration item as (model inputs, target): a tensor is one input; a tuple/list
    holds the inputs first and an optional target after them (a DataLoader's ``(x, y)``)."""
    if isinstance(item, torch.Tensor):
        return (item,), None
    if isinstance(item, (tuple, list)):
        inputs = tuple(item[:n_inputs])
        return inputs, (item[n_inputs] if len(item) > n_inputs else None)
    raise OptionError(f"calibration items must be tensors or (inputs..., target) tuples, got "
                    f"{type(item).__name__}")


def batches(data: Iterable, n_inputs: int, max_batches: int | None,
            split: Callable[[Any], tuple[tuple, Any]] | None = None) -> Iterable[tuple]:
    """(inputs, target) pairs, at most ``max_batches``, with a progress bar on long runs.
    ``split`` turns an item into them (a model called with keywords takes dict items)."""
    try:
        total = len(data)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if max_batches is not None:
        total = min(total, max_batches) if total is not None else max_batches
    it = iter(data)
    bar = _progress(total)
    count = 0
    while max_batches is None or count < max_batches:
        try:
            item = next(it)
        except StopIteration:
            break
        count += 1
        if bar is not None:
            bar.update(1)
        yield split(item) if split is not None else split_item(item, n_inputs)
    if bar is not None:
        bar.close()
    if count == 0:
        raise OptionError("calibration data yielded no batch")


def _progress(total: int | None):
    if total is None or total < 20:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # optional: no bar without tqdm
        return None
    return tqdm(total=total, desc="fxprune calibration", leave=False, disable=None)


def run_taps(graph: ChannelGraph, stats: dict[tuple[str, int], Statistic], data: Iterable, *,
             max_batches: int | None = None, n_inputs: int | None = None) -> int:
    """Feed every batch of ``data`` through the traced model, updating ``stats`` (keyed by
    (node, dim)). Eval mode, no grad; the caller's modules are shared, never changed.
    Returns the number of batches seen."""
    gm = tapped_module(graph.traced.gm,
                       [(name, _TapModule(stat, dim)) for (name, dim), stat in stats.items()])
    n_inputs = n_inputs or len(graph.traced.example_inputs)
    seen = 0
    with torch.no_grad(), eval_mode(gm):
        for inputs, _ in batches(data, n_inputs, max_batches, graph.traced.split_batch):
            gm(*inputs)
            seen += 1
    reduce_across_ranks(stats.values())
    return seen


def reduce_across_ranks(stats: Iterable[Statistic]) -> None:
    """With a ``torch.distributed`` process group, each rank saw its own batches: summing
    the running sums gives every rank the statistics of all of them (the scores of one
    process that saw everything). A statistic that is not a plain running sum says so."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for stat in stats:
        reduce = getattr(stat, "all_reduce", None)
        if reduce is None:
            raise OptionError(f"{type(stat).__name__} statistics cannot be combined across "
                              "torch.distributed ranks; calibrate on one process")
        reduce()


def all_reduce_fields(stat: Any, names: Iterable[str]) -> None:
    """Sum these tensor / int attributes of ``stat`` over all ranks (in place)."""
    import torch.distributed as dist

    for name in names:
        value = getattr(stat, name)
        if isinstance(value, torch.Tensor):
            dist.all_reduce(value)
        elif isinstance(value, (int, float)):
            t = torch.tensor([value], dtype=torch.float64)
            dist.all_reduce(t)
            setattr(stat, name, type(value)(t.item()))


def tapped_module(gm: fx.GraphModule,
                  taps: list[tuple[str, torch.nn.Module]]) -> fx.GraphModule:
    """A GraphModule over ``gm``'s modules (shared, not copied) whose graph calls each tap
    module on the value of its node right after that node."""
    graph = copy.deepcopy(gm.graph)
    root = torch.nn.Module()
    for name, child in gm.named_children():
        root.add_module(name, child)
    for name, t in list(gm.named_parameters(recurse=False)) + list(
            gm.named_buffers(recurse=False)):
        setattr(root, name, t)
    nodes = {n.name: n for n in graph.nodes}
    for i, (name, module) in enumerate(taps):
        target = f"_fxprune_tap{i}"
        root.add_module(target, module)
        with graph.inserting_after(nodes[name]):
            graph.call_module(target, (nodes[name],))
    return fx.GraphModule(root, graph, "Tapped")


def per_unit(graph: ChannelGraph, taps: list[Tap], values: dict[tuple[str, int], np.ndarray],
             fallback: Callable[[], np.ndarray] | None = None) -> np.ndarray:
    """Sum per-channel values of every tap into unit scores; units no tap observes get the
    ``fallback`` scores (scaled below the tapped ones is not attempted: groups are ranked
    on their own, and a group is either tapped whole or not at all)."""
    n = len(graph.labels)
    acc = np.zeros(n)
    seen = np.zeros(n, dtype=bool)
    for tap in taps:
        v = np.asarray(values[tap.key], dtype=np.float64).reshape(-1)
        acc += np.bincount(tap.labels, v, n)
        seen[tap.labels] = True
    if fallback is not None and not seen.all():
        acc = np.where(seen, acc, fallback())
    return acc
