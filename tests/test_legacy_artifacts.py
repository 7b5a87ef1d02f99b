"""Artifacts saved by an earlier fxprune (tests/data/legacy, written at commit 8e9aa3e by
tests/data/make_legacy_artifacts.py) load with the current code and give the same outputs."""

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import verified_on_fresh

import fxprune

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))
from make_legacy_artifacts import example_input, net, runs  # noqa: E402

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


@pytest.mark.parametrize("name", NAMES)
def test_legacy_plans_replay_exactly(name):
    """The recorded plans replay on a fresh model under the current analysis, and the result
    is exact on inputs the replay never saw."""
    doc = json.loads((DATA / "legacy" / name / "fxprune.json").read_text())
    plans = [fxprune.Plan(**p) for p in doc["history"]]
    gm = fxprune.apply_plan(net(), plans, example_input())
    assert verified_on_fresh(gm).ok
    loaded = fxprune.load(DATA / "legacy" / name, net)
    assert [t.shape for t in loaded.state_dict().values()] == \
        [t.shape for t in gm.state_dict().values()]
    with pytest.raises(fxprune.OptionError, match="loaded from"):
        fxprune.verify(loaded)  # its original weights are not in the artifact


@pytest.mark.parametrize("name", NAMES)
def test_the_same_run_saves_the_same_artifact(tmp_path, name):
    """The current code, asked what the legacy run asked, writes the same plans, options,
    input specs and tensors."""
    kw, fmt = runs()[name]
    gm = fxprune.compress(net(), example_input(), **kw)
    fxprune.save(gm, tmp_path / name, tensor_format=fmt)
    old = json.loads((DATA / "legacy" / name / "fxprune.json").read_text())
    new = json.loads((tmp_path / name / "fxprune.json").read_text())
    # added since (issue 14): how the model was captured and returned; legacy artifacts
    # without them replay as fx / graph
    assert (new["options"].pop("frontend"), new["options"].pop("output")) == ("fx", "graph")
    assert new == old
    old_t = fxprune.deploy.artifact.read_tensors(DATA / "legacy" / name)
    new_t = fxprune.deploy.artifact.read_tensors(tmp_path / name)
    assert old_t.keys() == new_t.keys()
    assert all(torch.equal(old_t[k], new_t[k]) for k in old_t)
