"""Accuracy vs FLOPs kept on MNIST-5k for every registered importance, with and without a
short fine-tune, across the small models.

    python bench/accuracy.py [--models resnet mobilenet ...] [--ratios 0.3 0.5 0.7]

Writes bench/results/accuracy.md and one PNG per model (bench/results/accuracy_<model>.png).
Importances registered later (BN scale, Taylor, CFDP, QSFM) appear automatically.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

import fxprune
from fxprune.importance import available

try:
    from .data import mnist5k
    from .train import evaluate, fine_tune, trained
except ImportError:  # run as a script
    from data import mnist5k
    from train import evaluate, fine_tune, trained

RESULTS = Path(__file__).resolve().parent / "results"


def study(models: list[str], ratios: list[float], ft_epochs: int) -> list[dict]:
    data = mnist5k()
    x = data.x_test[:8]
    rows = []
    for name in models:
        model = trained(name, data)
        base = fxprune.report.count_flops(model, (x,))
        rows.append({"model": name, "importance": "dense", "ratio": 0.0, "flops": 1.0,
                     "acc": evaluate(model, data), "acc_ft": evaluate(model, data)})
        for imp in available():
            for ratio in ratios:
                gm = fxprune.compress(model, (x,), ratio=ratio, importance=imp)
                flops = fxprune.report.count_flops(gm, (x,)) / base
                acc = evaluate(gm, data)
                tuned = fine_tune(copy.deepcopy(gm), data, ft_epochs)
                rows.append({"model": name, "importance": imp, "ratio": ratio, "flops": flops,
                             "acc": acc, "acc_ft": evaluate(tuned, data)})
                print(rows[-1], flush=True)
    return rows


def write(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(exist_ok=True)
    lines = ["| model | importance | ratio | FLOPs kept | accuracy | after fine-tune |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['importance']} | {r['ratio']:.2f} | "
                     f"{r['flops']:.2f} | {r['acc']:.4f} | {r['acc_ft']:.4f} |")
    (RESULTS / "accuracy.md").write_text("\n".join(lines) + "\n")
    for model in sorted({r["model"] for r in rows}):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        dense = next(r for r in rows if r["model"] == model and r["importance"] == "dense")
        ax.axhline(dense["acc"], color="k", ls=":", label="dense")
        for imp in sorted({r["importance"] for r in rows} - {"dense"}):
            pts = sorted((r["flops"], r["acc"], r["acc_ft"]) for r in rows
                         if r["model"] == model and r["importance"] == imp)
            if not pts:
                continue
            f, a, aft = zip(*pts)
            line, = ax.plot(f, a, "o--", label=f"{imp}")
            ax.plot(f, aft, "o-", color=line.get_color(), label=f"{imp} + fine-tune")
        ax.set_xlabel("FLOPs kept")
        ax.set_ylabel("test accuracy (MNIST-5k)")
        ax.set_title(model)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(RESULTS / f"accuracy_{model}.png", dpi=110)
        plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["resnet", "vgg", "mobilenet", "inception",
                                                    "mlp"])
    ap.add_argument("--ratios", nargs="*", type=float, default=[0.3, 0.5, 0.7])
    ap.add_argument("--ft-epochs", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    rows = study(args.models, args.ratios, args.ft_epochs)
    write(rows)
    print(f"done in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
