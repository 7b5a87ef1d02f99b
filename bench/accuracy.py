"""Accuracy vs FLOPs kept on MNIST-5k for every registered importance, with and without a
short fine-tune, across the small models.

    python bench/accuracy.py [--models resnet mobilenet ...] [--removed 0.3 0.5 0.7]

Every registered importance, alone and with lstsq compensation, at each fraction of FLOPs
removed (the channel ratio is found by bisection), with and without a 1-epoch fine-tune;
then the two reproductions in miniature (QSFM's no-fine-tune claim, CFDP vs HRank).
Writes bench/results/accuracy.md and one PNG per model (bench/results/accuracy_<model>.png).
Importances registered later appear automatically.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import fxprune
from fxprune.importance import available

try:
    from .data import mnist5k
    from .train import evaluate, fine_tune, trained
except ImportError:  # run as a script
    from data import mnist5k
    from train import evaluate, fine_tune, trained

RESULTS = Path(__file__).resolve().parent / "results"
CALIB_BATCHES, CALIB_SIZE = 4, 64  # 256 training images, labelled (Taylor uses the labels)


def _calibration(data) -> list:
    return list(itertools.islice(data.batches(CALIB_SIZE, seed=123), CALIB_BATCHES))


def ratio_for(model, x, removed: float, tol: float = 0.01) -> float:
    """The channel ratio that removes ``removed`` of the FLOPs (bisection; FLOPs depend on
    the ratio, not on which channels a criterion picks)."""
    base = fxprune.report.count_flops(model, (x,))
    lo, hi = 0.0, 0.95
    for _ in range(14):
        mid = (lo + hi) / 2
        gm = fxprune.compress(model, (x,), ratio=mid, verify=False)
        kept = fxprune.report.count_flops(gm, (x,)) / base
        if abs(kept - (1 - removed)) < tol:
            return mid
        lo, hi = (mid, hi) if kept > 1 - removed else (lo, mid)
    return (lo + hi) / 2


def configs() -> list[tuple[str, str | None]]:
    """Every registered importance, alone and with lstsq compensation (qsfm_merge brings its
    own merge compensation)."""
    out = []
    for imp in available():
        out.append((imp, None))
        if imp != "qsfm_merge":
            out.append((imp, "lstsq"))
    return out


def _prune(model, x, data, calib, imp, comp, ratio):
    kw = dict(ratio=ratio, importance=imp, calibration=calib, max_batches=CALIB_BATCHES,
              loss_fn=F.cross_entropy)
    if comp is not None:
        kw["compensate"] = comp
    return fxprune.compress(model, (x,), **kw)


def study(models: list[str], removed: list[float], ft_epochs: int) -> list[dict]:
    data = mnist5k()
    x = data.x_test[:8]
    calib = _calibration(data)
    rows = []
    for name in models:
        model = trained(name, data)
        base = fxprune.report.count_flops(model, (x,))
        dense = evaluate(model, data)
        rows.append({"model": name, "importance": "dense", "compensate": "", "removed": 0.0,
                     "ratio": 0.0, "flops": 1.0, "acc": dense, "acc_ft": dense})
        for target in removed:
            ratio = ratio_for(model, x, target)
            for imp, comp in configs():
                t0 = time.perf_counter()
                gm = _prune(model, x, data, calib, imp, comp, ratio)
                took = time.perf_counter() - t0
                flops = fxprune.report.count_flops(gm, (x,)) / base
                acc = evaluate(gm, data)
                tuned = fine_tune(copy.deepcopy(gm), data, ft_epochs)
                rows.append({"model": name, "importance": imp, "compensate": comp or "",
                             "removed": target, "ratio": ratio, "flops": flops, "acc": acc,
                             "acc_ft": evaluate(tuned, data), "seconds": took})
                print(rows[-1], flush=True)
    return rows


def qsfm_claim(removed: float = 0.48) -> list[dict]:
    """QSFM's headline in miniature: ~48% FLOPs off the ResNet-style model, no fine-tune."""
    data = mnist5k()
    x = data.x_test[:8]
    calib = _calibration(data)
    model = trained("resnet", data)
    base = fxprune.report.count_flops(model, (x,))
    ratio = ratio_for(model, x, removed)
    rows = [{"config": "dense", "flops": 1.0, "acc": evaluate(model, data)}]
    for imp, comp in [("qsfm", None), ("qsfm_merge", None), ("qsfm", "lstsq"), ("l1", None),
                      ("l1", "lstsq"), ("hrank", None), ("cfdp", None), ("cfdp", "lstsq")]:
        gm = _prune(model, x, data, calib, imp, comp, ratio)
        rows.append({"config": imp + (f" + {comp}" if comp else ""),
                     "flops": fxprune.report.count_flops(gm, (x,)) / base,
                     "acc": evaluate(gm, data)})
        print(rows[-1], flush=True)
    return rows


