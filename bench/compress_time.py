"""Time fxprune.compress stage by stage on torchvision models at 224x224.

    python bench/compress_time.py resnet50 densenet201 [--repeats 3]

Prints the median total and per-stage times (analyze includes tracing and the recorded
example run; rewrite includes the shape check; verify runs both models in float64).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

import fxprune


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    for name in args.models:
        model = torchvision.models.get_model(name).eval()
        x = torch.randn(1, 3, args.size, args.size)
        totals, stages = [], []
        nodes = len(fxprune.trace(model, x).gm.graph.nodes)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            gm = fxprune.compress(model, x, ratio=0.5)
            totals.append(time.perf_counter() - t0)
            stages.append(gm.meta["fxprune"].report.timings)
        med = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
        detail = ", ".join(f"{k} {v:.2f}s" for k, v in med.items())
        print(f"{name}: {nodes} FX nodes, compress {statistics.median(totals):.2f}s "
              f"(median of {args.repeats}; {detail})")


if __name__ == "__main__":
    main()
