"""The losses of explanation supervision (res.md), each a pure function of tensors: the map
normalisation M, the targets at the map's resolution (F, G), the threshold a, and the losses of
RES (L_align), GRADIA and HAICS. The objectives that combine them are in :mod:`.res`.

The losses take ``has_mask`` (one flag per image) so that a batch may mix annotated and
unannotated images; a batch without any annotated image gives 0, never NaN.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

NORMALIZE_EPS = 1e-6      # M = (cam − min) / (max + 1e-6)
THRESHOLD_OFFSET = 1e-4   # negative candidates of the threshold search are M + 1e-4
TANH_SLOPE = 5.0          # L_align compares tanh(5 · (M − a)) with F
# 3×3 Gaussian of cv2.GaussianBlur((3, 3), sigma=0): [1, 2, 1]/4 outer [1, 2, 1]/4
GAUSSIAN_3X3 = ((1.0, 2.0, 1.0), (2.0, 4.0, 2.0), (1.0, 2.0, 1.0))


def normalize_cam(cam: Tensor) -> Tensor:
    """M = (cam − min) / (max(cam − min) + 1e-6) per image of (B, h, w); differentiable."""
    flat = cam.flatten(1)
    shifted = flat - flat.amin(dim=1, keepdim=True)
    return (shifted / (shifted.amax(dim=1, keepdim=True) + NORMALIZE_EPS)).view_as(cam)


def downsample_mask(mask: Tensor, size: Tuple[int, int]) -> Tensor:
    """(B, H, W) 0/1 mask → (B, h, w) float, the pixel at (floor(i·H/h), floor(j·W/w)) (INTER_NEAREST)."""
    mask = mask.to(torch.float32).unsqueeze(1)
    if tuple(mask.shape[-2:]) != tuple(size):
        mask = F.interpolate(mask, size=tuple(size), mode="nearest")
    return mask.squeeze(1)


def signed_target(positive: Tensor, negative: Optional[Tensor], size: Tuple[int, int]) -> Tensor:
    """F_small = nearest(P) − nearest(N) at the map's resolution, values in {−1, 0, 1}."""
    target = downsample_mask(positive, size)
    if negative is not None:
        target = target - downsample_mask(negative, size)
    return target


def explanation_threshold(maps: Tensor, target: Tensor) -> Tensor:
    """The RES threshold a (a 0-dim tensor, no gradient) for maps M and signed targets F.

    Candidates, in this order: M + 1e-4 of every negative cell (F < 0), then M of every
    positive cell (F > 0), each in flat order. score(v) = #{neg: v > M}/|neg| +
    #{pos: v ≤ M}/|pos| (a term is dropped when its set is empty); a is the first candidate
    with the largest score, 0 if that score is ≤ 0 (no annotated cell).

    The released script loops over candidates × cells in Python (O(n²)). Here both counts come
    from binary searches in the sorted negative and positive values, O(n log n), without a
    device synchronisation: cells that are not candidates get the score −1 and never win.
    """
    with torch.no_grad():
        values = maps.detach().reshape(-1)
        signs = target.detach().reshape(-1).to(values.device)
        negative, positive = signs < 0, signs > 0
        infinity = torch.full_like(values, math.inf)
        sorted_negative = torch.where(negative, values, infinity).sort().values
        sorted_positive = torch.where(positive, values, infinity).sort().values
        n_negative = negative.sum().to(values.dtype)
        n_positive = positive.sum().to(values.dtype)
        candidates = torch.cat([values + THRESHOLD_OFFSET, values])
        valid = torch.cat([negative, positive])
        # #{neg: M < v} and #{pos: M < v}: the left insertion points (+inf padding never counts)
        below_negative = torch.searchsorted(sorted_negative, candidates, side="left").to(values.dtype)
        below_positive = torch.searchsorted(sorted_positive, candidates, side="left").to(values.dtype)
        zero = torch.zeros((), dtype=values.dtype, device=values.device)
        score = (torch.where(n_negative > 0, below_negative / n_negative.clamp_min(1), zero)
                 + torch.where(n_positive > 0, (n_positive - below_positive) / n_positive.clamp_min(1), zero))
        score = torch.where(valid, score, torch.full_like(score, -1.0))
        if score.numel() == 0:
            return zero
        best = score.argmax()  # the first index among equal maxima
        return torch.where(score[best] > 0, candidates[best], zero)


