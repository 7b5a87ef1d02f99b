"""Scoring time of the activation importances against a plain forward over the same batches.

    python bench/scoring_time.py [resnet50 mobilenet_v2] [--images 64] [--batch 16]

Target (issue 5): CFDP / QSFM scoring <= 1.5x the plain forward at 64 calibration images.
Prints one line per model and importance; ``--threads`` (default 1) keeps it steady beside
other work.
"""

from __future__ import annotations

import argparse
import os
import sys

# numpy's BLAS (QSFM's Gram) gets the same thread count as torch: set before numpy loads
_threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _threads)
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torchvision  # noqa: E402

import fxprune  # noqa: E402
from fxprune.importance import Calibration, get_importance  # noqa: E402


def _plain(gm, batches) -> float:
    with torch.no_grad():
        t0 = time.perf_counter()
        for b in batches:
            gm(b)
        return time.perf_counter() - t0


def _scoring(name: str, graph, batches) -> float:
    t0 = time.perf_counter()
    get_importance(name).scores(graph, Calibration(batches))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=["resnet50", "mobilenet_v2"])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3,
                    help="paired rounds (plain forward, then each importance); medians reported")
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
        _plain(graph.traced.gm, batches[:1])  # warm
        times: dict[str, list[float]] = {imp: [] for imp in args.importances}
        ratios: dict[str, list[float]] = {imp: [] for imp in args.importances}
        plains = []
        for _ in range(args.rounds):  # each ratio pairs a scoring run with the plain run
            for imp in args.importances:  # next to it, so load drifts cancel
                plain = _plain(graph.traced.gm, batches)
                took = _scoring(imp, graph, batches)
                plains.append(plain)
                times[imp].append(took)
                ratios[imp].append(took / plain)
        plain = statistics.median(plains)
        for imp in args.importances:
            took, ratio = statistics.median(times[imp]), statistics.median(ratios[imp])
            print(f"{name} {imp}: scoring {took:.2f}s, plain forward {plain:.2f}s, "
                  f"ratio {ratio:.2f}x (median of {args.rounds} paired rounds; "
                  f"{args.images} images, {args.size}px, {args.threads} thread(s))", flush=True)
            lines.append(f"| {name} | {imp} | {took:.2f} | {plain:.2f} | {ratio:.2f} |")
    out = Path(__file__).resolve().parent / "results" / "scoring_time.md"
    out.write_text(f"Command: `python bench/scoring_time.py` ({args.images} images of "
                   f"{args.size}px in batches of {args.batch}, {args.threads} thread(s); "
                   f"ratio = median over {args.rounds} rounds of scoring / the plain forward "
                   "run just before it)\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
