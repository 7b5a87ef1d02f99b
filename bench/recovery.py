"""Pruning without fine-tuning: recovery methods on MNIST-5k, and QSFM's ResNet-56 claim.

    python bench/recovery.py [--models resnet vgg ...] [--removed 0.3 0.5 0.7] [--no-claim]

Part 1: the five small models at each fraction of FLOPs removed (channel ratio by
bisection), no fine-tune: none / lstsq / bn / sequential / sequential + bn, for L2, CFDP,
QSFM (and QSFM + merge, its own compensation, in the "none" column), HRank and Taylor.
Part 2: a ResNet-56-shaped model (3 stages x 9 basic blocks, 16/32/64 channels) trained on
the real digits padded to 32 x 32, pruned by ~48 % FLOPs without fine-tuning (QSFM's
headline: -0.54 pt on CIFAR-10). Writes bench/results/recovery.{md,csv} and
recovery_<model>.png; the trained ResNet-56 is cached in bench/.cache.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune

try:
    from .accuracy import CALIB_BATCHES, _calibration, ratio_for
    from .data import Split, mnist5k
    from .models import BasicBlock, conv_bn
    from .train import CACHE, evaluate, fit, trained
except ImportError:  # run as a script
    from accuracy import CALIB_BATCHES, _calibration, ratio_for
    from data import Split, mnist5k
    from models import BasicBlock, conv_bn
    from train import CACHE, evaluate, fit, trained

RESULTS = Path(__file__).resolve().parent / "results"
CRITERIA = ("l2", "cfdp", "qsfm", "qsfm_merge", "hrank", "taylor")
RECOVERY = {"none": ("none", None), "lstsq": ("lstsq", None), "bn": ("none", "bn"),
            "sequential": ("sequential", None), "sequential + bn": ("sequential", "bn")}


def _prune(model, x, calib, imp, recovery, ratio):
    comp, rec = RECOVERY[recovery]
    if imp == "qsfm_merge" and comp == "none":
        comp = None  # its own merge compensation
    return fxprune.compress(model, (x,), ratio=ratio, importance=imp, calibration=calib,
                            max_batches=CALIB_BATCHES, loss_fn=F.cross_entropy,
                            compensate=comp, recalibrate=rec)


def sweep(name: str, model: nn.Module, data: Split, removed: list[float]) -> list[dict]:
    x = data.x_test[:8]
    calib = _calibration(data)
    base = fxprune.report.count_flops(model, (x,))
    rows = [{"model": name, "importance": "dense", "recovery": "", "removed": 0.0,
             "flops": 1.0, "acc": evaluate(model, data), "seconds": 0.0}]
    for target in removed:
        ratio = ratio_for(model, x, target)
        for imp in CRITERIA:
            for recovery in RECOVERY:
                t0 = time.perf_counter()
                gm = _prune(model, x, calib, imp, recovery, ratio)
                rows.append({"model": name, "importance": imp, "recovery": recovery,
                             "removed": target,
                             "flops": fxprune.report.count_flops(gm, (x,)) / base,
                             "acc": evaluate(gm, data), "seconds": time.perf_counter() - t0})
                print(rows[-1], flush=True)
    return rows


class ResNet56(nn.Module):
    """CIFAR's ResNet-56 shape: 3 stages x 9 basic blocks, 16/32/64 channels, 32 x 32 input."""

    def __init__(self, classes: int = 10):
        super().__init__()
        layers, cin = [], 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(9):
                layers.append(BasicBlock(cin, cout, 2 if stage and i == 0 else 1))
                cin = cout
        self.stem, self.stages = conv_bn(1, 16), nn.Sequential(*layers)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1))


def padded(data: Split) -> Split:
    pad = lambda t: F.pad(t, (2, 2, 2, 2))  # noqa: E731 - 28 x 28 -> 32 x 32
    return Split(pad(data.x_train), data.y_train, pad(data.x_test), data.y_test)


def resnet56(data: Split, epochs: int = 6) -> nn.Module:
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"resnet56-e{epochs}.pt"
    torch.manual_seed(0)
    model = ResNet56()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    fit(model, data, epochs)
    torch.save(model.state_dict(), path)
    return model.eval()


def write(rows: list[dict], claim: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "recovery.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows + claim)
    lines = ["# Pruning without fine-tuning: recovery methods", "",
             "Command: `python bench/recovery.py` (calibration: "
             f"{CALIB_BATCHES} x 64 training images, unlabelled except for Taylor; no "
             "fine-tune anywhere). `none` for qsfm_merge is its own merge compensation.", ""]
    lines += ["## Best configuration per model and FLOPs removed", "",
              "| model | FLOPs removed | dense | best | accuracy | gap (pt) |",
              "|---|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        dense = mine[0]["acc"]
        for target in sorted({r["removed"] for r in mine} - {0.0}):
            best = max((r for r in mine if r["removed"] == target), key=lambda r: r["acc"])
            lines.append(f"| {model} | {target:.2f} | {dense:.4f} | {best['importance']} + "
                         f"{best['recovery']} | {best['acc']:.4f} | "
                         f"{100 * (dense - best['acc']):.1f} |")
    lines += ["", "## QSFM's claim on a ResNet-56-shaped model (MNIST-5k, 32 x 32)", "",
              "| config | FLOPs kept | accuracy |", "|---|---|---|"]
    lines += [f"| {' + '.join(filter(None, (r['importance'], r['recovery'])))} | "
              f"{r['flops']:.3f} | {r['acc']:.4f} |"
              for r in claim]
    lines += ["", "## All runs", "", "| model | importance | recovery | FLOPs removed | "
              "FLOPs kept | accuracy | seconds |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['importance']} | {r['recovery']} | {r['removed']:.2f} | "
              f"{r['flops']:.3f} | {r['acc']:.4f} | {r['seconds']:.1f} |" for r in rows]
    (RESULTS / "recovery.md").write_text("\n".join(lines) + "\n")
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.axhline(mine[0]["acc"], color="k", ls=":", label="dense")
        for recovery in RECOVERY:  # the best criterion at each point
            pts = []
            for target in sorted({r["removed"] for r in mine} - {0.0}):
                pts.append((target, max(r["acc"] for r in mine if r["removed"] == target
                                        and r["recovery"] == recovery)))
            ax.plot(*zip(*pts), "o-", label=recovery)
        ax.set_xlabel("FLOPs removed")
        ax.set_ylabel("test accuracy, no fine-tune (best criterion)")
        ax.set_title(model)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(RESULTS / f"recovery_{model}.png", dpi=110)
        plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*",
                    default=["resnet", "vgg", "mobilenet", "inception", "mlp"])
    ap.add_argument("--removed", nargs="*", type=float, default=[0.3, 0.5, 0.7])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-claim", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = mnist5k()
    rows = []
    for name in args.models:
        rows += sweep(name, trained(name, data), data, args.removed)
    claim: list[dict] = []
    if not args.no_claim:
        big = padded(data)
        model = resnet56(big)
        for r in sweep("resnet56", model, big, [0.48]):
            if r["importance"] in ("dense", "qsfm", "qsfm_merge") or r["recovery"] in (
                    "sequential + bn", "lstsq"):
                claim.append(r)
    write(rows, claim)


if __name__ == "__main__":
    main()