def cell_weights(target: Tensor, has_mask: Tensor) -> Tensor:
    """(B, h, w) float weights: 1 on every cell of an annotated image, 0 elsewhere."""
    return has_mask.to(target.dtype).view(-1, 1, 1).expand_as(target)


def masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Σ w·v / Σ w, 0 when Σ w = 0 (never NaN; unselected NaN/Inf values cannot leak in)."""
    total = torch.where(weights > 0, values * weights, torch.zeros_like(values)).sum()
    return total / weights.sum().clamp_min(1)


def align_loss(maps: Tensor, target: Tensor, has_mask: Tensor) -> Tuple[Tensor, Tensor]:
    """(L_align, a): Σ_{F≠0} |tanh(5·(M − a)) − F| / #{F ≠ 0} over the annotated images, 0 if none."""
    annotated = cell_weights(target, has_mask) * (target != 0).to(target.dtype)
    threshold = explanation_threshold(maps, torch.where(annotated > 0, target, torch.zeros_like(target)))
    error = (torch.tanh(TANH_SLOPE * (maps - threshold)) - target).abs()
    return masked_mean(error, annotated), threshold


def gaussian_target(target: Tensor) -> Tensor:
    """G = blur3×3(relu(F)) / (max + 1e-6) per image, border reflect-101 (cv2's default); a constant."""
    with torch.no_grad():
        positive = target.clamp_min(0).unsqueeze(1)
        kernel = torch.tensor(GAUSSIAN_3X3, dtype=positive.dtype, device=positive.device).div_(16.0)
        mode = "reflect" if min(positive.shape[-2:]) > 1 else "replicate"  # reflect needs 2+ cells a side
        blurred = F.conv2d(F.pad(positive, (1, 1, 1, 1), mode=mode), kernel.view(1, 1, 3, 3)).squeeze(1)
        return blurred / (blurred.flatten(1).amax(dim=1).view(-1, 1, 1) + NORMALIZE_EPS)


def gradia_loss(maps: Tensor, target: Tensor, has_mask: Tensor) -> Tensor:
    """GRADIA: mean |M − relu(F)| over every cell of the annotated images."""
    return masked_mean((maps - target.clamp_min(0)).abs(), cell_weights(target, has_mask))


def _bce(maps: Tensor, labels: Tensor) -> Tensor:
    # binary_cross_entropy clamps each log at −100, so M = 0 or 1 gives a finite loss; autocast
    # refuses it on CUDA ("unsafe to autocast"), so it runs outside autocast in the maps' dtype
    with torch.autocast(maps.device.type, enabled=False):
        return F.binary_cross_entropy(maps.clamp(0, 1), labels.to(maps.dtype), reduction="none")


def haics_loss(maps: Tensor, target: Tensor, has_mask: Tensor, form: str = "masked") -> Tensor:
    """HAICS: BCE(M, relu(F)).

    ``form="masked"``: the mean over annotated cells (F ≠ 0) of the annotated images.
    ``form="released"``: the released script's form, the mean BCE over all cells of the
    annotated images times the fraction of those cells that are annotated.
    """
    weights = cell_weights(target, has_mask)
    annotated = weights * (target != 0).to(target.dtype)
    bce = _bce(maps, target.clamp_min(0))
    if form == "masked":
        return masked_mean(bce, annotated)
    fraction = annotated.sum() / weights.sum().clamp_min(1)
    return masked_mean(bce, weights) * fraction


__all__ = ["normalize_cam", "downsample_mask", "signed_target", "explanation_threshold", "cell_weights",
           "masked_mean", "align_loss", "gaussian_target", "gradia_loss", "haics_loss"]
