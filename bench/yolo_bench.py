"""ultralytics YOLO: fxprune (export frontend, module output, ratio 0.5, L2) against dense and
against Torch-Pruning 1.6 in the same run.

    python bench/yolo_bench.py [--size 320] [--budget 6] [--threads 1]
        [--out bench/results/yolo.md]

Models are built from their yaml (random init, nothing downloaded). Per model: params,
FLOPs (``torch.utils.flop_counter``), CPU latency at batch 1 (interleaved rounds, medians of
paired ratios: see ``zoo_bench._latency``), fxprune's compile time and verify, and what
Torch-Pruning's default call does (``BasePruner``, GroupMagnitudeImportance p=2, ratio 0.5,
the Detect head ignored - as its YOLOv8 example starts), with its error if it fails.
Needs the ``bench`` and ``yolo`` extras.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

MODELS = [("yolov8n", "DetectionModel", "yolov8n.yaml"),
          ("yolo11n", "DetectionModel", "yolo11n.yaml"),
          ("yolov8n-seg", "SegmentationModel", "yolov8n-seg.yaml")]


def _build(cls: str, yaml: str):
    import torch
    from ultralytics.nn import tasks

    torch.manual_seed(0)
    return getattr(tasks, cls)(yaml, verbose=False).eval()


TP_CHILD = r"""
import os, resource, sys, warnings
warnings.filterwarnings("ignore")
limit = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.4)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # a pruner that explodes fails alone
os.environ["YOLO_OFFLINE"] = "1"
import torch, torch_pruning as tp
from ultralytics.nn import tasks
torch.manual_seed(0)
model = getattr(tasks, sys.argv[1])(sys.argv[2], verbose=False).eval()
x = torch.randn(1, 3, int(sys.argv[3]), int(sys.argv[3]))
pruner = tp.pruner.BasePruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                              pruning_ratio=0.5, ignored_layers=[model.model[-1]])
pruner.step()
with torch.no_grad():
    model(x)
torch.save(model, sys.argv[4])
"""


def _tp(cls: str, yaml: str, size: int, timeout: int):
    """Torch-Pruning's default call in a child process (memory-limited, timed out: on YOLO
    it can grow without bound); the pruned model comes back through torch.save."""
    import subprocess
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tp.pt")
        try:
            proc = subprocess.run([sys.executable, "-c", TP_CHILD, cls, yaml, str(size), path],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"no result after {timeout}s") from None
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            raise RuntimeError(tail)
        return torch.load(path, weights_only=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--budget", type=float, default=6.0, help="latency seconds per model set")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/results/yolo.md")
    ap.add_argument("--tp-timeout", type=int, default=300)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import torch
    from zoo_bench import _flops, _latency

    import fxprune

    torch.set_num_threads(args.threads)
    x = torch.randn(1, 3, args.size, args.size)
    lines = [f"# YOLO: fxprune vs Torch-Pruning (ratio 0.5, L2, batch 1, {args.size} px, "
             f"{args.threads} CPU thread(s), random init)", "",
             "| model | params dense -> fxprune | FLOPs dense -> fxprune | latency dense -> "
             "fxprune ms | latency ratio / FLOPs ratio | fxprune compile s | fxprune verify | "
             "Torch-Pruning 1.6 |", "|---" * 8 + "|"]
    for name, cls, yaml in MODELS:
        dense = _build(cls, yaml)
        params = sum(p.numel() for p in dense.parameters())
        flops = _flops(dense, x)
        t0 = time.perf_counter()
        pruned = fxprune.compress(dense, (x,), ratio=0.5)
        compile_s = time.perf_counter() - t0
        report = fxprune.result_of(pruned).report
        fx_params = sum(p.numel() for p in pruned.parameters())
        fx_flops = _flops(pruned, x)
        models = {"dense": dense, "fxprune": pruned.eval()}
        try:
            tp_model = _tp(cls, yaml, args.size, args.tp_timeout).eval()
            tp_params = sum(p.numel() for p in tp_model.parameters())
            models["tp"] = tp_model
            tp_flops = _flops(tp_model, x)
            tp_text = f"ran: params {tp_params / params:.2f}, FLOPs {tp_flops / flops:.2f}"
        except Exception as exc:  # noqa: BLE001 - its failure is the result
            tp_text = f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
        lat = _latency(models, x, args.budget)
        if "tp" in models:
            tp_text += f", latency {lat['tp_ratio']:.2f} of dense"
        ratio_lat, ratio_flops = lat["fxprune_ratio"], fx_flops / flops
        verify = "exact" if report.verify.ok and report.module_verify.ok else "MISMATCH"
        lines.append(
            f"| {name} | {params / 1e6:.2f}M -> {fx_params / 1e6:.2f}M ({fx_params / params:.2f})"
            f" | {flops / 1e9:.2f}G -> {fx_flops / 1e9:.2f}G ({ratio_flops:.2f}) | "
            f"{lat['dense'] * 1e3:.1f} -> {lat['fxprune'] * 1e3:.1f} ({ratio_lat:.2f}) | "
            f"{ratio_lat / ratio_flops:.2f} | {compile_s:.1f} | {verify} | {tp_text} |")
        print(lines[-1], flush=True)
    lines += ["", "latency ratio / FLOPs ratio above 1: the pruned model is slower than its FLOPs "
              "suggest (fixed per-layer costs: the detect head and the box decoding are kept)."]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
