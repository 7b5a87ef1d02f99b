"""Compress + verify every torchvision classification model, each in its own subprocess.

    python bench/zoo_check.py [--skip-later] [--timeout 600] [--frontend fx|export|auto]
                              [--out bench/results/zoo_fxprune.md]

Prints one line per model and writes a markdown table, with a hash of each model's plan (the
removed positions): running it with ``PYTHONPATH`` pointing at another fxprune checkout and
comparing the hashes shows whether a change altered any selection.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import hashlib, json, sys, time, torch, torchvision, fxprune
name, size, frontend = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
kw = {"init_weights": False} if name in ("inception_v3", "googlenet") else {}
model = torchvision.models.get_model(name, **kw).eval()
with torch.no_grad():  # zero-initialised heads would make every output 0 and the oracle blind
    for n, p in model.named_parameters():  # zero heads / 1e-6 layer scales: blind oracle
        if float(p.abs().max()) <= 1e-5:
            p.normal_(1.0, 0.1) if "scale" in n else p.normal_(0, 0.02)
x = torch.randn(1, 3, size, size)
t0 = time.perf_counter()
gm = fxprune.compress(model, x, ratio=0.5, frontend=frontend, output="graph")
dt = time.perf_counter() - t0
r = gm.meta["fxprune"].report
plan = json.dumps(gm.meta["fxprune"].plan.removed, sort_keys=True).encode()
unsupported = sorted({f.message for f in r.frozen if f.category == "unsupported"})
print(json.dumps({"plan": hashlib.sha1(plan).hexdigest()[:12], "where": fxprune.__file__,
                  "ok": bool(r.verify.ok), "time": dt, "params": r.params_after / r.params_before,
                  "flops": r.flops_after / r.flops_before, "err": r.verify.max_abs_err,
                  "scale": r.verify.scale, "timings": r.timings,
                  "approx": r.verify.approx_deviation, "unsupported": unsupported,
                  "frontend": r.frontend}))
"""

LATER = ("vit_", "swin_", "maxvit_", "convnext_")


def input_size(name: str) -> int:
    if name.startswith("inception"):
        return 96
    if name.startswith(("vit_", "swin", "maxvit")):
        return 224
    return 64


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-later", action="store_true", help="skip vit/swin/maxvit/convnext")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--out", default=None, help="default bench/results/zoo_fxprune.md, "
                    "zoo_fxprune_export.md with --frontend export")
    ap.add_argument("--frontend", choices=["fx", "export", "auto"], default="fx")
    ap.add_argument("models", nargs="*")
    args = ap.parse_args()
    import torchvision

    names = args.models or torchvision.models.list_models(module=torchvision.models)
    if args.skip_later:
        names = [n for n in names if not n.startswith(LATER)]
    rows = []
    for name in names:
        t0 = time.perf_counter()
        try:
            # cwd elsewhere: "-c" puts the cwd first on sys.path, which would shadow a
            # PYTHONPATH pointing at another fxprune checkout
            proc = subprocess.run([sys.executable, "-c", CHILD, name, str(input_size(name)),
                                   args.frontend],
                                  capture_output=True, text=True, timeout=args.timeout,
                                  cwd=tempfile.gettempdir())
            if proc.returncode == 0:
                res = json.loads(proc.stdout.strip().splitlines()[-1])
            else:
                tail = proc.stderr.strip().splitlines()
                res = {"ok": False, "error": tail[-1][:200] if tail else
                       f"exit code {proc.returncode} (killed: out of memory?)"}
        except subprocess.TimeoutExpired:
            res = {"ok": False, "error": f"timeout after {args.timeout}s"}
        res["name"], res["wall"] = name, time.perf_counter() - t0
        rows.append(res)
        if res["ok"]:
            print(f"{name:24s} ok   {res.get('plan', '-')} compress {res['time']:6.2f}s "
                  f"params {res['params']:.2f} "
                  f"flops {res['flops']:.2f} rel.err {res['err'] / res['scale']:.1e}"
                  + (f" approx.dev {res['approx']:.2g}" if res.get("approx") is not None else "")
                  + (f" unsupported: {res['unsupported']}" if res.get("unsupported") else ""),
                  flush=True)
        else:
            print(f"{name:24s} FAIL {res.get('error')}", flush=True)
    ok = sum(r["ok"] for r in rows)
    print(f"{ok}/{len(rows)} compress and verify (fxprune from "
          f"{next((r['where'] for r in rows if 'where' in r), '?')})")
    out = Path(args.out or ("bench/results/zoo_fxprune.md" if args.frontend == "fx" else
                            f"bench/results/zoo_fxprune_{args.frontend}.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["| model | result | compress s | params kept | FLOPs kept | LayerNorm groups: "
             "relative deviation | plan |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["ok"]:
            dev = f"{r['approx']:.2g}" if r.get("approx") is not None else "-"
            lines.append(f"| {r['name']} | exact | {r['time']:.2f} | {r['params']:.2f} | "
                         f"{r['flops']:.2f} | {dev} | {r.get('plan', '-')} |")
        else:
            lines.append(f"| {r['name']} | FAIL: {r.get('error', '')} | | | | | |")
    lines.append(f"\n{ok}/{len(rows)} compress and verify (ratio 0.5, L2, frontend "
                 f"{args.frontend}).")
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
