"""fxprune against Torch-Pruning (TP) in the same run, model by model, each in a subprocess.

    python bench/zoo_bench.py [MODEL ...] [--timeout 600] [--out bench/results/zoo_vs_tp]
                              [--frontend fx|export]

For every torchvision classification model (or the ones named): fxprune ``compress`` (L2,
ratio 0.5) and TP 1.6 ``BasePruner`` (GroupMagnitudeImportance p=2, ratio 0.5, classifier
ignored, the fixes TP's own examples apply: ViT ``hidden_dim``, MultiheadAttention
``num_heads``). Records success, fxprune's verify, compile time (fxprune: trace -> rewrite;
TP: pruner construction + step), params and FLOPs (``torch.utils.flop_counter`` for both),
and CPU latency of dense / fxprune / TP models at batch 1 and 8, interleaved (A B C A B C ...)
with medians. Writes CSV, a markdown table and summary lines. Needs the ``bench`` extra.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import copy, json, os, resource, statistics, sys, time, warnings
limit = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.6)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # a tool that explodes fails alone
import torch, torchvision
warnings.filterwarnings("ignore")
torch.manual_seed(0)
torch.set_num_threads(int(sys.argv[4]))
sys.path.insert(0, "bench")
from zoo_bench import child_main
print("RESULT " + json.dumps(child_main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]),
                                        sys.argv[5])))
"""


def input_size(name: str) -> int:
    return 224 if name.startswith(("vit_", "maxvit")) else 128


def _fresh_model(name: str):
    import torch
    import torchvision

    kw = {"init_weights": False} if name in ("inception_v3", "googlenet") else {}
    model = torchvision.models.get_model(name, **kw).eval()
    with torch.no_grad():  # zero heads / 1e-6 layer scales would make the oracle blind
        for n, p in model.named_parameters():
            if float(p.abs().max()) <= 1e-5:
                p.normal_(1.0, 0.1) if "scale" in n else p.normal_(0, 0.02)
    return model


def _flops(model, x) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as c:
        model(x)
    return int(c.get_total_flops())


def _tp_prune(model, x):
    import torch.nn as nn
    import torch_pruning as tp

    classifier = [m for m in model.modules()  # Linear heads, and SqueezeNet's conv head
                  if (isinstance(m, nn.Linear) and m.out_features == 1000)
                  or (isinstance(m, nn.Conv2d) and m.out_channels == 1000)]
    num_heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    pruner = tp.pruner.BasePruner(
        model, x, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5,
        ignored_layers=classifier[-1:], num_heads=num_heads)
    pruner.step()
    if hasattr(model, "hidden_dim") and hasattr(model, "conv_proj"):  # TP's ViT example fix
        model.hidden_dim = model.conv_proj.out_channels
    return model


def _latency(models: dict, x, budget_s: float) -> dict:
    """Median seconds per forward, measured interleaved (A B C A B C ...) so drift hits every
    model alike, and the median of the per-round ratios to the first model: on a shared,
    noisy CPU a paired ratio is far steadier than a ratio of two medians."""
    import torch

    with torch.no_grad():
        for m in models.values():
            m(x)
        t0 = time.perf_counter()
        for m in models.values():
            m(x)
        one_round = time.perf_counter() - t0
        rounds = int(max(5, min(25, budget_s / max(one_round, 1e-6))))
        times = {k: [] for k in models}
        for r in range(rounds):  # A B C, C B A, ...: no model always runs after the same one
            for k, m in (list(models.items()) if r % 2 == 0 else list(models.items())[::-1]):
                t = time.perf_counter()
                m(x)
                times[k].append(time.perf_counter() - t)
    base = next(iter(times.values()))
    out = {k: statistics.median(v) for k, v in times.items()}
    out.update({f"{k}_ratio": statistics.median(a / b for a, b in zip(v, base))
                for k, v in times.items()})
    return out


def _tp_with_timeout(fn, seconds: int):
    """TP in the same process (its model is timed against ours), cut off by SIGALRM: one slow
    TP model must not cost fxprune's row."""
    import signal

    def _alarm(signum, frame):
        raise TimeoutError(f"TP took over {seconds}s")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _timed(fn, exclude=None):
    """(seconds, result) of the second of two runs when the first was short: both tools are
    timed warm (the first call in a fresh process pays for lazy imports)."""
    t0 = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t0
    if first > 5.0:
        return first, result
    t0 = time.perf_counter()
    result = fn()
    took = time.perf_counter() - t0
    if exclude is not None:  # e.g. the deepcopy TP needs because it prunes in place
        t0 = time.perf_counter()
        exclude()
        took -= time.perf_counter() - t0
    return took, result


