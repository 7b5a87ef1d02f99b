"""ultralytics YOLO, zero edits: built from its yaml (nothing downloaded), captured by the
export frontend (symbolic trace cannot enter it), pruned with module output - the same
DetectionModel class back - and checked by running that module itself."""

from __future__ import annotations

import copy
import functools
import io
import json
import os

import pytest
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")

from oracle import check_by_values, tamed_values  # noqa: E402
from ultralytics.cfg import get_cfg  # noqa: E402
from ultralytics.nn.tasks import DetectionModel, SegmentationModel  # noqa: E402

import fxprune  # noqa: E402
from fxprune.deploy import export_onnx  # noqa: E402
from fxprune.util import flat_tensors  # noqa: E402

MODELS = {"yolov8n": (DetectionModel, "yolov8n.yaml"), "yolo11n": (DetectionModel, "yolo11n.yaml"),
          "yolov8n-seg": (SegmentationModel, "yolov8n-seg.yaml")}
SIZE = 64


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cls, yaml = MODELS[name]
    return cls(yaml, verbose=False)


def _snapshot(model: torch.nn.Module) -> tuple[dict, dict]:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attrs = {n: {k: v for k, v in vars(m).items() if isinstance(v, (int, float, tuple, str))}
             for n, m in model.named_modules()}
    return state, attrs


@functools.cache
def _pruned(name: str):
    model = tamed_values(_build(name))  # distinct values: the oracle below reads them
    before = _snapshot(model)
    x = torch.randn(1, 3, SIZE, SIZE)
    out = fxprune.compress(model, (x,), ratio=0.5)
    return name, model, out, x, before


@pytest.fixture(params=list(MODELS))
def pruned(request):
    return _pruned(request.param)


def test_same_class_exact_and_smaller(pruned):
    name, model, out, x, before = pruned
    assert type(out) is type(model) and out is not model
    report = fxprune.result_of(out).report
    assert report.frontend == "export" and report.output == "module"
    assert report.verify.ok and report.module_verify.ok, report.summary()
    n_before = sum(p.numel() for p in model.parameters())
    n_after = sum(p.numel() for p in out.parameters())
    assert n_after < 0.5 * n_before, (n_before, n_after)
    state, attrs = _snapshot(model)  # the caller's model: bit-identical, attributes unchanged
    assert state.keys() == before[0].keys()
    assert all(torch.equal(state[k], before[0][k]) for k in state)
    assert attrs == before[1]


def test_head_outputs_kept_internals_pruned(pruned):
    name, model, out, x, _ = pruned
    head, new_head = model.model[-1], out.model[-1]
    for i in range(head.nl):  # box distribution and class logits: the head's outputs
        assert new_head.cv2[i][-1].out_channels == head.cv2[i][-1].out_channels == 4 * head.reg_max
        assert new_head.cv3[i][-1].out_channels == head.cv3[i][-1].out_channels == head.nc
        if hasattr(head, "cv4"):  # mask coefficients
            assert new_head.cv4[i][-1].out_channels == head.cv4[i][-1].out_channels == head.nm
    c2f = copy.deepcopy(out.model[2]).eval()  # C2f / C3k2: chunk halves, forward_split's c
    assert c2f.c < model.model[2].c
    assert c2f.cv1.conv.out_channels == 2 * c2f.c
    with torch.no_grad():
        y = c2f.cv1(torch.randn(1, c2f.cv1.conv.in_channels, 8, 8))
        assert torch.equal(torch.cat(list(y.chunk(2, 1)), 1), torch.cat(list(
            y.split((c2f.c, c2f.c), 1)), 1))
    with torch.no_grad():  # forward_split (the training-time path) agrees with forward
        t = torch.randn(1, c2f.cv1.conv.in_channels, 8, 8)
        assert torch.allclose(c2f.forward(t), c2f.forward_split(t), atol=1e-6)


def test_module_matches_masked_original_by_values(pruned):
    """An oracle independent of fxprune's channel graph, on the pruned module itself."""
    name, model, out, x, _ = pruned
    check_by_values(model, out, (x,))


@pytest.mark.parametrize("name", list(MODELS))
def test_train_step_loss_and_gradients(name):
    _, _, out, x, _ = _pruned(name)
    model = copy.deepcopy(out)
    model.args = get_cfg()
    model.train()
    batch = {"img": torch.rand(2, 3, SIZE, SIZE), "batch_idx": torch.tensor([0.0, 1.0]),
             "cls": torch.tensor([[1.0], [3.0]]),
             "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.4, 0.6, 0.2, 0.4]])}
    if name.endswith("seg"):  # instance masks at a quarter of the input size
        batch["masks"] = torch.zeros(2, SIZE // 4, SIZE // 4)
        batch["masks"][0, 6:10, 6:10] = 1
        batch["masks"][1, 7:12, 6:9] = 1
    loss, _ = model.loss(batch)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_save_load_round_trip(pruned):
    _, _, out, x, _ = pruned
    buf = io.BytesIO()
    torch.save(out, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    assert type(back) is type(out)
    with torch.no_grad():
        a, b = flat_tensors(out.eval()(x)), flat_tensors(back.eval()(x))
    assert len(a) == len(b) > 1 and all(torch.equal(u, v) for u, v in zip(a, b))


def test_onnx_matches(tmp_path):
    _, _, out, x, _ = _pruned("yolov8n")
    diff = export_onnx(out, tmp_path / "yolo.onnx", (x,))  # onnxruntime vs the module
    assert (tmp_path / "yolo.onnx").stat().st_size > 100_000
    assert 0 <= diff < 1e-4


def test_cli_spec_and_artifact_round_trip(tmp_path):
    from fxprune.cli import main

    out = tmp_path / "yolo"
    assert main(["compress", "ultralytics:yolov8n.yaml", "--input-shape", f"1,3,{SIZE},{SIZE}",
                 "--out", str(out)]) == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["frontend"] == "export" and doc["output"] == "module"
    assert doc["params"]["after"] < 0.5 * doc["params"]["before"]
    loaded = fxprune.load(out / "model")  # rebuilt from the recorded spec, plan replayed
    assert type(loaded) is DetectionModel
    fresh = fxprune.deploy.spec.model_from_spec("ultralytics:yolov8n.yaml")[0]
    assert sum(p.numel() for p in loaded.parameters()) == doc["params"]["after"] < sum(
        p.numel() for p in fresh.parameters())
    saved = fxprune.deploy.artifact.read_tensors(out / "model")
    state = loaded.state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in state)
