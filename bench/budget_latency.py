"""Latency against FLOPs for three ways of choosing what to prune, at batch 8 on one thread.

    python bench/budget_latency.py [mobilenet_v2 resnet50 efficientnet_b0] [--rounds 3]

Uniform per-group ratios thin every layer alike; a FLOPs budget (global threshold) keeps
more of the memory-bound layers. Prints and writes bench/results/budget_latency.md with
FLOPs kept, latency vs dense (median of alternating rounds) and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
import torchvision

import fxprune
from fxprune.demo import latency_ms
from fxprune.report import count_flops

VARIANTS = {
    "`ratio=0.5` (uniform per group)": dict(ratio=0.5),
    "`target_flops=0.5` (global threshold)": dict(target_flops=0.5),
    "`target_flops=0.5, round_to=8`": dict(target_flops=0.5, round_to=8),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=["mobilenet_v2", "resnet50", "efficientnet_b0"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    lines = ["| model | selection | FLOPs kept | latency vs dense | latency/FLOPs |",
             "|---|---|---|---|---|"]
    for name in args.models:
        dense = torchvision.models.get_model(name).eval()
        flops0 = count_flops(dense, (x[:1],))
        pruned = {k: fxprune.compress(dense, x[:1], **kw) for k, kw in VARIANTS.items()}
        times: dict[str, list[float]] = {k: [] for k in ["dense", *pruned]}
        for _ in range(args.rounds):  # alternate, so load drifts hit every variant alike
            times["dense"].append(latency_ms(dense, x, args.reps))
            for k, gm in pruned.items():
                times[k].append(latency_ms(gm, x, args.reps))
        base = statistics.median(times["dense"])
        for k, gm in pruned.items():
            lat = statistics.median(times[k]) / base
            kept = count_flops(gm, (x[:1],)) / flops0
            line = f"| {name} | {k} | {kept:.3f} | {lat:.3f} | {lat / kept:.2f} |"
            print(line, flush=True)
            lines.append(line)
    out = Path(__file__).resolve().parent / "results" / "budget_latency.md"
    out.write_text(f"Command: `python bench/budget_latency.py` (batch {args.batch}, "
                   f"{args.size} px, {args.threads} thread(s), median of {args.rounds} "
                   f"alternating rounds of {args.reps} runs)\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
