"""The verifier can fail: each test plants one deliberate rule bug, prunes a model that
exercises the rule (the rewrite's own shape check off, so nothing downstream hides the bug),
and asserts that ``verify`` and the independent value oracle both reject the result. A model
that does not even run counts as rejected by both."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from oracle import check_by_values, distinct_values

import fxprune
from fxprune.analyze.elements import plain_axis
from fxprune.importance import get_importance
from fxprune.ops import layers, shape, slicing, table
from fxprune.ops.elementwise import Unary
from fxprune.options import SelectOptions
from fxprune.passes import PruneChannels
from fxprune.select import select
from fxprune.verify import check

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


class PermuteHead(nn.Module):  # permute(0, 2, 1, 3) puts the rows where b reads channels
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b, self.c = nn.Conv2d(8, 6, 1), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.c(F.relu(self.b(F.relu(self.a(x)).permute(0, 2, 1, 3))))


class CatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(10, 2, 1)

    def forward(self, x):
        return self.c(torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1))


class SplitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b, self.c = nn.Conv2d(3, 2, 1), nn.Conv2d(5, 2, 1)

    def forward(self, x):
        p, q = torch.split(F.relu(self.a(x)), [3, 5], 1)
        return self.b(p) + self.c(q)


class DepthwiseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.b = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.b(F.relu(self.dw(F.relu(self.a(x)))))


class ShuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.b(F.channel_shuffle(F.relu(self.a(x)), 2))


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.b(F.relu(self.bn(self.a(x))))


class ViewNet(nn.Module):  # a literal in view(): 8 channels x 64 positions
    def __init__(self):
        super().__init__()
        self.a, self.fc = nn.Conv2d(3, 8, 1), nn.Linear(512, 4)

    def forward(self, x):
        return self.fc(F.relu(self.a(x)).view(2, 512))


class SliceNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 2, 1)

    def forward(self, x):
        y = F.relu(self.a(x))
        return self.b(y[:, 2:5])


def _identity_permute(monkeypatch):
    for key in ("permute", "transpose"):
        monkeypatch.setitem(table.METHOD_RULES, key, Unary())


def _cat_off_by_one(monkeypatch):
    def analyze(self, ctx, node):
        tensors = list(node.args[0])
        axes = [ctx.axes_of(t) for t in tensors]
        out = list(axes[0])
        ids = np.concatenate([ctx.ids(a[1]) for a in axes])
        out[1] = plain_axis(np.roll(ids, 1))
        ctx.set_out(out)

    monkeypatch.setattr(slicing.Cat, "analyze", analyze)


def _split_not_rewritten(monkeypatch):
    monkeypatch.setattr(slicing.Split, "rewrite", lambda self, rctx, node: None)


def _groups_not_updated(monkeypatch):
    original = layers.Conv.rewrite

    def rewrite(self, rctx, node):
        mod = rctx.module(node.target)
        groups = mod.groups
        original(self, rctx, node)
        mod.groups = groups

    monkeypatch.setattr(layers.Conv, "rewrite", rewrite)


def _depthwise_as_dense(monkeypatch):
    original = layers.Conv._groups
    monkeypatch.setattr(layers.Conv, "_groups", lambda self, ctx, node: 1 if node.op ==
                        "call_module" and ctx.modules[node.target].groups > 1 and
                        type(ctx).__name__ == "AnalysisContext" else original(self, ctx, node))

    def link(self, info, dim, ax, role):  # the (C, 1, k, k) weight's dim 1 "reads" channels
        if info.shape[dim] != ax.size:
            info.roles[dim] = role
            return
        return real_link(self, info, dim, ax, role)

    from fxprune.analyze.context import AnalysisContext

    real_link = AnalysisContext.link
    monkeypatch.setattr(AnalysisContext, "link", link)


def _shuffle_as_elementwise(monkeypatch):
    monkeypatch.setitem(table.FUNCTION_RULES, F.channel_shuffle, Unary())


def _bn_stats_not_sliced(monkeypatch):
    rule = table.MODULE_RULES[nn.BatchNorm2d]
    monkeypatch.setattr(rule, "names", ((3, "weight"), (4, "bias")))


def _stale_view_literal(monkeypatch):
    monkeypatch.setattr(shape.Reshape, "rewrite", lambda self, rctx, node: None)


def _slice_bounds_kept(monkeypatch):
    monkeypatch.setattr(slicing.GetItem, "rewrite", lambda self, rctx, node: None)


MUTATIONS = {
    "permute treated as identity": (_identity_permute, PermuteHead),
    "concat offset off by one": (_cat_off_by_one, CatNet),
    "split size not rewritten": (_split_not_rewritten, SplitNet),
    "depthwise groups not updated": (_groups_not_updated, DepthwiseNet),
    "depthwise treated as dense": (_depthwise_as_dense, DepthwiseNet),
    "shuffle treated as elementwise": (_shuffle_as_elementwise, ShuffleNet),
    "BN statistics not sliced": (_bn_stats_not_sliced, BNNet),
    "stale literal in view": (_stale_view_literal, ViewNet),
    "slice bounds not rewritten": (_slice_bounds_kept, SliceNet),
}


def _prune(model, ratio=0.5):
    graph = fxprune.analyze(model, X)
    scores = get_importance("l2").scores(graph)
    removed = select(graph, scores, SelectOptions(ratio=ratio)).removed_units(graph)
    assert removed.size, "nothing removed: the mutation would not be exercised"
    pruned = PruneChannels(graph, removed, check=False)(graph.traced.gm).graph_module
    return graph, removed, pruned


def _verify_rejects(graph, removed, pruned) -> bool:
    try:
        result, _ = check(graph, removed, pruned, (X,))
    except Exception:  # noqa: BLE001 - the pruned model does not run: rejected
        return True
    return not result.ok


def _oracle_rejects(model, pruned) -> bool:
    try:
        check_by_values(model, pruned, (X,))
    except Exception:  # noqa: BLE001 - mismatch, missing values or a model that cannot run
        return True
    return False


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_verify_and_the_oracle_reject_a_planted_rule_bug(name, monkeypatch):
    plant, model_cls = MUTATIONS[name]
    torch.manual_seed(0)
    model = distinct_values(model_cls().eval())
    graph, removed, pruned = _prune(model)  # without the bug: both accept
    assert not _verify_rejects(graph, removed, pruned)
    assert not _oracle_rejects(model, pruned)
    plant(monkeypatch)
    graph, removed, pruned = _prune(model)
    assert _verify_rejects(graph, removed, pruned), name
    assert _oracle_rejects(model, pruned), name


def test_a_tampered_kept_weight_is_reported_by_verify():
    model = BNNet().eval()
    gm = fxprune.compress(model, X, ratio=0.5)
    assert fxprune.verify(gm).ok
    with torch.no_grad():
        gm.b.weight[0, 0, 0, 0] += 1e-3
    result = fxprune.verify(gm)
    assert not result.ok and "MISMATCH" in str(result)
    assert result.max_abs_err > 1e-6
