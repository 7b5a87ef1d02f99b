"""Time fxprune.compress stage by stage on torchvision models at 224x224.

    python bench/compress_time.py resnet50 densenet201 [--repeats 3]
    python bench/compress_time.py resnet50 densenet201 --baseline 8e9aa3e [--current REV]

Prints the median total and per-stage times. With ``--baseline REV`` the fxprune package of
that git revision is extracted to a temporary directory and both versions are timed in the
same run, alternating in fresh subprocesses (one core each), and the ratio current/baseline
of the median totals is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def measure(name: str, repeats: int, size: int) -> dict:
    import torch
    import torchvision

    import fxprune

    model = torchvision.models.get_model(name).eval()
    x = torch.randn(1, 3, size, size)
    totals, stages = [], []
    nodes = len(fxprune.trace(model, x).gm.graph.nodes)
    for _ in range(repeats):
        t0 = time.perf_counter()
        gm = fxprune.compress(model, x, ratio=0.5)
        totals.append(time.perf_counter() - t0)
        stages.append(gm.meta["fxprune"].report.timings)
    med = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
    return {"nodes": nodes, "total": statistics.median(totals), "stages": med,
            "params": sum(p.numel() for p in gm.parameters()), "where": fxprune.__file__}


def _child(path: Path, name: str, repeats: int, size: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(path), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, __file__, "--child", name, "--repeats", str(repeats),
                          "--size", str(size)], env=env, capture_output=True, text=True,
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not result["where"].startswith(str(path)):
        raise RuntimeError(f"timed {result['where']}, expected the copy under {path}")
    return result


def _extract(rev: str, into: Path) -> Path:
    """The fxprune package of git revision ``rev``, under ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "fxprune"],
                             capture_output=True, check=True).stdout
    (into / "src.tar").write_bytes(archive)
    with tarfile.open(into / "src.tar") as tar:
        tar.extractall(into, filter="data")
    return into


def compare(models: list[str], baseline: str, rounds: int, repeats: int, size: int,
            current: str | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = _extract(baseline, Path(tmp) / "base")
        cur = _extract(current, Path(tmp) / "cur") if current else REPO
        print(f"| model | baseline {baseline} (s) | {current or 'current'} (s) | ratio | "
              "params equal |")
        print("|---|---|---|---|---|")
        for name in models:
            runs: dict[str, list[dict]] = {"base": [], "cur": []}
            for r in range(rounds):  # alternate the order: drift hits both alike
                order = [("base", base), ("cur", cur)] if r % 2 == 0 else \
                    [("cur", cur), ("base", base)]
                for key, path in order:
                    runs[key].append(_child(path, name, repeats, size))
            b = statistics.median(x["total"] for x in runs["base"])
            c = statistics.median(x["total"] for x in runs["cur"])
            same = runs["base"][0]["params"] == runs["cur"][0]["params"]
            print(f"| {name} | {b:.2f} | {c:.2f} | {c / b:.2f} | {same} |", flush=True)
            detail = ", ".join(f"{k} {v:.2f}" for k, v in runs["cur"][-1]["stages"].items())
            print(f"|   stages (current) | | {detail} | | |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--baseline", help="git revision to compare with, in the same run")
    ap.add_argument("--current", help="git revision to time instead of the work tree")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.repeats, args.size)))
        return
    if args.baseline:
        compare(args.models, args.baseline, args.rounds, args.repeats, args.size, args.current)
        return
    for name in args.models:
        r = measure(name, args.repeats, args.size)
        detail = ", ".join(f"{k} {v:.2f}s" for k, v in r["stages"].items())
        print(f"{name}: {r['nodes']} FX nodes, compress {r['total']:.2f}s "
              f"(median of {args.repeats}; {detail})")


if __name__ == "__main__":
    main()
