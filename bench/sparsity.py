"""Training-time sparsity, reproduced in miniature on MNIST-5k (issue 6).

    python bench/sparsity.py [--only a b c] [--epochs 8] [--threads 2]

(a) MLP 784-300-100-10 with group lasso on the input columns, input-pruned at 50 / 75 / 90 %
    of the pixels and retrained, against weight-only pruning (hidden units, L1) at the same
    parameter count; heat-map of the kept pixels.
(b) SWD (no fine-tune) against prune-then-fine-tune L1 at 90 % and 97.5 % of the parameters
    removed, ResNet-style model, equal epochs.
(c) FFR on vs off: fraction of near-zero units against epsilon, and accuracy at equal FLOPs.
Writes bench/results/sparsity.md and sparsity_*.png.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import fxprune
from fxprune.regularize import FeatureFlow, GroupLasso, SelectiveWeightDecay

try:
    from .data import mnist5k
    from .models import MODELS
    from .train import evaluate, fit, trained
except ImportError:  # run as a script
    from data import mnist5k
    from models import MODELS
    from train import evaluate, fit, trained

RESULTS = Path(__file__).resolve().parent / "results"


class Fixed(fxprune.Importance):
    """Given scores (a mask chosen elsewhere), for compress(threshold=0.5)."""

    def __init__(self, scores):
        self.s = scores

    def scores(self, graph, calib=None):
        return self.s


def train_with(model, data, epochs, extra=None, forward=None, lr=2e-3, seed=0, sgd=False):
    """Adam + cosine, as bench/train.py (or SGD + momentum + weight decay, the released SWD
    code's optimiser), with a regulariser term after each forward."""
    torch.manual_seed(seed)
    opt = (torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4) if sgd
           else torch.optim.Adam(model.parameters(), lr=lr))
    steps = epochs * ((len(data.x_train) + 127) // 128)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    model.train()
    run = forward or model
    for epoch in range(epochs):
        for x, y in data.batches(128, seed=seed + epoch):
            opt.zero_grad()
            loss = F.cross_entropy(run(x), y) + (extra() if extra is not None else 0)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


class Flat:
    """The MNIST split with flattened pixels (the MLP's input features are dim 1)."""

    def __init__(self, data):
        self.d = data
        self.x_train, self.y_train = data.x_train.flatten(1), data.y_train
        self.x_test, self.y_test = data.x_test.flatten(1), data.y_test

    def batches(self, batch_size, seed=0, train=True):
        for x, y in self.d.batches(batch_size, seed, train):
            yield x.flatten(1), y


class Sliced(Flat):
    def __init__(self, data, kept):
        super().__init__(data)
        self.kept = torch.as_tensor(kept)
        self.x_train, self.x_test = self.x_train[:, self.kept], self.x_test[:, self.kept]

    def batches(self, batch_size, seed=0, train=True):
        for x, y in super().batches(batch_size, seed, train):
            yield x[:, self.kept], y


def params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def exp_a(data, epochs, lam=2e-3) -> tuple[list[str], dict]:
    flat = Flat(data)
    x = flat.x_test[:4]
    dense = trained("mlp", data)
    gl_model = MODELS["mlp"]()
    gl = GroupLasso(gl_model, lam, example_inputs=x, inputs_only=True)
    train_with(gl_model, flat, epochs, gl)
    col = gl_model.fc1.weight.detach().norm(dim=0).numpy()
    lines = ["| pixels removed | pixels kept | params | group lasso + input pruning, retrained | "
             "dense-trained, weight-only L1 at equal params, retrained | dense |",
             "|---|---|---|---|---|---|"]
    heat = None
    for removed in (0.5, 0.75, 0.9):
        k = int(round(784 * (1 - removed)))
        graph = fxprune.analyze(gl_model, x, prune_inputs=True)
        in_units = fxprune.regularize.units.input_units(graph)
        scores = np.full(len(graph.labels), np.inf)
        order = np.argsort(-col)  # input unit p has column norm col[p]
        labels_by_pos = graph.labels[graph.ctx.axes["x"][1].comp.ids]
        scores[labels_by_pos[order[k:]]] = 0.0
        assert np.isin(labels_by_pos, in_units).all()
        gm = fxprune.compress(gl_model, x, importance=Fixed(scores), threshold=0.5,
                              prune_inputs=True)
        kept = gm.meta["fxprune"].plan.inputs["x"]
        sliced = Sliced(data, kept)
        tuned = fit(copy.deepcopy(gm), sliced, 2, lr=5e-4)
        acc_in = evaluate(tuned, sliced)
        n_params = params(gm)
        ratio = _ratio_for_params(dense, data.x_test[:4], n_params)
        wp = fxprune.compress(dense, data.x_test[:4], ratio=ratio, importance="l1")
        wp_acc = evaluate(fit(copy.deepcopy(wp), data, 2, lr=5e-4), data)
        lines.append(f"| {removed:.0%} | {len(kept)} | {n_params:,} (L1: {params(wp):,}) | "
                     f"{acc_in:.4f} | {wp_acc:.4f} | {evaluate(dense, data):.4f} |")
        print(lines[-1], flush=True)
        if removed == 0.75:
            heat = np.zeros(784)
            heat[kept] = 1
    _heatmap(heat, col)
    return lines, {"col_norms": col}


def _ratio_for_params(model, x, target: int) -> float:
    lo, hi = 0.0, 0.99
    for _ in range(20):
        mid = (lo + hi) / 2
        n = params(fxprune.compress(model, x, ratio=mid, verify=False))
        lo, hi = (mid, hi) if n > target else (lo, mid)
    return hi


def _heatmap(kept, col) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(7, 3.5))
    ax[0].imshow(col.reshape(28, 28), cmap="viridis")
    ax[0].set_title("first-layer column norm\n(group lasso on inputs)")
    ax[1].imshow(kept.reshape(28, 28), cmap="gray")
    ax[1].set_title("kept pixels at 75% removed")
    for a in ax:
        a.axis("off")
    fig.tight_layout()
    fig.savefig(RESULTS / "sparsity_kept_pixels.png", dpi=110)
    plt.close(fig)


