"""Deploy: pickle-free save/load and plan replay, checked exports, report pictures."""

import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

import fxprune
from fxprune.deploy import ArtifactError, check_compile, export_onnx, export_pt2, fold_batchnorm
from fxprune.deploy.artifact import SAFETENSORS, TORCH


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding=1, stride=2), nn.BatchNorm2d(24), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 5)).eval()


def _data(n=3):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 12, 12, generator=g) for _ in range(n)]


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_save_load_round_trip_is_bit_identical(tmp_path, fmt):
    data = _data()
    # lstsq changes the kept weights, so equality proves the tensors are loaded, not re-derived
    gm = fxprune.compress(_net(), data[0][:1], ratio=0.4, calibration=data, compensate="lstsq")
    fxprune.save(gm, tmp_path / "a", tensor_format=fmt)
    assert (tmp_path / "a" / (SAFETENSORS if fmt == "safetensors" else TORCH)).exists()
    loaded = fxprune.load(tmp_path / "a", _net)
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(loaded(x), gm(x))
    replayed = fxprune.apply_plan(_net(), gm.meta["fxprune"].plan, data[0][:1])
    with torch.no_grad():  # the plan alone gives the structure with the fresh weights
        assert not torch.equal(replayed(x), gm(x))
    assert [m.shape for m in replayed.state_dict().values()] == \
        [m.shape for m in gm.state_dict().values()]


def test_iterative_result_round_trips(tmp_path):
    def tune(gm, step):
        with torch.no_grad():
            for p in gm.parameters():
                p.add_(0.01 * step)

    gm = fxprune.compress(_net(), torch.randn(1, 3, 12, 12), ratio=0.6, steps=2, callback=tune)
    fxprune.save(gm, tmp_path / "it")
    doc = json.loads((tmp_path / "it" / "fxprune.json").read_text())
    assert len(doc["history"]) == 2
    loaded = fxprune.load(tmp_path / "it", _net)
    x = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(loaded(x), gm(x))


