"""Artifacts saved by an earlier fxprune (tests/data/legacy, written at commit 8e9aa3e by
tests/data/make_legacy_artifacts.py) load with the current code and give the same outputs."""

import json
import sys
from pathlib import Path

import pytest
import torch

import fxprune

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))
from make_legacy_artifacts import net  # noqa: E402

NAMES = ["lstsq_safetensors", "steps2_torch", "flops_inputs"]


@pytest.mark.parametrize("name", NAMES)
def test_legacy_artifact_loads_bit_identical(name):
    path = DATA / "legacy" / name
    gm = fxprune.load(path, net)
    expected = torch.load(path / "expected.pt", weights_only=True)
    with torch.no_grad():
        out = gm(expected["input"])
    assert torch.equal(out, expected["output"])
    doc = json.loads((path / "fxprune.json").read_text())
    assert len(gm.meta["fxprune"].history) == len(doc["history"])


def test_legacy_artifact_replays_with_verify():
    """The plans replay exactly on a fresh model under the current analysis (verify on)."""
    path = DATA / "legacy" / "lstsq_safetensors"
    gm = fxprune.load(path, net, verify=True)
    assert gm.meta["fxprune"].report.verify.ok
