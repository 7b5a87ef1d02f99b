"""Compress time against graph size: time per FX node, so super-linear growth shows.

    python bench/scaling.py [--size 224]

Models: resnet18/34/50/101/152, densenet121/169/201, vit_b_16, vit_l_16. Times the compile
(trace -> analyze -> select -> rewrite, no verify), median of 3.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

import fxprune

MODELS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "densenet121",
          "densenet169", "densenet201", "vit_b_16", "vit_l_16"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=MODELS)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print("| model | FX nodes | compile s | ms per node |\n|---|---|---|---|")
    for name in args.models:
        model = torchvision.models.get_model(name).eval()
        x = torch.randn(1, 3, args.size, args.size)
        nodes = len(fxprune.trace(model, x).gm.graph.nodes)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fxprune.compress(model, x, verify=False)
            times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        print(f"| {name} | {nodes} | {t:.2f} | {1e3 * t / nodes:.2f} |", flush=True)


if __name__ == "__main__":
    main()
