"""The ``fxprune`` command: success and error paths. It runs in this process (a fresh
interpreter per call would cost ~4 s of imports each); ``tests/test_pipeline.py`` runs
``python -m fxprune`` as a subprocess."""

import contextlib
import io
import json
import os
import textwrap
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import fxprune
from fxprune import cli

SPEC = "torchvision:resnet18?num_classes=10"
SMALL = ["--input-shape", "1,3,64,64"]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run(*args, cwd=None) -> Result:
    """``fxprune ARGS`` as the console script runs it: exit code, stdout and stderr."""
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    try:
        os.chdir(cwd or here)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main([str(a) for a in args])
            except SystemExit as exc:  # argparse: usage errors and --help
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        os.chdir(here)
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def factory_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "mine.py"
    path.write_text(textwrap.dedent("""
        import torch
        import torch.nn as nn

        def build(width=8):
            torch.manual_seed(0)
            model = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width),
                                  nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 4))
            return model.eval(), (torch.randn(1, 3, 16, 16),)
    """))
    return path


def test_compress_writes_every_artifact_and_loads_back(tmp_path):
    out = tmp_path / "out"
    res = run("compress", SPEC, *SMALL, "--target-flops", "0.5", "--onnx", "--pt2",
              "--dynamic-batch", "--fold-bn", "--out", str(out))
    assert res.returncode == 0, res.stderr
    for name in ("model/fxprune.json", "plan.json", "report.md", "report.json",
                 "kept_channels.png", "model.onnx", "model.pt2"):
        assert (out / name).exists(), name
    doc = json.loads((out / "report.json").read_text())
    assert abs(doc["flops"]["after"] / doc["flops"]["before"] - 0.5) <= 0.005
    assert doc["onnx_max_abs_diff"] <= 1e-4 and doc["verify_ok"] is True
    assert doc["fold_bn_max_abs_diff"] <= 1e-5
    assert "budget: flops target" in res.stdout
    gm = fxprune.load(out / "model")  # the recorded spec rebuilds the model: no factory
    x = torch.randn(4, 3, 64, 64)  # exported with --dynamic-batch from a batch of 1
    program = torch.export.load(str(out / "model.pt2")).module()
    assert not any("batch_norm" in str(n.target) for n in program.graph.nodes)  # --fold-bn
    with torch.no_grad():
        torch.testing.assert_close(program(x), gm(x), rtol=1e-4, atol=1e-5)
    plans = json.loads((out / "plan.json").read_text())
    assert plans[0]["removed"] == json.loads(
        (out / "model" / "fxprune.json").read_text())["history"][0]["removed"]


def test_compress_file_factory_with_calibration(tmp_path, factory_file):
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).normal(size=(20, 3, 16, 16)).astype(np.float32))
    res = run("compress", f"{factory_file}:build", "--ratio", "0.5", "--importance", "cfdp",
              "--calib", str(calib), "--calib-batch", "8", "--compensate", "lstsq",
              "--round-to", "2", "--ignore", "3", "--ignore", "nothing*",
              "--out", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [r["out_after"] for r in doc["layers"]] == [4, 8, 4]  # "3" ignored: kept whole


def test_inspect_text_and_json(factory_file):
    res = run("inspect", f"{factory_file}:build?width=6")
    assert res.returncode == 0, res.stderr
    assert "2 prunable groups" in res.stdout and "exact" in res.stdout
    res = run("inspect", f"{factory_file}:build", "--json")
    doc = json.loads(res.stdout)
    assert [g["units"] for g in doc["groups"]] == [8, 8]
    assert {f["reason"] for f in doc["frozen"]}  # graph input/output are reported frozen


@pytest.mark.parametrize("args,message", [
    (["compress", "torchvision:not_a_model", "--out", "x"], "no model 'not_a_model'"),
    (["compress", "nowhere.py:build", "--out", "x"], "no such file"),
    (["compress", SPEC, *SMALL, "--importance", "cfdp", "--out", "x"], "calibration"),
    (["compress", SPEC, *SMALL, "--importance", "nope", "--out", "x"], "nope"),
    (["compress", SPEC, "--input-shape", "1,3,a", "--out", "x"], "input shape"),
    (["compress", SPEC, *SMALL, "--target-params", "1e12", "--out", "x"], "above the dense"),
    (["inspect", "resnet18"], "model spec"),
    (["inspect", "torchvision:resnet18?num_clases=10"], "num_clases"),
    (["compress", SPEC, *SMALL, "--out", "afile"], "not a directory"),
    (["compress", SPEC, *SMALL, "--target-params", "0.01", "--ignore", "layer*",
      "--out", "x"], "cannot reach"),
])
def test_errors_exit_1_with_a_message(tmp_path, args, message):
    (tmp_path / "afile").write_text("")
    res = run(*args, cwd=tmp_path)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert message in res.stderr and "Traceback" not in res.stderr


def test_calibration_shape_mismatch_is_an_error(tmp_path, factory_file):
    calib = tmp_path / "bad.npy"
    np.save(calib, np.zeros((4, 3, 8, 8), dtype=np.float32))
    res = run("compress", f"{factory_file}:build", "--importance", "cfdp", "--calib",
              str(calib), "--out", str(tmp_path / "o"))
    assert res.returncode == 1 and "(3, 16, 16)" in res.stderr


def test_usage_errors_exit_2_and_help_documents_everything():
    assert run("compress", SPEC).returncode == 2  # --out is required
    res = run("compress", SPEC, "--ratio", "0.5", "--target-flops", "0.5", "--out", "x")
    assert res.returncode == 2 and "not allowed with" in res.stderr
    assert run("compress", SPEC, "--steps", "0", "--out", "x").returncode == 2
    res = run("compress", "--help")
    assert res.returncode == 0
    for flag in ("--ratio", "--target-flops", "--target-params", "--importance", "--calib",
                 "--ignore", "--round-to", "--onnx", "--pt2", "--out", "--steps",
                 "--dynamic-batch", "--fold-bn",
                 "torchvision:NAME", "timm:NAME", "file.py:factory"):
        assert flag in res.stdout, flag
    assert run("--help").returncode == 0
