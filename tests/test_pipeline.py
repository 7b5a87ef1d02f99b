"""The pipeline's own contract: stages timed in order, calibration read once even when the
rewrite retries, options validated before any work, options recorded on the result, the pass
honouring the module it is handed, and plugins registered from outside the package."""

import copy
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import verified_on_fresh

import fxprune
from fxprune.analyze.elements import Category
from fxprune.options import CompressOptions, SelectOptions


class SizeShuffle(nn.Module):
    """A shuffle whose channel count comes from ``numel()``, which fxprune does not trace to
    a dim: the rewrite cannot follow a pruned ``c`` there, so it freezes that node and
    retries."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(4, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = F.relu(self.a(x))
        n, _, h, w = y.size()
        c = y.numel() // (n * h * w)
        y = y.view(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.c(F.relu(self.b(y)))


class Counted:
    """Calibration batches that count how often they are iterated and how many are read."""

    def __init__(self, n=3):
        g = torch.Generator().manual_seed(0)
        self.items = [torch.randn(4, 3, 6, 6, generator=g) for _ in range(n)]
        self.passes = self.read = 0

    def __iter__(self):
        self.passes += 1
        for x in self.items:
            self.read += 1
            yield x


@pytest.mark.parametrize("importance", ["cfdp", "qsfm", "hrank"])
def test_calibration_runs_once_although_the_rewrite_retries(importance):
    data = Counted()
    gm = fxprune.compress(SizeShuffle().eval(), torch.randn(1, 3, 6, 6), ratio=0.5,
                          importance=importance, calibration=data)
    report = gm.meta["fxprune"].report
    assert any(f.category == Category.REWRITE for f in report.frozen)  # it did retry
    assert (data.passes, data.read) == (1, 3)
    assert gm.b.out_channels == 4 and gm.a.out_channels == 4  # b pruned, the shuffle kept
    assert verified_on_fresh(gm).ok


def test_compensation_reads_the_data_a_second_time_only():
    data = Counted()
    fxprune.compress(SizeShuffle().eval(), torch.randn(1, 3, 6, 6), importance="cfdp",
                     calibration=data, compensate="lstsq")
    assert (data.passes, data.read) == (2, 6)


def test_every_stage_is_timed_in_order():
    data = Counted()
    gm = fxprune.compress(SizeShuffle().eval(), torch.randn(1, 3, 6, 6), importance="cfdp",
                          calibration=data, compensate="lstsq")
    assert list(gm.meta["fxprune"].report.timings) == [
        "trace", "analyze", "score", "select", "rewrite", "materialize", "verify", "compensate",
        "recalibrate", "report"]


class Untraceable(nn.Module):
    """Tracing this raises: an error that comes out first was raised before any work."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        raise AssertionError("the model was run")


X = torch.randn(1, 3, 6, 6)
DATA = [torch.randn(2, 3, 6, 6)]


@pytest.mark.parametrize("kw,error,words", [
    (dict(ratio=1.5), fxprune.SelectionError, "ratio must be in [0, 1)"),
    (dict(ratios={"a": -0.1}), fxprune.SelectionError, "ratios['a']"),
    (dict(round_to=0), fxprune.SelectionError, "round_to"),
    (dict(tap="nowhere"), fxprune.OptionError, "tap point 'nowhere'"),
    (dict(max_batches=0), fxprune.OptionError, "max_batches"),
    (dict(compensate="bogus"), fxprune.OptionError, "compensate='bogus'"),
    (dict(compensate="lstsq"), fxprune.OptionError, "pass calibration="),
    (dict(importance="cfdp"), fxprune.OptionError, "ranks channels from activations"),
    (dict(importance="taylor", calibration=DATA), fxprune.OptionError, "loss_fn"),
    (dict(importance="nope"), fxprune.OptionError, "unknown importance 'nope'"),
    (dict(target_flops=0.5, target_params=0.5), fxprune.OptionError, "not both"),
    (dict(target_flops=-1), fxprune.OptionError, "must be > 0"),
    (dict(target_flops=0.5, threshold=0.1), fxprune.OptionError, "sets the selection"),
    (dict(steps=0), fxprune.OptionError, "steps must be >= 1"),
    (dict(steps=2, threshold=0.1), fxprune.OptionError, "not plan=/threshold="),
    (dict(leaf_modules=[3]), fxprune.TraceError, "leaf_modules takes"),
])
def test_bad_options_fail_before_any_work(kw, error, words):
    with pytest.raises(error) as info:
        fxprune.compress(Untraceable(), X, **kw)
    assert words in str(info.value)
    assert isinstance(info.value, fxprune.FxPruneError)


