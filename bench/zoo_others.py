"""The rest of the torchvision zoo through the export frontend (module output; detection
through the default "auto" call, which prunes regions): segmentation, video, optical flow
and detection, each model in its own subprocess.

    python bench/zoo_others.py [MODEL ...] [--frontend export|auto|fx] [--timeout 900]
        [--out bench/results/zoo_others.md]

Random init (``weights=None, weights_backbone=None``), ratio 0.5, L2. Prints one line per
model and writes a markdown table: frontend, output, verify of the graph and of the returned
module itself (or, for detection, every region and the assembled model), params kept.
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
import json, sys, time, warnings, torch, torchvision, fxprune
from fxprune.pipeline.regions import regions_report
warnings.filterwarnings("ignore")
family, name, frontend = sys.argv[1], sys.argv[2], sys.argv[3]
if family == "detection":
    frontend = "auto"  # regions: only the auto frontend falls back to them
torch.manual_seed(0)
kw = {"weights": None}
if family in ("segmentation", "detection"):
    kw["weights_backbone"] = None
if family == "detection":
    kw.update(min_size=160, max_size=160) if "ssd" not in name and "keypoint" not in name else None
model = torchvision.models.get_model(name, **kw).eval()
if family == "segmentation":
    inputs = (torch.randn(1, 3, 64, 64),)
elif family == "video":
    big = name.startswith(("mvit", "s3d"))
    inputs = (torch.randn(1, 3, 16, 224, 224) if big else torch.randn(1, 3, 4, 64, 64),)
elif family == "optical_flow":
    inputs = (torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128))
else:
    size = 320 if "ssd" in name else 160
    inputs = ([torch.rand(3, size, size)],)
before = sum(p.numel() for p in model.parameters())
t0 = time.perf_counter()
out = fxprune.compress(model, inputs, ratio=0.5, frontend=frontend)
dt = time.perf_counter() - t0
after = sum(p.numel() for p in out.parameters())
try:
    r = fxprune.result_of(out).report
    res = {"frontend": r.frontend, "output": r.output, "verify": str(r.verify)[:60],
           "module": str(r.module_verify)[:60] if r.module_verify else "-",
           "ok": bool(r.verify.ok and (r.module_verify is None or r.module_verify.ok)),
           "fallbacks": len(r.fallbacks)}
except KeyError:
    rep = regions_report(out)
    res = {"frontend": "regions", "output": "module",
           "verify": "; ".join(f"{g.path} {g.verify[:5]}" for g in rep.regions),
           "module": rep.whole_model[:60], "ok": all(g.verify.startswith("exact")
                                                      for g in rep.regions) and rep.whole_ok,
           "fallbacks": len(rep.left_out)}
res.update(time=dt, params=after / before)
print(json.dumps(res))
"""

FAMILIES = ("segmentation", "video", "optical_flow", "detection")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--out", default="bench/results/zoo_others.md")
    ap.add_argument("--frontend", choices=["auto", "fx", "export"], default="export",
                    help="for the non-detection models (detection always goes by regions)")
    args = ap.parse_args()
    import torchvision

    todo = [(f, n) for f in FAMILIES
            for n in torchvision.models.list_models(module=getattr(torchvision.models, f))
            if not args.models or n in args.models]
    rows = []
    for family, name in todo:
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-c", CHILD, family, name, args.frontend],
                                  capture_output=True, text=True, timeout=args.timeout,
                                  cwd=tempfile.gettempdir())
            lines = proc.stdout.strip().splitlines()
            res = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
                "ok": False, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:160]}
        except subprocess.TimeoutExpired:
            res = {"ok": False, "error": f"timeout after {args.timeout}s"}
        res.update(family=family, name=name, wall=time.perf_counter() - t0)
        rows.append(res)
        print(json.dumps(res), flush=True)
    lines = ["| family | model | result | frontend | output | params kept | compress s | "
             "graph verify | module / assembled model | fallbacks or left out |",
             "|---" * 10 + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['family']} | {r['name']} | FAIL: {r['error']} | | | | | | | |")
            continue
        lines.append(f"| {r['family']} | {r['name']} | {'exact' if r['ok'] else 'MISMATCH'} | "
                     f"{r['frontend']} | {r['output']} | {r['params']:.2f} | {r['time']:.1f} | "
                     f"{r['verify']} | {r['module']} | {r['fallbacks']} |")
    ok = sum(bool(r.get("ok")) for r in rows)
    lines.append(f"\n{ok}/{len(rows)} exact (ratio 0.5, L2, frontend {args.frontend}; "
                 "detection: auto, by regions).")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(lines[-1])


if __name__ == "__main__":
    main()