class _Payload:
    """Unpickling this would create the marker file: a stand-in for malicious code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_tampered_tensor_file_is_refused_without_running_code(tmp_path):
    gm = fxprune.compress(_net(), torch.randn(1, 3, 12, 12), ratio=0.5)
    fxprune.save(gm, tmp_path / "t", tensor_format="torch")
    marker = tmp_path / "pwned"
    weights = tmp_path / "t" / TORCH
    good = torch.load(weights, weights_only=True)
    with open(weights, "wb") as f:  # a pickle that runs code when unpickled
        pickle.dump({"0.weight": _Payload(marker)}, f)
    with pytest.raises(ArtifactError, match="refusing"):
        fxprune.load(tmp_path / "t", _net)
    assert not marker.exists()
    torch.save({**good, "extra": _Payload(marker)}, weights)  # same, in torch's zip format
    with pytest.raises(ArtifactError, match="refusing"):
        fxprune.load(tmp_path / "t", _net)
    assert not marker.exists()


def test_tampered_safetensors_and_metadata_are_refused(tmp_path):
    gm = fxprune.compress(_net(), torch.randn(1, 3, 12, 12), ratio=0.5)
    fxprune.save(gm, tmp_path / "s")
    meta = tmp_path / "s" / "fxprune.json"
    doc = json.loads(meta.read_text())
    doc["history"][0]["removed"] = {}  # a plan that gives another structure
    meta.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="does not match"):
        fxprune.load(tmp_path / "s", _net)
    meta.write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        fxprune.load(tmp_path / "s", _net)
    fxprune.save(gm, tmp_path / "s")
    (tmp_path / "s" / SAFETENSORS).write_bytes(b"\x00" * 64)
    with pytest.raises(ArtifactError, match="not a valid tensor file"):
        fxprune.load(tmp_path / "s", _net)
    with pytest.raises(ArtifactError, match="no fxprune.json"):
        fxprune.load(tmp_path / "nothing", _net)


ONNX_MODELS = [
    ("resnet18", {}, 64),
    ("mobilenet_v2", {}, 64),
    ("vit_b_16", {"image_size": 32}, 32),
]


@pytest.mark.parametrize("name,kw,size", ONNX_MODELS)
def test_onnxruntime_matches_pytorch(tmp_path, name, kw, size):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10, **kw).eval()
    x = torch.randn(1, 3, size, size)
    gm = fxprune.compress(model, x, ratio=0.4)
    export_onnx(gm, tmp_path / "m.onnx", x)  # checked on x inside; here on another input
    import onnxruntime as ort

    fresh = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(5))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: fresh.numpy()})
    with torch.no_grad():
        ref = gm(fresh)
    assert np.abs(out - ref.numpy()).max() <= 1e-4 * max(1.0, float(ref.abs().max()))
    assert (tmp_path / "m.onnx").stat().st_size > 0


def test_torch_export_and_compile_match(tmp_path):
    gm = fxprune.compress(_net(), torch.randn(1, 3, 12, 12), ratio=0.5)
    x = torch.randn(1, 3, 12, 12)
    assert export_pt2(gm, tmp_path / "m.pt2", x) == 0.0
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    with torch.no_grad():
        assert torch.equal(program(x), gm(x))
    assert check_compile(gm, x) <= 1e-5


def test_report_table_json_and_picture(tmp_path):
    model = _net()
    gm = fxprune.compress(model, torch.randn(1, 3, 12, 12), ratio=0.5)
    report = gm.meta["fxprune"].report
    rows = {r.name: r for r in report.layers()}
    assert set(rows) == {"0", "3", "8"}
    assert (rows["0"].out_before, rows["0"].out_after) == (16, 8)
    assert (rows["3"].in_before, rows["3"].in_after, rows["3"].out_after) == (16, 8, 12)
    assert rows["3"].params_after == 12 * 8 * 9 + 12
    assert (rows["8"].in_after, rows["8"].out_after) == (12, 5)
    md = report.to_markdown()
    assert "| 3 | Conv2d | 24 -> 12 | 16 -> 8 | 3,480 -> 876 | 50% |" in md
    doc = report.to_dict()
    assert doc["params"] == {"before": report.params_before, "after": report.params_after}
    assert doc["layers"][1]["out_after"] == 12 and doc["verify_ok"] is True
    json.dumps(doc)
    png = report.plot(tmp_path / "kept.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000


def test_load_never_imports_a_file_the_artifact_names(tmp_path):
    gm = fxprune.compress(_net(), torch.randn(1, 3, 12, 12), ratio=0.5)
    fxprune.save(gm, tmp_path / "a")
    marker = tmp_path / "ran"
    evil = tmp_path / "a" / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w')\ndef f():\n    pass\n")
    meta = tmp_path / "a" / "fxprune.json"
    doc = json.loads(meta.read_text())
    doc["spec"] = f"{evil}:f"
    meta.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="does not run code"):
        fxprune.load(tmp_path / "a")
    assert not marker.exists()
    assert torch.equal(fxprune.load(tmp_path / "a", _net).state_dict()["0.weight"],
                       gm.state_dict()["0.weight"])  # with a factory it loads


class _WithBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 2)
        self.register_buffer("shift", torch.zeros(8), persistent=False)

    def forward(self, x, scale: float = 1.0):
        y = self.conv(x).mean((2, 3)) + self.shift
        return self.fc(y) * scale


def test_non_persistent_buffers_scalar_inputs_and_foreign_leaf_types(tmp_path):
    model = _WithBuffer().eval()
    x = torch.randn(1, 3, 8, 8)
    gm = fxprune.compress(model, (x, 2.0), ratio=0.5, leaf_modules=[nn.MultiheadAttention])
    with torch.no_grad():
        gm.get_buffer("shift").add_(0.5)  # e.g. set by a calibration step
    fxprune.save(gm, tmp_path / "b")
    doc = json.loads((tmp_path / "b" / "fxprune.json").read_text())
    assert doc["inputs"][1] == {"value": 2.0}
    loaded = fxprune.load(tmp_path / "b", lambda: _WithBuffer().eval())
    with torch.no_grad():
        assert torch.equal(loaded(x, 2.0), gm(x, 2.0))


def test_iterative_input_pruning_saves_and_loads(tmp_path):
    def mk():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)).eval()

    x = torch.randn(4, 6)
    gm = fxprune.compress(mk(), x, prune_inputs=True, ratio=0.5, steps=2)
    fxprune.save(gm, tmp_path / "p")
    assert json.loads((tmp_path / "p" / "fxprune.json").read_text())["inputs"][0]["shape"] \
        == [4, 6]  # the original inputs, not the last step's pruned ones
    loaded = fxprune.load(tmp_path / "p", mk)
    xin = gm.meta["fxprune"].report.models.pruned_inputs[0]
    assert torch.equal(loaded(xin), gm(xin))


def test_dynamic_batch_exports_run_on_other_batch_sizes(tmp_path):
    gm = fxprune.compress(_net(), torch.randn(1, 3, 12, 12), ratio=0.5)
    x = torch.randn(1, 3, 12, 12)
    assert export_onnx(gm, tmp_path / "d.onnx", x, dynamic_batch=True) <= 1e-4
    assert export_pt2(gm, tmp_path / "d.pt2", x, dynamic_batch=True) <= 1e-6
    program = torch.export.load(str(tmp_path / "d.pt2")).module()
    y = torch.randn(5, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(program(y), gm(y), atol=1e-6)
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "d.onnx"))
    out = session.run(None, {session.get_inputs()[0].name: y.numpy()})[0]
    assert out.shape == (5, 5) and abs(out - gm(y).detach().numpy()).max() <= 1e-4


def test_fold_batchnorm_removes_bn_and_keeps_the_output():
    gm = fxprune.compress(_net(), torch.randn(1, 3, 12, 12), ratio=0.5)
    with torch.no_grad():  # non-trivial BN statistics, so a wrong fold would show
        for m in gm.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 12, 12)
    folded, diff = fold_batchnorm(gm, x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in gm.modules()) == 2  # original kept
    with torch.no_grad():
        torch.testing.assert_close(folded(x), gm(x), rtol=1e-5, atol=1e-6)
    assert diff <= 1e-5
