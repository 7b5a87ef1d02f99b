"""What an op rule sees while the channel graph is built: axes of values, params, and verbs.

Rules call ``tie``/``freeze``/``equal_count`` on element ids; they never touch union-find.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from ..frontends.base import TensorSpec, Traced
from .elements import Axis, Category, Comp, ElementSpace, axis_ids, plain_axis

Axes = list[Axis]


@dataclass
class ParamInfo:
    """A parameter or buffer: one plain axis per dim and who reads it how."""

    qualname: str
    shape: tuple[int, ...]
    axes: Axes
    roles: dict[int, str] = field(default_factory=dict)  # dim -> "out" (producer) / "in" / "norm"
    order: dict[int, Axis] = field(default_factory=dict)  # dim -> axis whose order it follows
    custom: bool = False  # the rule's rewrite builds the new tensor itself


@dataclass
class Consumer:
    """Slices of a param that read channels: zeroed by verify for removed units."""

    qualname: str
    dims: tuple[int, ...]
    ids: np.ndarray  # element ids, shape = param.shape[dims]


@dataclass
class NodeConsumer:
    """An op that contracts over channels of an activation (matmul, attention): verify zeroes
    the removed ones in operand ``arg`` along ``dim`` before the op."""

    node: str
    arg: int
    dim: int
    ids: np.ndarray


@dataclass(frozen=True)
class DerivedSize:
    """An int computed from the sizes of these dims (``C // heads``): it changes when any of
    them shrinks, so a literal must replace it where it sizes a pruned tensor."""

    axes: tuple[Axis, ...]


@dataclass
class EqualCount:
    """Every row of ``blocks`` (element ids) must keep the same number of positions;
    ``whole_blocks``: a row may also lose every position (a head), else each keeps one at
    least (a conv group cannot disappear)."""

    blocks: np.ndarray
    reason: str
    node: str
    whole_blocks: bool = True


class NodeView:
    """Reading a node's recorded values and the model's modules: what both the analysis and
    the rewrite context offer a rule's helpers."""

    values: dict[str, Any]
    modules: dict[str, torch.nn.Module]

    def value(self, arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            return self.values.get(arg.name)
        return arg

    def is_tensor(self, arg: Any) -> bool:
        return isinstance(self.value(arg), TensorSpec)

    def shape(self, arg: Any) -> tuple[int, ...]:
        """The example shape of a tensor argument (the original, unpruned one)."""
        v = self.value(arg)
        if isinstance(v, TensorSpec):
            return v.shape
        if isinstance(v, torch.Tensor):
            return tuple(v.shape)
        return ()


class AnalysisContext(NodeView):
    def __init__(self, traced: Traced, prune_inputs: bool = False, eager: bool = False,
                 table_dims: bool = False):
        self.traced = traced
        # the result re-runs the model's Python (module output): sizes it recomputes from
        # one attribute (``chunk(2)``, ``split((c, c))``, ``view(b, s, -1, head_dim)``) must
        # stay equal after pruning
        self.eager = eager
        # a per-position table read by every head (RoPE's cos/sin): prune its dims (the same
        # dims in every head, the table sliced) instead of whole heads
        self.table_dims = table_dims
        self.split_sizes: dict[tuple[str, int], list[Comp]] = {}  # (module, literal) -> comps
        self.gm = traced.gm
        self.values = traced.values
        self.space = ElementSpace()
        self.modules = traced.modules
        self.prune_inputs = prune_inputs  # the inputs' feature axis may shrink (passes/inputs)
        self.axes: dict[str, Any] = {}
        self.params: dict[str, ParamInfo] = {}
        self.consumers: list[Consumer] = []
        self.node_consumers: list[NodeConsumer] = []
        self.block_ties: list[tuple[Axis, Axis]] = []  # head dims that must drop together
        self.approx: list[tuple[np.ndarray, str, str]] = []  # ids, reason, node
        self.constraints: list[EqualCount] = []
        self.node: fx.Node | None = None
        self._subcomps: dict[tuple[int, int, int], Comp] = {}
        self.sizes: dict[str, Any] = {}  # size-valued node -> Axis, list or DerivedSize
        self.whole: set[str] = set()  # nodes whose every axis is frozen: nothing to rewrite

    def out_shape(self) -> tuple[int, ...]:
        return self.shape(self.node)

    def axes_of(self, arg: Any) -> Axes:
        """Axes of a tensor argument; a constant tensor gets fresh frozen axes."""
        if isinstance(arg, fx.Node):
            got = self.axes.get(arg.name)
            if isinstance(got, list):
                return got
        return self.fresh(self.shape(arg), frozen="constant tensor")

    # ---- making axes ------------------------------------------------------------------
    def fresh(self, shape: tuple[int, ...], frozen: str | None = None,
              category: str = Category.OP) -> Axes:
        """New axes; ``frozen`` (a reason) keeps them whole."""
        out = [plain_axis(self.space.alloc(n)) for n in shape]
        if frozen:
            for ax in out:
                self.freeze(ax, frozen, category)
        return out

    def param(self, qualname: str) -> ParamInfo:
        info = self.params.get(qualname)
        if info is None:
            t = self.traced.tensors[qualname]
            shape = tuple(t.shape)
            info = ParamInfo(qualname, shape, [plain_axis(self.space.alloc(n)) for n in shape])
            self.params[qualname] = info
        return info

    # ---- verbs ------------------------------------------------------------------------
    def ids(self, ax: Axis, keep_order: bool = False) -> np.ndarray:
        """Element ids along a tensor dim.

        A ragged comp is collapsed unless the caller is order-aware (``keep_order``) and the
        axis covers the whole comp: then the rewrite follows the comp's compacted order.
        """
        comp = ax.comp
        if comp.is_ragged and not (keep_order and ax.full):
            carrier = comp.ragged if comp.ragged in ax.ldims else ax.ldims[0]
            self.space.collapse(comp, carrier)
        if ax.full:
            return axis_ids(ax)
        # a partial dim of a product-shaped comp: one representative per coordinate
        car = comp.carrier
        if len(ax.ldims) == 1 and ax.ldims[0] == car:
            return np.moveaxis(comp.ids, car, 0).reshape(comp.ids.shape[car], -1)[:, 0]
        fresh = self.space.alloc(ax.size)  # a factor that keeps its size
        self.space.freeze(fresh, "factor of a reshaped dim", self._where())
        if car is not None and car in ax.ldims:  # mixed partial use: keep the whole comp
            self.space.tie_all(comp.ids)
            self.space.freeze(comp.ids.reshape(-1)[:1], "mixed use of a reshaped dim",
                              self._where())
        return fresh

    def select_block(self, axes: Axes, d: int, index: int) -> Axes | None:
        """Axes after ``x[..., index, ...]`` on dim ``d`` when ``d`` is a block (head-like) dim
        of a ragged comp: the other dims of that comp become a sub-comp with the same elements
        (q, k, v out of one qkv reshape). None when ``d`` is not such a dim."""
        ax = axes[d]
        comp = ax.comp
        if not (comp.is_ragged and len(ax.ldims) == 1 and ax.ldims[0] != comp.ragged):
            return None
        ld = ax.ldims[0]
        comp.fixed.add(ld)
        key = (id(comp), ld, index)
        sub = self._subcomps.get(key)
        if sub is None:
            ids = np.take(comp.ids, index, axis=ld)
            sub = self.new_comp(ids, ragged=comp.ragged - (1 if comp.ragged > ld else 0))
            sub.parent, sub.picked = comp, ld
            self._subcomps[key] = sub
        out = []
        for k, other in enumerate(axes):
            if k == d:
                continue
            if other.comp is comp:
                other = Axis(sub, tuple(x - (1 if x > ld else 0) for x in other.ldims))
            out.append(other)
        return out

    def kept_whole(self, ax: Axis) -> bool:
        """This dim cannot shrink: a factor other than its comp's carrier, or ids frozen
        directly (a dim merged from such factors)."""
        comp = ax.comp
        if comp.ids.ndim > 1:
            return comp.carrier is not None and comp.carrier not in ax.ldims
        frozen = [f.ids for f in self.space.frozen]
        return bool(frozen) and bool(np.isin(comp.ids, np.concatenate(frozen)).all())

    def new_comp(self, ids: np.ndarray, ragged: int | None = None) -> Comp:
        """A multi-dim comp made by the current node (a reshape that splits a dim)."""
        return self.space.new_comp(ids, ragged, self._where())

    def tie(self, a: Axis, b: Axis) -> None:
        if a.comp is b.comp and a.ldims == b.ldims:
            return
        if a.size != b.size:
            raise AssertionError(f"tie of sizes {a.size} and {b.size} at {self._where()}")
        self.space.tie(self.ids(a), self.ids(b))

    def tie_ids(self, a: np.ndarray, b: np.ndarray) -> None:
        self.space.tie(a, b)

    def freeze(self, ax: Axis | np.ndarray, reason: str, category: str = Category.OP) -> None:
        if isinstance(ax, Axis) and not ax.full:  # a factor keeps its size; no carrier chosen
            ax.comp.fixed.update(ax.ldims)
            return
        ids = self.ids(ax) if isinstance(ax, Axis) else ax
        self.space.freeze(ids, reason, self._where(), category)

    def freeze_all(self, reason: str, category: str = Category.UNSUPPORTED) -> None:
        """An op fxprune does not understand: every axis it touches keeps all its elements."""
        for arg in _flat_args(self.node):
            if self.is_tensor(arg):
                for ax in self.axes_of(arg):
                    self.freeze(ax, reason, category)
        for ax in _flat_axes(self.axes.get(self.node.name)):
            self.freeze(ax, reason, category)
        self.whole.add(self.node.name)

    def equal_count(self, blocks: np.ndarray, reason: str, whole_blocks: bool = True) -> None:
        if blocks.shape[0] > 1 and blocks.shape[1] > 0:
            self.constraints.append(EqualCount(np.asarray(blocks), reason, self._where(),
                                               whole_blocks))

    def approximate(self, ids: np.ndarray, reason: str) -> None:
        """Removing these elements changes other channels' values (LayerNorm statistics)."""
        self.approx.append((np.asarray(ids).reshape(-1), reason, self._where()))

    def node_consumer(self, arg: int, dim: int, ids: np.ndarray) -> None:
        self.node_consumers.append(NodeConsumer(self.node.name, arg, dim, np.asarray(ids)))

    def consumer(self, qualname: str, dims: tuple[int, ...], ids: np.ndarray) -> None:
        self.consumers.append(Consumer(qualname, dims, ids))

    def link(self, info: ParamInfo, dim: int, ax: Axis, role: str) -> None:
        """Tie a param dim to a tensor axis; the param's pruned order follows the tensor's."""
        ids = self.ids(ax, keep_order=True)
        self.space.tie(info.axes[dim].comp.ids, ids)
        if info.roles.get(dim) in (None, "attr"):
            info.roles[dim] = role
        if ax.comp.is_ragged:
            info.order[dim] = ax
        if role == "in":
            self.consumer(info.qualname, (dim,), info.axes[dim].comp.ids)

    def set_out(self, axes: Any) -> None:
        self.axes[self.node.name] = axes

    def _where(self) -> str:
        return self.node.name if self.node is not None else ""


def _flat_args(node: fx.Node) -> list[Any]:
    out: list[Any] = []
    fx.node.map_aggregate((node.args, node.kwargs), lambda a: out.append(a) or a)
    return out


def _flat_axes(val: Any) -> list[Axis]:
    if isinstance(val, list) and (not val or isinstance(val[0], Axis)):
        return list(val)
    if isinstance(val, (list, tuple)):
        return [ax for v in val for ax in _flat_axes(v)]
    return []


__all__ = ["AnalysisContext", "Axes", "Comp", "Consumer", "EqualCount", "NodeConsumer",
           "NodeView", "ParamInfo"]
