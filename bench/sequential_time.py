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
from fxprune.passes.sequential import refit


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
    # the method alone, on a fresh copy of the same pruned graph
    plain = fxprune.compress(model, (data[0][:1],), ratio=0.3, verify=False)
    rec = fxprune.result_of(plain)
    t0 = time.perf_counter()
    comp, _ = refit(rec.graph.traced.gm, plain, rec.graph, rec.removed_units, data)
    method = time.perf_counter() - t0
    lines = ["| model | images | forward s | sequential refit s | ratio | compensate stage s | "
             "consumers | largest accumulator MB |", "|---|---|---|---|---|---|---|---|",
             f"| resnet50 | {args.images} x 224 px | {forward:.2f} | {method:.2f} | "
             f"{method / forward:.2f} | {stage:.2f} | {len(comp.sites)} | "
             f"{comp.accumulator_bytes / 2**20:.2f} |", "",
             "The refit: both graphs' lockstep pass, the moments and the solves. The compensate "
             "stage adds the two float64 deviation checks on the example input. Ratio 0.3, "
             f"{torch.get_num_threads()} threads."]
    print("\n".join(lines))
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
