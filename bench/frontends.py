"""Compile time of the two frontends on the same models: capture -> analyze -> score ->
select -> rewrite (no verify), graph output, interleaved runs, medians.

    python bench/frontends.py [MODEL ...] [--size 224] [--rounds 3]
        [--out bench/results/frontends.md]

The export frontend pays for ``torch.export`` (a fake-tensor run of the model's Python and
the ATen decomposition) instead of ``symbolic_trace`` plus one recorded example run; the
analysis and the rewrite are the same code.
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from pathlib import Path

STAGES = ("trace", "analyze", "score", "select", "rewrite")


def compile_seconds(model, x, frontend: str) -> tuple[float, dict]:
    import fxprune

    gm = fxprune.compress(model, x, ratio=0.5, verify=False, frontend=frontend, output="graph")
    timings = fxprune.result_of(gm).report.timings
    return sum(timings.get(s, 0.0) for s in STAGES), timings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=["resnet50", "mobilenet_v2"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="bench/results/frontends.md")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import torch
    import torchvision

    lines = ["| model | fx compile s | export compile s | export / fx | export: trace s |",
             "|---|---|---|---|---|"]
    for name in args.models:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval()
        x = torch.randn(1, 3, args.size, args.size)
        compile_seconds(model, x, "export")  # warm both paths (lazy imports, first export)
        compile_seconds(model, x, "fx")
        times: dict[str, list[float]] = {"fx": [], "export": []}
        trace = []
        for r in range(args.rounds):
            for fe in ("fx", "export") if r % 2 == 0 else ("export", "fx"):
                total, timings = compile_seconds(model, x, fe)
                times[fe].append(total)
                if fe == "export":
                    trace.append(timings["trace"])
        fx_s, ex_s = statistics.median(times["fx"]), statistics.median(times["export"])
        lines.append(f"| {name} | {fx_s:.2f} | {ex_s:.2f} | {ex_s / fx_s:.2f}x | "
                     f"{statistics.median(trace):.2f} |")
        print(lines[-1], flush=True)
    lines.append(f"\n{args.size} px, batch 1, ratio 0.5, L2, verify off; medians of "
                 f"{args.rounds} interleaved runs.")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
