"""Images with explanation annotations, for explanation supervision (res.md).

Every item is ``(x, y, positive_mask, negative_mask, has_mask)``: the image (C, H, W), its
label, two (H, W) bool masks at the image's resolution (1 = should / must not be in the
explanation) and whether the image is annotated at all. Unannotated images carry all-zero
masks, so a batch may mix both kinds (the losses use ``has_mask``).

- :class:`AnnotatedDataset`: tensors → items, with joint transforms (:class:`RandomHorizontalFlip`,
  :class:`RandomCrop`, :class:`Compose`) that move the masks with their image.
- :func:`collate_annotated`: batches items whose masks may be ``None`` (unannotated).
- :func:`annotated_digits` / :func:`annotated_digits_loaders`: the embedded handwritten digits with
  stroke masks, optional decoy patches with negative masks, and knobs that make annotations as
  imperfect as human ones (boundary jitter, incompleteness, the annotated share).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .digits import NUM_CLASSES, load_digits

Item = Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], Tensor]


# -- joint transforms ---------------------------------------------------------------------------
class RandomHorizontalFlip:
    """Flip the image and both masks together with probability ``p`` (the released RES script
    flipped only the image, which misaligns its masks)."""

    def __init__(self, p: float = 0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, image: Tensor, positive: Tensor, negative: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        if float(torch.rand(())) < self.p:
            return image.flip(-1), positive.flip(-1), negative.flip(-1)
        return image, positive, negative


class RandomCrop:
    """Crop the image and both masks at the same random (size × size) window, after zero padding."""

    def __init__(self, size: int, padding: int = 0):
        if size < 1 or padding < 0:
            raise ValueError(f"size must be >= 1 and padding >= 0, got size={size}, padding={padding}")
        self.size, self.padding = int(size), int(padding)

    def __call__(self, image: Tensor, positive: Tensor, negative: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        pad = (self.padding,) * 4
        if self.padding:
            image = F.pad(image, pad)
            positive, negative = F.pad(positive, pad), F.pad(negative, pad)
        height, width = image.shape[-2:]
        if height < self.size or width < self.size:
            raise ValueError(f"cannot crop {self.size}×{self.size} from a {height}×{width} image (after padding)")
        top = int(torch.randint(0, height - self.size + 1, ()))
        left = int(torch.randint(0, width - self.size + 1, ()))
        window = (slice(top, top + self.size), slice(left, left + self.size))
        return image[..., window[0], window[1]], positive[window], negative[window]


class Compose:
    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, positive: Tensor, negative: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        for transform in self.transforms:
            image, positive, negative = transform(image, positive, negative)
        return image, positive, negative


# -- dataset and collate ------------------------------------------------------------------------
def _check_masks(masks: Tensor, name: str, shape: Tuple[int, ...]) -> Tensor:
    if not isinstance(masks, Tensor):
        raise TypeError(f"{name} must be a tensor of shape {shape}, got {type(masks).__name__}")
    if tuple(masks.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} (one mask per image, at the image's resolution), "
                         f"got {tuple(masks.shape)}")
    if masks.dtype != torch.bool:
        if not bool(((masks == 0) | (masks == 1)).all()):
            raise ValueError(f"{name} must be binary (bool or only 0 and 1); binarise soft annotations first")
        masks = masks != 0
    return masks


class AnnotatedDataset(Dataset):
    """(x, y, positive_mask, negative_mask, has_mask) items from tensors.

    ``images`` (N, C, H, W); ``labels`` (N,); ``positive`` / ``negative`` (N, H, W) binary
    (``negative`` None: no negative annotation); ``has_mask`` (N,) bool (None: every image with a
    non-empty positive or negative mask). ``transform(image, positive, negative)`` is applied
    jointly (see :class:`RandomHorizontalFlip`).
    """

    def __init__(self, images: Tensor, labels: Tensor, positive: Tensor, negative: Optional[Tensor] = None,
                 has_mask: Optional[Tensor] = None, transform: Optional[Callable] = None):
        if images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
        count, _, height, width = images.shape
        if labels.shape != (count,):
            raise ValueError(f"labels must be ({count},), got {tuple(labels.shape)}")
        shape = (count, height, width)
        self.images, self.labels = images, labels.long()
        self.positive = _check_masks(positive, "positive_mask", shape)
        self.negative = (_check_masks(negative, "negative_mask", shape) if negative is not None
                         else torch.zeros(shape, dtype=torch.bool))
        if has_mask is None:
            has_mask = self.positive.flatten(1).any(1) | self.negative.flatten(1).any(1)
        if tuple(has_mask.shape) != (count,):
            raise ValueError(f"has_mask must be ({count},), got {tuple(has_mask.shape)}")
        self.has_mask = has_mask.bool()
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Item:
        image, positive, negative = self.images[index], self.positive[index], self.negative[index]
        if self.transform is not None:
            image, positive, negative = self.transform(image, positive, negative)
        return image, self.labels[index], positive, negative, self.has_mask[index]


def collate_annotated(items: Sequence[Item]) -> Item:
    """Stack items into a batch; a ``None`` mask (unannotated image, or no negative annotation)
    becomes all zeros at the image's size, and ``has_mask`` defaults to "has a positive mask"."""
    images, labels, positives, negatives, flags = [], [], [], [], []
    for item in items:
        if len(item) not in (4, 5):
            raise ValueError(f"annotated items are (x, y, positive_mask, negative_mask[, has_mask]), got {len(item)} "
                             "entries")
        image, label, positive, negative = item[:4]
        size = tuple(image.shape[-2:])
        zeros = torch.zeros(size, dtype=torch.bool)
        for mask, name in ((positive, "positive_mask"), (negative, "negative_mask")):
            if mask is not None and tuple(mask.shape[-2:]) != size:
                raise ValueError(f"{name} is {tuple(mask.shape[-2:])} but its image is {size}")
        flag = item[4] if len(item) == 5 else positive is not None
        images.append(image)
        labels.append(torch.as_tensor(label))
        positives.append(positive.reshape(size).bool() if positive is not None else zeros)
        negatives.append(negative.reshape(size).bool() if negative is not None else zeros)
        flags.append(torch.as_tensor(bool(flag)))
    return (torch.stack(images), torch.stack(labels).long(), torch.stack(positives), torch.stack(negatives),
            torch.stack(flags))


