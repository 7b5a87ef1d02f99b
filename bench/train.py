"""Train, evaluate and fine-tune the small models on MNIST-5k, with cached checkpoints.

    python bench/train.py [resnet vgg mobilenet inception mlp] [--epochs N]

Checkpoints go to bench/.cache/ (git-ignored), keyed by model, epochs and seed, so the
accuracy study trains each model once.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    from .data import Split, mnist5k
    from .models import MODELS
except ImportError:  # run as a script
    from data import Split, mnist5k
    from models import MODELS

CACHE = Path(__file__).resolve().parent / ".cache"


def evaluate(model: nn.Module, data: Split) -> float:
    """Test accuracy in [0, 1]."""
    was = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in data.batches(500, train=False):
            correct += int((model(x).argmax(1) == y).sum())
    model.train(was)
    return correct / len(data.y_test)


def fit(model: nn.Module, data: Split, epochs: int, lr: float = 2e-3, seed: int = 0) -> nn.Module:
    """Adam with a cosine schedule; deterministic given the seed."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(data.x_train) + 127) // 128)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    model.train()
    for epoch in range(epochs):
        for x, y in data.batches(128, seed=seed + epoch):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    return model.eval()


def fine_tune(model: nn.Module, data: Split, epochs: int = 1, lr: float = 5e-4) -> nn.Module:
    """The short recovery step after pruning (works on a pruned GraphModule too)."""
    return fit(model, data, epochs, lr)


def trained(name: str, data: Split | None = None, epochs: int = 8, seed: int = 0) -> nn.Module:
    """The trained model, from the cache when it is there."""
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"{name}-e{epochs}-s{seed}.pt"
    torch.manual_seed(seed)
    model = MODELS[name]()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    data = data or mnist5k(seed)
    fit(model, data, epochs, seed=seed)
    torch.save(model.state_dict(), path)
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=list(MODELS))
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()
    data = mnist5k()
    for name in args.models:
        t0 = time.perf_counter()
        model = trained(name, data, args.epochs)
        print(f"{name}: test accuracy {evaluate(model, data):.4f} "
              f"({time.perf_counter() - t0:.1f}s incl. training if not cached)")


if __name__ == "__main__":
    main()
