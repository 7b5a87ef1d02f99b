"""The long fuzzing sweep: random programs (tests/programs.py) pruned and checked by verify on
a fresh input and by the independent value oracle (tests/oracle.py).

    python bench/fuzz.py --cases 10000 [--jobs 2] [--start 0] [--out bench/results/fuzz.md]

Prints and writes: cases run, exact, unchanged (nothing prunable), fallbacks, clear errors by
type, wrong models, raw exceptions, input mutations; and every case that was not exact.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _init() -> None:
    import logging

    import torch

    torch.set_num_threads(1)
    logging.getLogger("fxprune").setLevel(logging.ERROR)  # fallbacks are counted instead


def _one(seed: int):
    from programs import run_case

    return seed, run_case(seed)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default="bench/results/fuzz.md")
    args = ap.parse_args()
    from programs import tally

    t0 = time.perf_counter()
    seeds = range(args.start, args.start + args.cases)
    results = []
    with mp.get_context("fork").Pool(args.jobs, initializer=_init) as pool:
        for i, (seed, outcome) in enumerate(pool.imap_unordered(_one, seeds, chunksize=8)):
            results.append((seed, outcome))
            if outcome.kind not in ("exact", "unchanged") or outcome.fallbacks:
                print(f"seed {seed}: {outcome.kind} (fallbacks {outcome.fallbacks}) "
                      f"{outcome.detail[:200]} {outcome.program}", flush=True)
            if (i + 1) % 500 == 0:
                print(f"{i + 1} cases, {time.perf_counter() - t0:.0f} s", flush=True)
    results.sort(key=lambda r: r[0])
    counts = tally([o for _, o in results])
    elapsed = time.perf_counter() - t0
    rows = [("cases run", len(results)), ("exact (pruned, verified twice)", counts["exact"]),
            ("unchanged (nothing prunable)", counts["unchanged"]),
            ("programs with a fallback (still exact)", counts["programs with a fallback"]),
            ("fallbacks in all", counts["fallbacks"]),
            ("clear errors (FxPruneError)", counts["clear error"]),
            ("wrong models", counts["WRONG"]), ("raw exceptions", counts["RAW"]),
            ("input mutations", counts["MUTATED"])]
    rows += [(k, v) for k, v in sorted(counts.items()) if k.startswith("clear error: ")]
    lines = [f"# Fuzzing: {len(results)} random programs", "",
             f"`python bench/fuzz.py --cases {args.cases} --start {args.start} --jobs "
             f"{args.jobs}`: {elapsed / 60:.1f} min on this machine.", "",
             "| outcome | programs |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    odd = [(s, o) for s, o in results if o.kind not in ("exact", "unchanged") or o.fallbacks]
    if odd:
        lines += ["", "## Cases that were not plainly exact", ""]
        lines += [f"- seed {s}: {o.kind}, {o.fallbacks} fallback(s): {o.detail[:200]}"
                  for s, o in odd[:50]]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