def test_option_errors_are_value_errors_too():
    with pytest.raises(ValueError):
        fxprune.compress(Untraceable(), X, tap="nowhere")


def test_result_records_the_options_and_pickles_without_the_data():
    def batches():  # a generator: not picklable, must not travel with the result
        yield torch.randn(2, 3, 6, 6)

    gm = fxprune.compress(SizeShuffle().eval(), X, ratio=0.3, importance="cfdp",
                          calibration=batches(), round_to=2, ridge=0.5)
    options = gm.meta["fxprune"].options
    assert isinstance(options, CompressOptions)
    assert options.select == SelectOptions(ratio=0.3, round_to=2, global_ranking=False)
    assert options.compensation.ridge == 0.5 and options.importance == "cfdp"
    again = pickle.loads(pickle.dumps(gm.meta["fxprune"]))
    assert again.options.calibration.data is None and again.options.select.ratio == 0.3


def test_prune_channels_slices_the_module_it_is_given():
    model = SizeShuffle().eval()
    graph = fxprune.analyze(model, X)
    group = next(g for g in graph.groups if g.name == "b.weight[0]")
    removed = group.units[:3]
    other = copy.deepcopy(graph.traced.gm)
    with torch.no_grad():
        other.b.weight.mul_(3.0)  # an earlier pass changed the weights
    out = fxprune.PruneChannels(graph, removed)(other).graph_module
    kept = np.setdiff1d(np.arange(8), fxprune.Plan().removed_units(graph))[3:]
    assert torch.equal(out.b.weight, other.b.weight[torch.as_tensor(kept)])
    assert torch.equal(other.b.weight, 3.0 * model.b.weight)  # the given module is untouched


def test_prune_channels_refuses_a_module_with_another_graph():
    graph = fxprune.analyze(SizeShuffle().eval(), X)
    stranger = torch.fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 1)))
    with pytest.raises(fxprune.RewriteError, match="different graph"):
        fxprune.PruneChannels(graph, graph.groups[0].units[:1])(stranger)


class FirstUnitsFirst(fxprune.Importance):
    """A toy plugin from outside the package: lower unit labels are more important."""

    name = "first_units_first"

    def scores(self, graph, calib=None):
        return -np.arange(len(graph.labels), dtype=np.float64)


def test_an_importance_registered_from_outside_the_package():
    fxprune.register("first_units_first", FirstUnitsFirst)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    with torch.no_grad():
        model[0].weight[:4] *= 1e-3  # magnitude would drop these first
        model[0].bias[:4] *= 1e-3
        model[2].weight[:, :4] *= 1e-3
    gm = fxprune.compress(model, X, ratio=0.5, importance="first_units_first")
    assert gm.meta["fxprune"].plan.removed == {"0.weight[0]": [4, 5, 6, 7]}
    assert verified_on_fresh(gm).ok
    l2 = fxprune.compress(model, X, ratio=0.5)
    assert l2.meta["fxprune"].plan.removed == {"0.weight[0]": [0, 1, 2, 3]}


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "fxprune", "--help"], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0 and "usage: fxprune" in out.stdout and "compress" in out.stdout


def test_calibration_follows_declared_capabilities_not_rule_names(monkeypatch):
    """A tap follows a producer through ops whose rule declares ``channelwise``; withdraw
    the declaration from the elementwise rule and the tap stays at the conv."""
    from fxprune.calibrate import tap_points
    from fxprune.ops import table

    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    graph = fxprune.analyze(model, X)
    assert [t.node for t in tap_points(graph)][:1] == ["_1"]  # the ReLU's output
    monkeypatch.setattr(type(table.MODULE_RULES[nn.ReLU]), "channelwise", False)
    graph = fxprune.analyze(model, X)
    assert [t.node for t in tap_points(graph)][:1] == ["_0"]  # the conv's own output