TP_TIMEOUT = 240


def child_main(name: str, size: int, budget: float, frontend: str = "fx") -> dict:
    import torch

    import fxprune

    out: dict = {"name": name, "size": size, "frontend": frontend}
    x = torch.randn(1, 3, size, size)
    dense = _fresh_model(name)
    out["params"] = sum(p.numel() for p in dense.parameters())
    out["flops"] = _flops(dense, x)
    models = {"dense": dense}
    try:
        out["fx_compile"], gm = _timed(lambda: fxprune.compress(
            dense, x, ratio=0.5, verify=False, frontend=frontend, output="graph"))
        big = out["params"] > 200_000_000  # float64 copies of ~600M params exceed the limit
        res = fxprune.verify(gm, dtype=torch.float32 if big else torch.float64)
        out["fx_verify_dtype"] = "float32" if big else "float64"
        out["fx_verify"] = "exact" if res.ok else "MISMATCH"
        out["fx_approx"] = res.approx_deviation
        out["fx_params"] = sum(p.numel() for p in gm.parameters())
        out["fx_flops"] = _flops(gm, x)
        models["fxprune"] = gm
    except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
        out["fx_error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
    try:
        import copy

        out["tp_compile"], tp_model = _tp_with_timeout(
            lambda: _timed(lambda: _tp_prune(copy.deepcopy(dense), x),
                           exclude=lambda: copy.deepcopy(dense)), TP_TIMEOUT)
        with torch.no_grad():
            y = tp_model(x)
        if tuple(y.shape) != (1, 1000):
            raise RuntimeError(f"output shape {tuple(y.shape)}")
        out["tp_params"] = sum(p.numel() for p in tp_model.parameters())
        out["tp_flops"] = _flops(tp_model, x)
        models["tp"] = tp_model
    except Exception as exc:  # noqa: BLE001
        out["tp_error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
    for batch in (1, 8):
        xb = torch.randn(batch, 3, size, size)
        for k, v in _latency(models, xb, budget).items():
            out[f"lat{batch}_{k}"] = v  # lat8_tp: seconds; lat8_tp_ratio: paired, to dense
    return out


FIELDS = ["name", "size", "params", "flops", "fx_compile", "fx_verify", "fx_approx", "fx_params",
          "fx_flops", "fx_error", "tp_compile", "tp_params", "tp_flops", "tp_error",
          "lat1_dense", "lat1_fxprune", "lat1_tp", "lat8_dense", "lat8_fxprune", "lat8_tp",
          "lat1_fxprune_ratio", "lat1_tp_ratio", "lat8_fxprune_ratio", "lat8_tp_ratio"]


def _fmt(v, digits=3):
    if v is None or v == "":
        return ""
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _num(v: str):
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def _rel(r: dict, key: str, base: float) -> str:
    """A ratio to the dense model, or the tool's error where it failed."""
    if r.get(key):
        return f"{r[key] / base:.2f}"
    return r.get("tp_error" if "tp" in key else "fx_error", "")[:40]


TARGET_LATENCY_MODELS = ("resnet50", "mobilenet_v2", "efficientnet_b0")


def _lat_ratio(r: dict, tool: str) -> float | None:
    """Batch-8 latency of a pruned model relative to dense (paired ratio when recorded)."""
    if r.get(f"lat8_{tool}_ratio"):
        return r[f"lat8_{tool}_ratio"]
    if r.get(f"lat8_{tool}") and r.get("lat8_dense"):
        return r[f"lat8_{tool}"] / r["lat8_dense"]
    return None


def summarise(rows: list[dict]) -> list[str]:
    fx_ok = [r for r in rows if r.get("fx_verify") == "exact"]
    tp_ok = [r for r in rows if r.get("tp_flops")]
    both = [r for r in rows if r.get("fx_compile") and r.get("tp_compile")]
    lines = [f"models: {len(rows)}; fxprune compress+verify exact: {len(fx_ok)}; "
             f"TP prune+run: {len(tp_ok)}"]
    if both:
        ratios = [r["fx_compile"] / r["tp_compile"] for r in both]
        lines.append(f"compile time fxprune/TP: median {statistics.median(ratios):.2f}x over "
                     f"{len(both)} models (target <= 0.5x); fxprune faster on "
                     f"{sum(x < 1 for x in ratios)}")
        dn = [r for r in both if r["name"] == "densenet201"]
        if dn:
            ratio = dn[0]["fx_compile"] / dn[0]["tp_compile"]
            lines.append(f"compile time densenet201: {ratio:.2f}x (target <= 0.2x)")
    same = [r for r in rows if _lat_ratio(r, "fxprune") and _lat_ratio(r, "tp")
            and r.get("fx_flops") == r.get("tp_flops")]
    if same:
        rel = [_lat_ratio(r, "fxprune") / _lat_ratio(r, "tp") for r in same]
        lines.append(f"batch-8 latency fxprune/TP at equal FLOPs: median "
                     f"{statistics.median(rel):.2f} over {len(same)} models "
                     f"(within 5%: {sum(x <= 1.05 for x in rel)})")
    for r in rows:
        lat = _lat_ratio(r, "fxprune")
        if lat is None or not r.get("fx_flops"):
            continue
        flops = r["fx_flops"] / r["flops"]
        tp = _lat_ratio(r, "tp")
        tp_txt = f", TP {tp:.2f} at FLOPs {r['tp_flops'] / r['flops']:.2f}" if tp else ""
        mark = " [target <= 1.15]" if r["name"] in TARGET_LATENCY_MODELS else ""
        lines.append(f"{r['name']}: batch-8 latency {lat:.2f} at FLOPs {flops:.2f} "
                     f"(latency/FLOPs {lat / flops:.2f}){mark}{tp_txt}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*")
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--budget", type=float, default=4.0, help="latency seconds per batch size")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per model (1: one core, steady beside other work)")
    ap.add_argument("--out", default="bench/results/zoo_vs_tp")
    ap.add_argument("--from-log", help="rebuild the tables from the JSON lines of a run")
    ap.add_argument("--frontend", choices=["fx", "export"], default="fx",
                    help="fxprune's capture (the pruned graph is timed either way)")
    args = ap.parse_args()
    import torchvision

    names = args.models or torchvision.models.list_models(module=torchvision.models)
    rows = []
    if args.from_log:
        names = []
        for line in Path(args.from_log).read_text().splitlines():
            if line.startswith("{"):
                rows.append({k: _num(v) for k, v in json.loads(line).items()})
    for name in names:
        try:
            proc = subprocess.run([sys.executable, "-c", CHILD, name, str(input_size(name)),
                                   str(args.budget), str(args.threads), args.frontend],
                                  capture_output=True, text=True,
                                  timeout=args.timeout)
            got = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            row = json.loads(got[-1][7:]) if got else {
                "name": name, "fx_error": (proc.stderr.strip().splitlines() or ["?"])[-1][:160]}
        except subprocess.TimeoutExpired:
            row = {"name": name, "fx_error": f"timeout {args.timeout}s"}
        rows.append(row)
        print(json.dumps({k: _fmt(row.get(k)) for k in FIELDS if row.get(k) is not None}),
              flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{out}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in FIELDS})
    head = ("| model | fxprune | compile fx s | compile TP s | params fx | params TP | FLOPs fx |"
            " FLOPs TP | b8 latency fx | b8 latency TP |")
    lines = [head, "|---" * 10 + "|"]
    for r in rows:
        p, f = r.get("params", 1), r.get("flops", 1)
        lat = [_lat_ratio(r, t) for t in ("fxprune", "tp")]
        cells = [_rel(r, "fx_params", p), _rel(r, "tp_params", p), _rel(r, "fx_flops", f),
                 _rel(r, "tp_flops", f)] + [
                 f"{v:.2f}" if v else r.get(err, "")[:40]
                 for v, err in zip(lat, ("fx_error", "tp_error"))]
        lines.append(f"| {r['name']} | {r.get('fx_verify', r.get('fx_error', ''))[:40]} | "
                     f"{_fmt(r.get('fx_compile'))} | {_fmt(r.get('tp_compile'))} | "
                     + " | ".join(cells) + " |")
    summary = summarise(rows)
    Path(f"{out}.md").write_text("\n".join(lines + [""] + summary) + "\n")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