def _verdicts(rows: list[dict], claim: list[dict]) -> list[str]:
    lines = []
    dense = claim[0]["acc"]
    best = max(claim[1:], key=lambda r: r["acc"])
    q = [r for r in claim if r["config"].startswith("qsfm")]
    best_q = max(q, key=lambda r: r["acc"])
    ok = dense - best_q["acc"] <= 0.01
    lines.append(f"- (a) QSFM, {1 - best_q['flops']:.0%} FLOPs removed from the ResNet-style "
                 f"model, no fine-tune: best QSFM variant `{best_q['config']}` "
                 f"{best_q['acc']:.2%} vs dense {dense:.2%} "
                 f"({'reproduced' if ok else 'not reproduced'}: the claim is within 1 pt); "
                 f"best of all configs `{best['config']}` {best['acc']:.2%}.")
    for model in sorted({r["model"] for r in rows}):
        pairs = []
        for key in ("acc", "acc_ft"):
            for comp in ("", "lstsq"):
                c = [r[key] for r in rows if r["model"] == model and r["importance"] == "cfdp"
                     and r["compensate"] == comp]
                h = [r[key] for r in rows if r["model"] == model and r["importance"] == "hrank"
                     and r["compensate"] == comp]
                pairs += list(zip(c, h))
        if pairs:
            wins = sum(c >= h - 1e-9 for c, h in pairs)
            mean_gap = sum(c - h for c, h in pairs) / len(pairs)
            lines.append(f"- (b) {model}: CFDP >= HRank in {wins} of {len(pairs)} equal-budget "
                         f"cells (mean gap {mean_gap:+.2%})")
    return lines


def write(rows: list[dict], claim: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(exist_ok=True)
    lines = ["# Accuracy vs FLOPs on MNIST-5k", "",
             "Command: `python bench/accuracy.py` (calibration: "
             f"{CALIB_BATCHES} x {CALIB_SIZE} training images; fine-tune: 1 epoch).", "",
             "## Reproductions in miniature", ""] + _verdicts(rows, claim) + [
             "", "| config (ResNet-style, no fine-tune) | FLOPs kept | accuracy |",
             "|---|---|---|"]
    lines += [f"| {r['config']} | {r['flops']:.2f} | {r['acc']:.4f} |" for r in claim]
    lines += ["", "## All runs", "",
              "| model | importance | compensate | FLOPs removed (target) | FLOPs kept | "
              "accuracy | after fine-tune |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['importance']} | {r['compensate']} | "
                     f"{r['removed']:.2f} | {r['flops']:.2f} | {r['acc']:.4f} | "
                     f"{r['acc_ft']:.4f} |")
    (RESULTS / "accuracy.md").write_text("\n".join(lines) + "\n")
    imps = sorted({r["importance"] for r in rows} - {"dense"})
    colors = {imp: plt.cm.tab10(i % 10) for i, imp in enumerate(imps)}
    for model in sorted({r["model"] for r in rows}):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        dense = next(r for r in rows if r["model"] == model and r["importance"] == "dense")
        for ax, key, title in ((axes[0], "acc", "no fine-tune"),
                               (axes[1], "acc_ft", "after 1-epoch fine-tune")):
            ax.axhline(dense["acc"], color="k", ls=":", label="dense")
            for imp in imps:
                for comp, style in (("", "o-"), ("lstsq", "s--")):
                    pts = sorted((r["flops"], r[key]) for r in rows if r["model"] == model
                                 and r["importance"] == imp and r["compensate"] == comp)
                    if pts:
                        f, a = zip(*pts)
                        ax.plot(f, a, style, color=colors[imp], ms=4,
                                label=imp + (" + lstsq" if comp else ""))
            ax.set_xlabel("FLOPs kept")
            ax.set_title(f"{model}: {title}")
        axes[0].set_ylabel("test accuracy (MNIST-5k)")
        axes[1].legend(fontsize=6, ncol=2, loc="lower right")
        fig.tight_layout()
        fig.savefig(RESULTS / f"accuracy_{model}.png", dpi=110)
        plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["resnet", "vgg", "mobilenet", "inception",
                                                    "mlp"])
    ap.add_argument("--removed", nargs="*", type=float, default=[0.3, 0.5, 0.7],
                    help="fractions of FLOPs removed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ft-epochs", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = study(args.models, args.removed, args.ft_epochs)
    claim = qsfm_claim()
    write(rows, claim)
    print(f"done in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
