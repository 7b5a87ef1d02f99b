"""The caller's model is left alone on every public path: its tensors bit-identical, every
module's ``training`` flag and every parameter's ``requires_grad`` as they were, no hook
added; and editing it afterwards changes neither the pruned model nor ``verify``."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = F.relu(self.bn_a(self.a(x)))
        y = F.relu(self.bn_b(self.b(y))) + y
        return self.fc(y.mean((2, 3)))


def _model():
    torch.manual_seed(0)
    m = Net()
    m.train()
    m.bn_a.eval()  # a user freezing one BN
    m.a.bias.requires_grad_(False)
    with torch.no_grad():  # BN statistics that are not the defaults
        for bn in (m.bn_a, m.bn_b):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return m


def _snapshot(m):
    return ({k: v.clone() for k, v in m.state_dict().items()},
            {n: s.training for n, s in m.named_modules()},
            {n: p.requires_grad for n, p in m.named_parameters()},
            {n: (len(s._forward_hooks), len(s._forward_pre_hooks), len(s._backward_hooks))
             for n, s in m.named_modules()},
            {n: sorted(vars(s)) for n, s in m.named_modules()})


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
DATA = [torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
LABELLED = [(x, torch.randint(0, 4, (4,), generator=torch.Generator().manual_seed(9)))
            for x in DATA]


def _compress(**kw):
    return lambda m: fxprune.compress(m, X, **kw)


def _report_methods(tmp_path):
    def run(m):
        gm = fxprune.compress(m, X, ratio=0.5)
        r = gm.meta["fxprune"].report
        r.summary(), r.to_markdown(), r.to_dict(), r.layers()
        r.plot(tmp_path / "kept.png")
        return gm
    return run


def _save_load(tmp_path):
    def run(m):
        gm = fxprune.compress(m, X, ratio=0.5)
        fxprune.save(gm, tmp_path / "art")
        return fxprune.load(tmp_path / "art", lambda: m)
    return run


def _apply_plan(m):
    plan = fxprune.compress(_model(), X, ratio=0.5).meta["fxprune"].plan
    return fxprune.apply_plan(m, plan, X)


def _analyze(m):
    graph = fxprune.analyze(m, X)
    removed = graph.groups[0].units[:2]
    return fxprune.PruneChannels(graph, removed)(graph.traced.gm).graph_module


PATHS = {
    **{f"importance={name}": _compress(importance=name, calibration=DATA)
       for name in ("l1", "l2", "bn_scale", "random", "cfdp", "qsfm", "qsfm_merge", "hrank")},
    "importance=taylor": _compress(importance="taylor", calibration=LABELLED,
                                   loss_fn=F.cross_entropy),
    "compensate=lstsq": _compress(calibration=DATA, compensate="lstsq"),
    "compensate=merge": _compress(calibration=DATA, compensate="merge"),
    "compensate=sequential": _compress(calibration=DATA, compensate="sequential"),
    "recalibrate=bn": _compress(calibration=DATA, recalibrate="bn"),
    "sequential + bn": _compress(calibration=DATA, compensate="sequential", recalibrate="bn"),
    "target_flops": _compress(target_flops=0.6),
    "target_params": _compress(target_params=0.6),
    "steps=2": _compress(ratio=0.5, steps=2, callback=lambda gm, step: None),
    "prune_inputs": _compress(prune_inputs=True),
    "plan=": lambda m: fxprune.compress(
        m, X, plan=fxprune.compress(_model(), X).meta["fxprune"].plan),
    "apply_plan": _apply_plan,
    "analyze+PruneChannels": _analyze,
}


@pytest.mark.parametrize("path", sorted(PATHS) + ["report methods", "save/load"])
def test_the_callers_model_is_untouched(path, tmp_path):
    fn = {"report methods": _report_methods(tmp_path),
          "save/load": _save_load(tmp_path)}.get(path) or PATHS[path]
    m = _model()
    before = _snapshot(m)
    gm = fn(m)
    after = _snapshot(m)
    assert after[0].keys() == before[0].keys()
    assert all(torch.equal(after[0][k], before[0][k]) for k in before[0])
    assert after[1:] == before[1:]
    if path == "analyze+PruneChannels":
        return  # analyze shares the caller's parameters by design (the regularisers)
    x = X[:, : gm.meta["fxprune"].report.models.pruned_inputs[0].shape[1]] \
        if path == "prune_inputs" else X
    with torch.no_grad():
        out = gm.eval()(x).clone()
        for p in m.parameters():  # the user edits their model afterwards
            p.add_(1.0)
        m.bn_b.running_mean.add_(1.0)
        assert torch.equal(gm(x), out)
    if path != "save/load":  # a loaded artifact has no original to verify against
        result = fxprune.verify(gm)
        assert result.ok, result


def _export(**kw):
    return lambda m: fxprune.compress(m, X, frontend="export", **kw)


EXPORT_PATHS = {
    "export, module output": _export(),
    "export, graph output": _export(output="graph"),
    "export, cfdp + lstsq": _export(importance="cfdp", calibration=DATA, compensate="lstsq"),
    "export, merge": _export(calibration=DATA, compensate="merge"),
    "export, sequential + bn": _export(calibration=DATA, compensate="sequential",
                                       recalibrate="bn"),
    "export graph, sequential + bn": _export(calibration=DATA, compensate="sequential",
                                             recalibrate="bn", output="graph"),
    "export, target_flops": _export(target_flops=0.6),
}


@pytest.mark.parametrize("path", sorted(EXPORT_PATHS))
def test_the_callers_model_is_untouched_through_export(path):
    m = _model()
    before = _snapshot(m)
    out = EXPORT_PATHS[path](m)
    after = _snapshot(m)
    assert all(torch.equal(after[0][k], before[0][k]) for k in before[0])
    assert after[1:] == before[1:]
    if "module" in path or "graph" not in path:
        assert type(out) is Net
    with torch.no_grad():
        y = out.eval()(X).clone()
        for p in m.parameters():
            p.add_(1.0)
        assert torch.equal(out(X), y)
    result = fxprune.verify(out)  # the module itself (or the graph) against the original
    assert result.ok, result
    graph = fxprune.result_of(out).report.models.pruned  # compensated tensors reached the module
    with torch.no_grad():
        assert torch.allclose(graph.eval()(X), out(X), atol=1e-5)


SHARED = {
    "l2": _compress(copy_weights=False),
    "cfdp + lstsq": _compress(copy_weights=False, importance="cfdp", calibration=DATA,
                              compensate="lstsq"),
    "export, module output": _export(copy_weights=False),
    "export, graph output": _export(copy_weights=False, output="graph"),
}


@pytest.mark.parametrize("path", sorted(SHARED))
def test_shared_weights_are_read_and_never_written(path):
    """copy_weights=False (a model too large to hold twice): fxprune reads the caller's own
    tensors - not one is written (versions unchanged), the result aliases none of them -
    and a verify after the caller edited them refuses instead of comparing to the edit."""
    m = _model()
    before = _snapshot(m)
    versions = {k: v._version for k, v in m.state_dict().items()}
    out = SHARED[path](m)
    assert all(torch.equal(m.state_dict()[k], v) for k, v in before[0].items())
    assert {k: v._version for k, v in m.state_dict().items()} == versions
    traced = fxprune.result_of(out).graph.traced
    ptrs = {t.untyped_storage().data_ptr() for t in m.state_dict().values()}
    assert {t.untyped_storage().data_ptr() for t in traced.tensors.values()} <= ptrs  # shared
    mine = list(out.parameters()) + list(out.buffers())
    assert not any(t.untyped_storage().data_ptr() in ptrs for t in mine)  # not aliased
    assert fxprune.verify(out).ok
    with torch.no_grad():
        y = out.eval()(X).clone()
        m.b.weight.add_(1.0)
        assert torch.equal(out(X), y)
    with pytest.raises(fxprune.OptionError, match="copy_weights=True"):
        fxprune.verify(out)


def test_weights_are_shared_by_default_only_above_the_threshold(monkeypatch):
    from fxprune import clone

    m = _model()
    assert not clone.shares_tensors(m, None) and clone.shares_tensors(m, False)
    monkeypatch.setattr(clone, "SHARE_ABOVE", clone.tensor_bytes(m) - 1)
    assert clone.shares_tensors(m, None) and not clone.shares_tensors(m, True)
    out = fxprune.compress(m, X, ratio=0.5)
    assert fxprune.result_of(out).graph.traced.shared_versions is not None