# -- annotation noise ---------------------------------------------------------------------------
def dilate(masks: Tensor, radius: int) -> Tensor:
    """Binary dilation of (N, H, W) masks with a (2r+1)² square."""
    if radius <= 0:
        return masks
    return F.max_pool2d(masks.float().unsqueeze(1), 2 * radius + 1, stride=1, padding=radius).squeeze(1) > 0


def erode(masks: Tensor, radius: int) -> Tensor:
    """Binary erosion of (N, H, W) masks with a (2r+1)² square (outside the image counts as set)."""
    if radius <= 0:
        return masks
    return ~dilate(~masks, radius)


def jitter_boundaries(masks: Tensor, radius: int, rng: np.random.Generator) -> Tensor:
    """Each mask dilated or eroded (a fair coin per image) by 1..radius pixels: inaccurate boundaries."""
    if radius <= 0:
        return masks
    out = masks.clone()
    amounts = rng.integers(1, radius + 1, size=masks.shape[0])
    grow = rng.random(masks.shape[0]) < 0.5
    for index in range(masks.shape[0]):
        change = dilate if grow[index] else erode
        out[index] = change(masks[index:index + 1], int(amounts[index]))[0]
    return out


def drop_parts(masks: Tensor, fraction: float, rng: np.random.Generator) -> Tensor:
    """Remove about ``fraction`` of each mask's pixels with a random axis-aligned cut (rows or
    columns, from either side): incomplete annotations."""
    if not 0 <= fraction < 1:
        raise ValueError(f"incompleteness must be in [0, 1), got {fraction}")
    if fraction == 0:
        return masks
    out = masks.clone()
    for index in range(masks.shape[0]):
        rows, cols = np.nonzero(masks[index].numpy())
        if rows.size == 0:
            continue
        axis = rows if rng.random() < 0.5 else cols
        from_start = rng.random() < 0.5
        coordinates = axis if from_start else -axis
        cut = np.quantile(coordinates, fraction)
        removed = coordinates < cut
        out[index, rows[removed], cols[removed]] = False
    return out


# -- annotated digits ---------------------------------------------------------------------------
DECOY_SIZE = 4


def decoy_positions(size: int, margin: int) -> List[Tuple[int, int]]:
    """Ten top-left corners of decoy patches in the empty frame around the digit (five along the
    top edge, five along the bottom), one per class."""
    columns = np.linspace(0, size - DECOY_SIZE, 5).round().astype(int).tolist()
    bottom = size - DECOY_SIZE
    if margin < DECOY_SIZE:
        raise ValueError(f"decoys need a frame of at least {DECOY_SIZE} pixels; use digit_size <= size - {2 * DECOY_SIZE}")
    return [(0, c) for c in columns] + [(bottom, c) for c in columns]


