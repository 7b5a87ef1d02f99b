"""Writes the artifacts in tests/data/legacy/: saved by fxprune at commit 8e9aa3e (before the
pipeline refactor), loaded by tests/test_legacy_artifacts.py with the current code. Run again
only to add a format version; never to refresh the committed files."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn

import fxprune

HERE = Path(__file__).parent / "legacy"


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding=1, stride=2), nn.BatchNorm2d(24), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 5)).eval()


def probe() -> torch.Tensor:
    return torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(7))


def calibration() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 12, 12, generator=g) for _ in range(3)]


def example_input() -> torch.Tensor:
    return calibration()[0][:1]


def runs() -> dict[str, tuple[dict, str]]:
    """name -> (compress keyword arguments, tensor format)."""
    return {
        "lstsq_safetensors": (dict(ratio=0.4, calibration=calibration(), compensate="lstsq"),
                              "safetensors"),
        "steps2_torch": (dict(ratio=0.6, steps=2), "torch"),
        "flops_inputs": (dict(target_flops=0.5, prune_inputs=True), "safetensors"),
    }


def main() -> None:
    x = example_input()
    for name, (kw, fmt) in runs().items():
        gm = fxprune.compress(net(), x, **kw)
        fxprune.save(gm, HERE / name, tensor_format=fmt)
        xin = gm.meta["fxprune"].report.models[-1][0]
        p = probe()
        if xin.shape[1] != p.shape[1]:
            p = p[:, : xin.shape[1]]
        with torch.no_grad():
            torch.save({"input": p, "output": gm(p)}, HERE / name / "expected.pt")
        print(name, sorted(f.name for f in (HERE / name).iterdir()), file=sys.stderr)


if __name__ == "__main__":
    main()
