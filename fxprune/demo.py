"""`make demo`: compress torchvision resnet18 (random init) by 50% and print the report."""

from __future__ import annotations

import statistics
import time

import torch
import torchvision

import fxprune


def latency_ms(model: torch.nn.Module, x: torch.Tensor, repeats: int = 20) -> float:
    with torch.no_grad():
        for _ in range(3):
            model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 224, 224)
    pruned = fxprune.compress(model, x, ratio=0.5)
    report = pruned.meta["fxprune"].report
    print("fxprune demo: torchvision resnet18 (random init), ratio 0.5, input 1x3x224x224")
    print(report.summary())
    before, after = latency_ms(model, x), latency_ms(pruned, x)
    print(f"CPU latency (median of 20, batch 1): {before:.1f} ms -> {after:.1f} ms "
          f"({before / after:.2f}x faster)")


if __name__ == "__main__":
    main()
