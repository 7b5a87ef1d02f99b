"""Time of ``compensate="sequential"`` against one plain forward of the original over the
same calibration data (resnet50, 64 images of 224 px in 4 batches of 16, random init).

    python bench/sequential_time.py [--images 64] [--out bench/results/sequential_time.md]

The ratio printed is (compensation stage time) / (forward time); the issue's target is <= 3.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torchvision

import fxprune


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", default="bench/results/sequential_time.md")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(args.batch, 3, 224, 224, generator=g)
            for _ in range(args.images // args.batch)]
    with torch.no_grad():
        model(data[0][:2])  # warm-up
        t0 = time.perf_counter()
        for x in data:
            model(x)
        forward = time.perf_counter() - t0
    pruned = fxprune.compress(model, (data[0][:1],), ratio=0.3, calibration=data,
                              compensate="sequential", verify=False)
    report = fxprune.result_of(pruned).report
    stage = report.timings["compensate"]
    comp = report.compensation
    lines = ["| model | images | forward s | sequential s | ratio | consumers | "
             "largest accumulator MB |", "|---|---|---|---|---|---|---|",
             f"| resnet50 | {args.images} x 224 px | {forward:.2f} | {stage:.2f} | "
             f"{stage / forward:.2f} | {len(comp.sites)} | "
             f"{comp.accumulator_bytes / 2**20:.2f} |", "",
             "The sequential stage includes both graphs' lockstep pass, the moments and the "
             "solves, and the two deviation checks on the example input; ratio 0.3, "
             f"{torch.get_num_threads()} threads."]
    print("\n".join(lines))
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