def exp_b(data, epochs, ft_epochs=4) -> list[str]:
    x = data.x_test[:4]
    lines = ["| params removed | SWD (SGD as the released code, no fine-tune) | params kept | "
             "L1 prune + fine-tune | params kept | epochs each |", "|---|---|---|---|---|---|"]
    dense = trained("resnet", data, epochs=epochs)
    total = params(dense)
    for target in (0.9, 0.975):
        model = MODELS["resnet"]()
        steps = (epochs + ft_epochs) * ((len(data.x_train) + 127) // 128)
        swd = SelectiveWeightDecay(model, target, example_inputs=x, total_steps=steps,
                                   granularity="structured_full")
        train_with(model, data, epochs + ft_epochs, swd, lr=0.05, sgd=True)
        keep = swd.update_mask()
        scores = np.zeros(len(swd.graph.labels))
        scores[swd.norms.units[keep]] = 1.0
        gm = fxprune.compress(model, x, importance=Fixed(scores), threshold=0.5,
                              min_channels=0)
        ratio = _ratio_for_params(dense, x, params(gm))
        l1 = fxprune.compress(dense, x, ratio=ratio, importance="l1")
        l1_ft = fit(copy.deepcopy(l1), data, ft_epochs, lr=5e-4)
        lines.append(f"| {target:.1%} | {evaluate(gm, data):.4f} | {params(gm) / total:.3f} | "
                     f"{evaluate(l1_ft, data):.4f} (before FT {evaluate(l1, data):.4f}) | "
                     f"{params(l1) / total:.3f} | {epochs + ft_epochs} |")
        print(lines[-1], flush=True)
    return lines


def exp_c(data, epochs, lam=(3e-3, 3e-3)) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = data.x_test[:4]
    models = {}
    for name in ("off", "on"):
        torch.manual_seed(0)
        model = MODELS["resnet"]()
        if name == "on":
            ffr = FeatureFlow(model, *lam, example_inputs=x)
            train_with(model, data, epochs, ffr, forward=ffr.model)
        else:
            train_with(model, data, epochs)
        models[name] = model
    eps = np.logspace(-4, 0, 25)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    lines = ["| FFR | dense acc | units below 1e-2 (rel.) | acc at ~50% FLOPs (no FT) | "
             "acc at ~50% FLOPs (1-epoch FT) |", "|---|---|---|---|---|"]
    for name, model in models.items():
        graph = fxprune.analyze(model, x)
        s = fxprune.importance.get_importance("l2").scores(graph)
        units = np.concatenate([g.units for g in graph.groups])
        rel = np.concatenate([s[g.units] / (s[g.units].max() + 1e-12) for g in graph.groups])
        frac = [(rel < e).mean() for e in eps]
        ax.semilogx(eps, frac, label=f"FFR {name}")
        gm = fxprune.compress(model, x, ratio=0.3, importance="l2")
        tuned = fit(copy.deepcopy(gm), data, 1, lr=5e-4)
        lines.append(f"| {name} | {evaluate(model, data):.4f} | {(rel < 1e-2).mean():.3f} "
                     f"({units.size} units) | {evaluate(gm, data):.4f} | "
                     f"{evaluate(tuned, data):.4f} |")
        print(lines[-1], flush=True)
    ax.set_xlabel("epsilon (unit L2 norm / largest in its group)")
    ax.set_ylabel("fraction of units below")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "sparsity_ffr.png", dpi=110)
    plt.close(fig)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=["a", "b", "c"])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(exist_ok=True)
    data = mnist5k()
    t0 = time.perf_counter()
    out = ["# Training-time sparsity on MNIST-5k", "",
           f"Command: `python bench/sparsity.py --epochs {args.epochs}`", ""]
    if "a" in args.only:
        lines, _ = exp_a(data, args.epochs)
        out += ["## (a) Group lasso on input columns (MLP), input-feature pruning", ""] + lines
        out += ["", "![kept pixels](sparsity_kept_pixels.png)", ""]
    if "b" in args.only:
        out += ["## (b) SWD vs one-shot L1 + fine-tune (ResNet-style)", ""] + exp_b(
            data, args.epochs) + [""]
    if "c" in args.only:
        out += ["## (c) FFR on vs off (ResNet-style)", ""] + exp_c(data, args.epochs)
        out += ["", "![FFR](sparsity_ffr.png)", ""]
    out.append(f"Run time: {time.perf_counter() - t0:.0f} s")
    (RESULTS / "sparsity.md").write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