def _balanced_subset(labels: Tensor, count: Optional[int], rng: np.random.Generator) -> np.ndarray:
    """``count`` indices with (as near as possible) equal numbers per class, seeded; None: all."""
    if count is None or count >= labels.numel():
        return np.arange(labels.numel())
    if count < 1:
        raise ValueError(f"the number of images must be >= 1, got {count}")
    per_class = [rng.permutation(np.flatnonzero(labels.numpy() == c)) for c in range(NUM_CLASSES)]
    chosen = [members[:count // NUM_CLASSES + (1 if c < count % NUM_CLASSES else 0)]
              for c, members in enumerate(per_class)]
    return np.sort(np.concatenate(chosen))


def annotated_digits(split: str = "train", n_images: Optional[int] = None, n_annotated: Optional[int] = None,
                     decoy: bool = False, decoy_correlation: float = 1.0, jitter: int = 0,
                     incompleteness: float = 0.0, stroke_threshold: float = 0.25, size: int = 32,
                     digit_size: int = 24, seed: int = 0, transform: Optional[Callable] = None) -> AnnotatedDataset:
    """The embedded digits with explanation annotations.

    The digit is resized to ``digit_size`` and centred on a ``size`` canvas; its positive mask is
    the stroke (pixels above ``stroke_threshold``). With ``decoy`` a bright 4×4 patch is pasted in
    the frame and marked in the negative mask: in the train split it sits at its class's position
    with probability ``decoy_correlation`` (a shortcut), elsewhere at a random position.

    Annotation knobs (applied to the positive masks of the annotated images; leave them at 0 for
    held-out masks): ``jitter`` (dilate or erode by up to that many pixels), ``incompleteness``
    (the share of each mask cut away), ``n_annotated`` (how many of the ``n_images`` carry masks,
    balanced over classes; None: all). ``n_images`` picks a class-balanced subset (None: all).
    """
    if not 0 <= decoy_correlation <= 1:
        raise ValueError(f"decoy_correlation must be in [0, 1], got {decoy_correlation}")
    if digit_size > size:
        raise ValueError(f"digit_size ({digit_size}) must not exceed size ({size})")
    rng = np.random.default_rng([seed, {"train": 0, "test": 1, "all": 2}.get(split, 3)])
    digits, labels = load_digits(split, size=digit_size)
    chosen = _balanced_subset(labels, n_images, rng)
    digits, labels = digits[chosen], labels[chosen]
    margin = (size - digit_size) // 2
    images = F.pad(digits, (margin, size - digit_size - margin, margin, size - digit_size - margin))
    positive = images[:, 0] > stroke_threshold
    negative = torch.zeros_like(positive)
    if decoy:
        positions = decoy_positions(size, margin)
        random_spot = rng.integers(0, len(positions), size=len(labels))
        correlated = (rng.random(len(labels)) < decoy_correlation) if split == "train" else np.zeros(len(labels), bool)
        for index, label in enumerate(labels.tolist()):
            top, left = positions[label if correlated[index] else random_spot[index]]
            images[index, :, top:top + DECOY_SIZE, left:left + DECOY_SIZE] = 1.0
            negative[index, top:top + DECOY_SIZE, left:left + DECOY_SIZE] = True
    annotated = np.zeros(len(labels), dtype=bool)
    annotated[_balanced_subset(labels, n_annotated, rng)] = True
    has_mask = torch.from_numpy(annotated)
    noisy = jitter_boundaries(positive[has_mask], int(jitter), rng)
    positive[has_mask] = drop_parts(noisy, float(incompleteness), rng)
    positive[~has_mask] = False
    negative[~has_mask] = False
    return AnnotatedDataset(images.contiguous(), labels, positive, negative, has_mask, transform)


def annotated_digits_loaders(batch_size: int = 20, n_train: Optional[int] = 100, n_annotated: Optional[int] = None,
                             decoy: bool = False, decoy_correlation: float = 1.0, jitter: int = 0,
                             incompleteness: float = 0.0, seed: int = 0, shuffle_seed: int = 0,
                             transform: Optional[Callable] = None, test_batch_size: int = 256
                             ) -> Tuple[DataLoader, DataLoader]:
    """(train_loader, test_loader) of :func:`annotated_digits`: ``n_train`` training images, of which
    ``n_annotated`` (None: all) carry the (optionally noisy) masks; the whole test split with clean
    masks (random decoys with ``decoy``). The train loader shuffles with its own seeded generator."""
    train = annotated_digits("train", n_train, n_annotated, decoy, decoy_correlation, jitter, incompleteness,
                             seed=seed, transform=transform)
    test = annotated_digits("test", None, None, decoy, decoy_correlation, seed=seed)
    generator = torch.Generator().manual_seed(shuffle_seed)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate_annotated),
            DataLoader(test, batch_size=test_batch_size, shuffle=False, collate_fn=collate_annotated))


__all__ = ["AnnotatedDataset", "collate_annotated", "RandomHorizontalFlip", "RandomCrop", "Compose",
           "annotated_digits", "annotated_digits_loaders", "dilate", "erode", "jitter_boundaries", "drop_parts",
           "decoy_positions"]
