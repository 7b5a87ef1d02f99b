"""torchvision models through the export frontend: detection by regions, video and optical
flow that symbolic tracing cannot enter, and classifier parity between the two frontends
(the same plan, removed position by removed position)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from oracle import masked_by_values, tamed_values

import fxprune
from fxprune.pipeline.regions import regions_report


def _sorted(detections: dict) -> torch.Tensor:
    """Detections as rows (box, score, label), in a canonical order: near-equal scores of a
    random network may come out of top-k in either order."""
    rows = torch.cat([detections["boxes"], detections["scores"][:, None],
                      detections["labels"][:, None].double()], 1)
    order = np.lexsort(np.round(rows.numpy(), 6).T[::-1])
    return rows[torch.as_tensor(order)]


def test_detection_prunes_by_regions_and_detections_match():
    """fasterrcnn: NMS and box decoding are data-dependent, so no frontend captures it
    whole; backbone, rpn.head and box_head are pruned as regions. Detections (NMS and the
    top-k cuts off, so no near-tie can change the set) equal the masked original's, masked
    by the independent value oracle (float64: values distinct in a 12.8M-element fc6)."""
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, min_size=160, max_size=160,
        box_score_thresh=0.0, box_nms_thresh=1.0, box_detections_per_img=100_000,
        rpn_pre_nms_top_n_test=100_000, rpn_post_nms_top_n_test=100_000,
        rpn_nms_thresh=1.0).eval().double()
    model = tamed_values(model)
    state = copy.deepcopy(model.state_dict())
    image = torch.rand(1, 3, 160, 160, generator=torch.Generator().manual_seed(1)).double()
    pruned = fxprune.compress(model, (image,), ratio=0.5)
    assert type(pruned) is type(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    report = regions_report(pruned)
    paths = [r.path for r in report.regions]
    assert {"backbone", "rpn.head", "roi_heads.box_head"} <= set(paths), report.summary()
    assert "rpn" not in paths and "roi_heads" not in paths  # they do not capture
    left = dict(report.left_out)
    assert "does not capture" in left["rpn"] and "submodules are tried" in left["roi_heads"]
    assert report.whole_ok, report.summary()
    for path in ("backbone", "rpn.head", "roi_heads.box_head"):
        region = next(r for r in report.regions if r.path == path)
        assert region.params_after < 0.6 * region.params_before, report.summary()
        assert region.verify.startswith("exact")
    reference = masked_by_values(model, pruned)
    with torch.no_grad():
        got, want = pruned.eval()(image)[0], reference(image)[0]
    assert got["boxes"].shape[0] > 1000  # thousands of detections compared
    a, b = _sorted(got), _sorted(want)
    assert a.shape == b.shape
    assert torch.allclose(a, b, rtol=0, atol=1e-9 * float(b.abs().max()))


def test_swin3d_prunes_and_verifies():
    model = torchvision.models.video.swin3d_t().eval()
    x = torch.randn(1, 3, 2, 32, 32)
    out = fxprune.compress(model, (x,), ratio=0.5)
    report = fxprune.result_of(out).report
    assert type(out) is type(model) and report.frontend == "export"
    assert report.verify.ok and report.module_verify.ok, report.summary()
    assert report.params_after < 0.8 * report.params_before
    assert out.features[0][0].mlp[0].out_features < model.features[0][0].mlp[0].out_features


def test_raft_prunes_and_verifies():
    model = torchvision.models.optical_flow.raft_small().eval()
    a, b = torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128)
    out = fxprune.compress(model, (a, b), ratio=0.5)
    report = fxprune.result_of(out).report
    assert type(out) is type(model) and report.verify.ok and report.module_verify.ok
    assert report.params_after < 0.8 * report.params_before
    # RAFT's own forward checks the context encoder's width against hidden_state: the check
    # caught it, and those channels stayed
    assert report.fallbacks
    with torch.no_grad():
        flows = out(a, b, num_flow_updates=2)
    assert flows[-1].shape == (1, 2, 128, 128)


PARITY = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
          "shufflenet_v2_x0_5", "squeezenet1_1", "densenet121", "regnet_y_400mf",
          "mnasnet0_5", "googlenet", "convnext_tiny", "resnext50_32x4d"]


@pytest.mark.parametrize("name", PARITY)
def test_classifier_parity_between_frontends(name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 32 if name.startswith("convnext") else 64, 64)
    results = {}
    for frontend in ("fx", "export"):
        out = fxprune.compress(model, (x,), ratio=0.5, frontend=frontend, output="graph")
        report = fxprune.result_of(out).report
        assert report.verify.ok, (frontend, report.summary())
        results[frontend] = (report, fxprune.result_of(out).plan)
    (fx_r, fx_plan), (ex_r, ex_plan) = results["fx"], results["export"]
    assert ex_r.params_after < ex_r.params_before
    # the same channel groups found in a Python-level and an ATen-level graph: same plan
    assert ex_plan.removed == fx_plan.removed
    assert ex_r.params_after == fx_r.params_after, (fx_r.params_after, ex_r.params_after)
