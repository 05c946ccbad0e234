"""The embedded default data: scikit-learn's bundled handwritten digits, shipped in the package.

saliency_fast/data/digits.npz holds the 1,797 raw 8×8 images (uint8, 0..16) and their labels,
written once by scripts/make_digits_data.py. Loading needs only numpy and torch: no download and
no scikit-learn at run time. The images are upsampled to ``size``×``size`` so that saliency maps
have enough pixels to be worth looking at.
"""
from __future__ import annotations

import functools
from importlib import resources
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from .._validation import check_choice

SPLITS = ("train", "test", "all")
NUM_CLASSES = 10
MAX_INTENSITY = 16  # the digits' pixel values are integers 0..16


@functools.lru_cache(maxsize=1)
def _raw_digits() -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 (1797, 8, 8), labels int64 (1797,)), read once from the packaged file."""
    path = resources.files("saliency_fast.data") / "digits.npz"
    try:
        with resources.as_file(path) as file, np.load(file, allow_pickle=False) as archive:
            images, labels = archive["images"], archive["labels"].astype(np.int64)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            "saliency_fast/data/digits.npz is missing from the installed package; reinstall "
            "saliency_fast or regenerate it with `python scripts/make_digits_data.py`"
        ) from error
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def stratified_split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(train_indices, test_indices), both sorted, with round(n_c · test_fraction) test images of
    every class c chosen by a seeded permutation, so each class keeps its share in both splits.

    numpy's PCG64 generator (default_rng) gives the same permutation on every platform and numpy
    version that has it, so the split is fixed for a given seed.
    """
    rng = np.random.default_rng(seed)
    test_parts = []
    for label in range(NUM_CLASSES):
        members = np.flatnonzero(labels == label)
        n_test = int(round(len(members) * test_fraction))
        test_parts.append(rng.permutation(members)[:n_test])
    test = np.sort(np.concatenate(test_parts))
    train = np.setdiff1d(np.arange(len(labels)), test)  # sorted, disjoint from test
    return train, test


def _check_arguments(split: str, size: int, test_fraction: float) -> None:
    check_choice(split, "split", SPLITS)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int (the output side in pixels, e.g. 32), got {size!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction!r}")


def load_digits(split: str = "train", size: int = 32, seed: int = 0, test_fraction: float = 0.2) -> Tuple[Tensor, Tensor]:
    """The embedded handwritten digits as (images, labels).

    Args:
        split: "train", "test" or "all" (all 1,797 images in the original order).
        size: output side in pixels. The 8×8 images are scaled to [0, 1] (divided by 16) and then
            resized with bilinear interpolation (``F.interpolate(mode="bilinear",
            align_corners=False, antialias=False)``); size=8 returns the raw images.
        seed: seed of the stratified train/test split (ignored for split="all").
        test_fraction: share of every class that goes to the test split (default 0.2: 1,438
            train and 359 test images).

    Returns:
        images: float32 (N, 1, size, size) with values in [0, 1] (bilinear weights are convex);
        labels: int64 (N,) in 0..9.
    """
    _check_arguments(split, size, test_fraction)
    images, labels = _raw_digits()
    if split != "all":
        train, test = stratified_split_indices(labels, test_fraction, seed)
        chosen = train if split == "train" else test
        images, labels = images[chosen], labels[chosen]
    pixels = torch.from_numpy(images.astype(np.float32) / MAX_INTENSITY).unsqueeze(1)
    if size != pixels.shape[-1]:
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
        pixels = pixels.clamp_(0.0, 1.0)  # guard against rounding just outside [0, 1]
    return pixels.contiguous(), torch.from_numpy(labels.copy())


def digits_loaders(batch_size: int = 64, size: int = 32, seed: int = 0, test_fraction: float = 0.2,
                   shuffle_seed: int = 0, num_workers: int = 0) -> Tuple[DataLoader, DataLoader]:
    """(train_loader, test_loader) over TensorDatasets of :func:`load_digits` yielding (x, y).

    The train loader shuffles with its own generator seeded by ``shuffle_seed``, so the batch order
    is reproducible and independent of the global RNG; the test loader keeps a fixed order.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    train = TensorDataset(*load_digits("train", size, seed, test_fraction))
    test = TensorDataset(*load_digits("test", size, seed, test_fraction))
    generator = torch.Generator().manual_seed(shuffle_seed)
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator, num_workers=num_workers)
    test_loader = DataLoader(test, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return train_loader, test_loader
