"""Scoring time of the activation importances against a plain forward over the same batches.

    python bench/scoring_time.py [resnet50 mobilenet_v2] [--images 64] [--batch 16]

Target (issue 5): CFDP / QSFM scoring <= 1.5x the plain forward at 64 calibration images.
Prints one line per model and importance; ``--threads`` (default 1) keeps it steady beside
other work.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torchvision

import fxprune
from fxprune.importance import Calibration, get_importance


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=["resnet50", "mobilenet_v2"])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--importances", nargs="*", default=["cfdp", "qsfm", "hrank"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(args.batch, 3, args.size, args.size, generator=g)
               for _ in range(args.images // args.batch)]
    lines = ["| model | importance | scoring s | plain forward s | ratio (target <= 1.5) |",
             "|---|---|---|---|---|"]
    for name in args.models:
        model = torchvision.models.get_model(name).eval()
        graph = fxprune.analyze(model, batches[0][:1])
        gm = graph.traced.gm
        with torch.no_grad():
            gm(batches[0])  # warm
            t0 = time.perf_counter()
            for b in batches:
                gm(b)
            plain = time.perf_counter() - t0
        for imp in args.importances:
            t0 = time.perf_counter()
            get_importance(imp).scores(graph, Calibration(batches))
            took = time.perf_counter() - t0
            print(f"{name} {imp}: scoring {took:.2f}s, plain forward {plain:.2f}s, "
                  f"ratio {took / plain:.2f}x ({args.images} images, {args.size}px, "
                  f"{args.threads} thread(s))", flush=True)
            lines.append(f"| {name} | {imp} | {took:.2f} | {plain:.2f} | {took / plain:.2f} |")
    out = Path(__file__).resolve().parent / "results" / "scoring_time.md"
    out.write_text(f"Command: `python bench/scoring_time.py` ({args.images} images of "
                   f"{args.size}px in batches of {args.batch}, {args.threads} thread(s))\n\n"
                   + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
