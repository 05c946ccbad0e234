"""Evaluation metrics for saliency maps (specs/metrics.md).

- ``deletion_insertion``: the SAMP paper's deletion/insertion curves and AUCs (Petsiuk et al.
  2018), all curve points built by the native ``perturbation_curve`` op and scored in large
  batches (no Python loop per step).
- ``masked_accuracy``: accuracy after removing the top x% pixels (Saliency Guided Training).
- ``gini``: the Gini sparseness index (Hurley & Rickard 2009; Quantus ``Sparseness``).
- ``completeness_error``: how far the attribution sum is from f_c(x) − f_c(reference).
- ``localization``: IoU, precision, recall, F1 and pointing game against masks (RES).

One argument order: a metric that runs the model takes ``(model, inputs, attributions, ...)``
(``deletion_insertion``, ``masked_accuracy``, ``completeness_error``) and accepts ``output=``
(which part of the model's output holds the logits: an index, a key such as "logits", or a
callable); a metric that does not takes ``(attributions, ...)`` (``gini``, ``localization``).

Pixels are ranked by the attribution summed over channels, descending, ties broken by the
lower flat index first (a stable descending sort); ``pixel_ranks`` gives that order.
Model-based metrics run the model in eval mode under ``torch.no_grad`` and stream the
(image, curve point) pairs through it in chunks of at most ``max_batch`` images per call,
so peak memory does not grow with the number of steps or images.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops
from ._common import (
    PATHS,
    Selector,
    Target,
    attribution_mode,
    bind_model,
    check_finite,
    check_images,
    check_model_device,
    check_same_device,
    check_score,
    minmax_normalize,
    relative_completeness_error,
    resolve_target,
    score_outputs,
    warn_if_not_finite,
)
from ._validation import check_positive_int
from .references import SMALL_IMAGE_SIDE, Reference, make_reference

__all__ = [
    "DeletionInsertionResult",
    "MaskedAccuracyResult",
    "completeness_error",
    "curve_counts",
    "default_max_batch",
    "default_pixels_per_step",
    "deletion_insertion",
    "gini",
    "localization",
    "masked_accuracy",
    "pixel_ranks",
]

# default chunk, in input elements per model call. On CPU a small model is fastest on a batch
# whose activations stay in cache (64K elements); once one image alone is past the cache, the
# per-call cost and the matrix products' efficiency dominate instead, so large images go at
# least CPU_MIN_IMAGES to a call, as long as those hold at most CPU_LARGE_ELEMENTS. On
# accelerators 16M elements, large batches to fill the device.
MAX_BATCH_ELEMENTS = {"cpu": 2**16, "accelerator": 2**24}
CPU_MIN_IMAGES, CPU_LARGE_ELEMENTS = 16, 2**22
GINI_EPSILON = 1e-7  # added to |a| before the Gini index, as in Quantus Sparseness


# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------
def default_pixels_per_step(height: int, width: int) -> int:
    """10 for images up to 64×64; otherwise 8·H (the paper's 224·8 = 1792 at 224×224)."""
    if max(height, width) <= SMALL_IMAGE_SIDE:
        return 10
    return 8 * height


def default_max_batch(inputs: Tensor) -> int:
    """Images per model call: on CPU, as many as fit in 64K input elements, and at least 16 when
    those fit in 4M (64 images of 1×32×32, 16 of 3×224×224, 5 of 3×512×512); on an accelerator
    as many as fit in 16M (111 of 3×224×224); at least one."""
    per_image = max(1, inputs[0].numel())
    if inputs.device.type != "cpu":
        return max(1, MAX_BATCH_ELEMENTS["accelerator"] // per_image)
    return max(1, MAX_BATCH_ELEMENTS["cpu"] // per_image, min(CPU_MIN_IMAGES, CPU_LARGE_ELEMENTS // per_image))


def _attribution_maps(attributions: Tensor, inputs: Optional[Tensor] = None) -> Tensor:
    """Validate attributions and return (B, H, W) maps (4-D attributions summed over channels)."""
    if not isinstance(attributions, Tensor):
        raise TypeError(f"attributions must be a torch.Tensor, got {type(attributions).__name__}")
    if attributions.dim() not in (3, 4):
        raise ValueError(f"attributions must have shape (B, H, W) or (B, C, H, W), got {tuple(attributions.shape)}")
    if not attributions.is_floating_point():
        raise TypeError(f"attributions must be a floating tensor, got {attributions.dtype}")
    if inputs is not None:
        batch, channels, height, width = inputs.shape
        expected: tuple[int, ...]
        if attributions.dim() == 3:
            expected = (batch, height, width)
        else:
            expected = (batch, channels, height, width)
        if tuple(attributions.shape) != expected:
            raise ValueError(
                f"attributions must match the inputs: expected shape {expected} (or "
                f"{(batch, height, width) if attributions.dim() == 4 else (batch, channels, height, width)}), "
                f"got {tuple(attributions.shape)}"
            )
        check_same_device(inputs, attributions=attributions)
    check_finite(attributions, "attributions")
    return attributions.sum(dim=1) if attributions.dim() == 4 else attributions


def _check_not_constant(maps: Tensor, allow_constant: bool) -> None:
    """A constant map ranks no pixel above another; refuse it unless the caller opts in."""
    if allow_constant:
        return
    flat = maps.flatten(1)
    constant = (flat.amax(dim=1) == flat.amin(dim=1)).nonzero().flatten()
    if constant.numel() > 0:
        shown = constant[:10].tolist()
        raise ValueError(
            f"attributions of images {shown}{' ...' if constant.numel() > 10 else ''} are constant, so "
            "they rank no pixel above another; check the attribution method (e.g. a saturated "
            "model gives zero gradients) or pass allow_constant=True to rank such maps by flat index"
        )


def pixel_ranks(maps: Tensor) -> Tensor:
    """(B, H, W) int64: each pixel's position in the descending attribution order.

    0 is the most salient pixel; ties go to the lower flat index first (stable sort).
    """
    flat = maps.flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    positions = torch.arange(flat.shape[1], device=maps.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions).view(maps.shape)


def _model_context(model: Callable[[Tensor], Tensor]) -> contextlib.AbstractContextManager:
    """Eval mode with frozen parameters for modules (restored after); plain callables as they are."""
    return attribution_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext(model)


def _validate_model_inputs(model: Callable[..., Any], inputs: Tensor, output: Selector = None
                           ) -> Callable[[Tensor], Tensor]:
    """The model bound to its ``output`` selector (one row of logits per input, checked)."""
    if not callable(model):
        raise TypeError(f"model must be a callable nn.Module, got {type(model).__name__}")
    check_images(inputs)
    if isinstance(model, nn.Module):
        check_model_device(model, inputs)
    return bind_model(model, output)


def _curve_logits(
    model: Callable[[Tensor], Tensor],
    start: Tensor,
    finish: Tensor,
    ranks: Tensor,
    counts: Tensor,
    max_batch: int,
) -> Iterator[tuple[slice, slice, Tensor]]:
    """Yield (images, points, logits (b, s, classes)) for every curve point, chunk by chunk.

    A chunk is ``b`` images × ``s`` points with b·s ≤ max_batch; the perturbed images of a
    chunk are built by one ``perturbation_curve`` call and scored by one model call.
    """
    batch, points = start.shape[0], counts.shape[0]
    start, finish = start.contiguous(), finish.contiguous()  # e.g. channels_last inputs
    images_per_chunk, points_per_chunk = _chunk_shape(batch, points, max_batch)
    for first in range(0, batch, images_per_chunk):
        images = slice(first, min(batch, first + images_per_chunk))
        for first_point in range(0, points, points_per_chunk):
            steps = slice(first_point, min(points, first_point + points_per_chunk))
            perturbed = ops.perturbation_curve(start[images], finish[images], ranks[images], counts[steps])
            b, s = perturbed.shape[:2]
            logits = model(perturbed.view(b * s, *perturbed.shape[2:]))
            del perturbed  # freed before the next chunk is built: no fresh pages to fault in
            if logits.dim() != 2 or logits.shape[0] != b * s:
                raise ValueError(f"the model must return logits of shape (B, classes), got shape {tuple(logits.shape)}")
            yield images, steps, logits.view(b, s, -1)


def _chunk_shape(batch: int, points: int, max_batch: int) -> tuple[int, int]:
    """(images, points) per chunk: the fewest model calls of at most ``max_batch`` images each,
    and among those the fewest images per chunk. A chunk's images are read whole by
    perturbation_curve (image, ranks) whatever its points, so fewer images move fewer bytes:
    64 digits × 104 points with max_batch 64 → 8 × 8 (104 calls, as 64 × 1), and 64 images of
    3×224×224 × 29 points with max_batch 111 → 11 × 10 (18 calls instead of 29 of 64 × 1)."""
    return min(((images, min(points, max_batch // images)) for images in range(1, min(batch, max_batch) + 1)),
               key=lambda shape: (_chunk_count(batch, points, shape), shape[0]))


def _chunk_count(batch: int, points: int, shape: tuple[int, int]) -> int:
    images_per_chunk, points_per_chunk = shape
    return math.ceil(batch / images_per_chunk) * math.ceil(points / points_per_chunk)


# ---------------------------------------------------------------------------------------------
# deletion / insertion
# ---------------------------------------------------------------------------------------------
@dataclass
class DeletionInsertionResult:
    """Curves have n_steps + 1 points: ``counts[i]`` ranked pixels replaced at point i.

    ``*_auc`` is the paper form (mean of score / reference score; the reference score is the
    first point for deletion, the last for insertion — both f_c(x)); ``*_auc_prob`` the
    trapezoidal AUC of the probability curve with x spaced uniformly over [0, 1]. Fields of a
    path that was not requested are None.
    """

    deletion_auc: Optional[Tensor]
    insertion_auc: Optional[Tensor]
    deletion_auc_prob: Optional[Tensor]
    insertion_auc_prob: Optional[Tensor]
    deletion_curve: Optional[Tensor]
    insertion_curve: Optional[Tensor]
    deletion_prob_curve: Optional[Tensor]
    insertion_prob_curve: Optional[Tensor]
    counts: Tensor
    pixels_per_step: int
    score: str
    model_calls: int


def curve_counts(num_pixels: int, pixels_per_step: int, device: Optional[torch.device] = None) -> Tensor:
    """(n_steps + 1,) int64: 0, k, 2k, …, capped at num_pixels; n_steps = ceil(num_pixels / k)."""
    n_steps = math.ceil(num_pixels / pixels_per_step)
    steps = torch.arange(n_steps + 1, device=device, dtype=torch.long)
    return (steps * pixels_per_step).clamp_max(num_pixels)


def trapezoid_auc(curve: Tensor) -> Tensor:
    """Trapezoidal area under (B, S) curves sampled uniformly on x ∈ [0, 1] (RISE's ``auc``)."""
    intervals = curve.shape[1] - 1
    return (curve.sum(dim=1) - 0.5 * (curve[:, 0] + curve[:, -1])) / intervals


def _score_path(model: Callable[[Tensor], Tensor], start: Tensor, finish: Tensor, ranks: Tensor, counts: Tensor,
                target: Tensor, score: str, max_batch: int) -> tuple[Tensor, Tensor]:
    """(B, S) score curve and probability curve of one path."""
    batch, points = start.shape[0], counts.shape[0]
    scores: Optional[Tensor] = None
    probabilities: Optional[Tensor] = None
    for images, steps, logits in _curve_logits(model, start, finish, ranks, counts, max_batch):
        if scores is None or probabilities is None:
            scores = logits.new_empty((batch, points))
            probabilities = logits.new_empty((batch, points))
        b, s, classes = logits.shape
        flat = logits.reshape(b * s, classes)
        chunk_target = target[images].repeat_interleave(s)
        probability = score_outputs(flat, chunk_target, "probability").view(b, s)
        probabilities[images, steps] = probability
        scores[images, steps] = probability if score == "probability" else score_outputs(flat, chunk_target, score).view(b, s)
    assert scores is not None and probabilities is not None  # every path has at least one image and one point
    return scores, probabilities


def deletion_insertion(
    model: Callable[[Tensor], Tensor],
    inputs: Tensor,
    attributions: Tensor,
    target: Target = None,
    pixels_per_step: Optional[int] = None,
    deletion_reference: Reference = "zeros",
    insertion_reference: Reference = "blur",
    score: str = "logit",
    blur_kernel: Optional[int] = None,
    blur_sigma: float = 5.0,
    max_batch: Optional[int] = None,
    paths: Sequence[str] = PATHS,
    allow_constant: bool = False,
    output: Selector = None,
) -> DeletionInsertionResult:
    """Deletion and insertion curves and AUCs of (B, H, W) or (B, C, H, W) attributions.

    Deletion starts from ``inputs`` and replaces the ranked pixels (all channels) with
    ``deletion_reference``; insertion starts from ``insertion_reference`` (default the SAMP
    blur of the inputs) and copies the ranked pixels of the inputs back in.
    ``pixels_per_step`` defaults to ``default_pixels_per_step(H, W)``. ``score`` is the curve's
    score ("logit", "probability", "log_probability"); the probability curves are recorded
    too. ``max_batch`` bounds the images per model call (default ``default_max_batch``: 64K
    input elements on CPU, but 16 images of 224×224; 16M elements on GPU). ``paths`` selects deletion and/or insertion. Constant maps raise unless
    ``allow_constant`` (then they rank pixels by flat index). ``output`` selects the logits
    from a model that returns a tuple, dict or object.

    Two forms of the AUCs are returned. ``deletion_auc`` / ``insertion_auc`` are the SAMP paper's
    form: the mean of the ``score`` curve divided by f_c(x), so with logits they are not bounded
    (a deletion curve whose logit turns negative gives a negative AUC; insertion can exceed 1).
    ``deletion_auc_prob`` / ``insertion_auc_prob`` are the [0, 1] form most papers report: the
    trapezoidal area under the softmax-probability curve.
    """
    model = _validate_model_inputs(model, inputs, output)
    maps = _attribution_maps(attributions, inputs)
    _check_not_constant(maps, allow_constant)
    check_score(score)
    paths = (paths,) if isinstance(paths, str) else tuple(paths)  # "deletion" is one path, not 8 letters
    if not paths or any(path not in PATHS for path in paths):
        raise ValueError(f"paths must be a non-empty subset of {PATHS}, got {paths!r}")
    height, width = inputs.shape[-2:]
    if pixels_per_step is None:
        pixels_per_step = default_pixels_per_step(height, width)
    check_positive_int(pixels_per_step, "pixels_per_step")
    max_batch = default_max_batch(inputs) if max_batch is None else check_positive_int(max_batch, "max_batch")

    counts = curve_counts(height * width, min(pixels_per_step, height * width), device=inputs.device)
    ranks = pixel_ranks(maps)
    curves: dict[str, tuple[Tensor, Tensor]] = {}
    with _model_context(model), torch.no_grad():
        target = resolve_target(model, inputs, target)
        if "deletion" in paths:
            reference = make_reference(deletion_reference, inputs, "deletion_reference", blur_kernel, blur_sigma)
            curves["deletion"] = _score_path(model, inputs, reference, ranks, counts, target, score, max_batch)
        if "insertion" in paths:
            reference = make_reference(insertion_reference, inputs, "insertion_reference", blur_kernel, blur_sigma)
            curves["insertion"] = _score_path(model, reference, inputs, ranks, counts, target, score, max_batch)
    batch, points = inputs.shape[0], counts.shape[0]
    model_calls = 1 + len(curves) * _chunk_count(batch, points, _chunk_shape(batch, points, max_batch))

    fields: dict[str, Optional[Tensor]] = {}
    for path in PATHS:
        if path not in curves:
            fields.update({f"{path}_auc": None, f"{path}_auc_prob": None, f"{path}_curve": None,
                           f"{path}_prob_curve": None})
            continue
        curve, probability = curves[path]
        reference_score = curve[:, 0] if path == "deletion" else curve[:, -1]
        fields[f"{path}_auc"] = warn_if_not_finite(curve.mean(dim=1) / reference_score, f"{path} AUCs")
        fields[f"{path}_auc_prob"] = trapezoid_auc(probability)
        fields[f"{path}_curve"] = curve
        fields[f"{path}_prob_curve"] = probability
    return DeletionInsertionResult(counts=counts, pixels_per_step=pixels_per_step, score=score,
                                   model_calls=model_calls, **fields)


# ---------------------------------------------------------------------------------------------
# accuracy under masking
# ---------------------------------------------------------------------------------------------
DEFAULT_FRACTIONS = tuple(i / 10 for i in range(10))


@dataclass
class MaskedAccuracyResult:
    """``correct[b, j]``: image b is still classified as its label with ``counts[j]`` (the
    ``fractions[j]`` share of H·W, rounded half up) top-ranked pixels replaced by the reference;
    ``accuracy[j]`` its mean over the batch. Concatenate ``correct`` over batches for a dataset."""

    fractions: Tensor
    counts: Tensor
    correct: Tensor
    accuracy: Tensor


def masked_accuracy(
    model: Callable[[Tensor], Tensor],
    inputs: Tensor,
    attributions: Tensor,
    labels: Tensor,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    reference: Reference = "zeros",
    blur_kernel: Optional[int] = None,
    blur_sigma: float = 5.0,
    max_batch: Optional[int] = None,
    allow_constant: bool = False,
    output: Selector = None,
) -> MaskedAccuracyResult:
    """Accuracy after removing the top x% most-salient pixels (filled with ``reference``),
    without retraining (Saliency Guided Training's protocol). ``labels``: (B,) class indices."""
    model = _validate_model_inputs(model, inputs, output)
    maps = _attribution_maps(attributions, inputs)
    _check_not_constant(maps, allow_constant)
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError("labels must be an integer tensor of class indices, shape (B,)")
    if labels.reshape(-1).shape[0] != inputs.shape[0]:
        raise ValueError(f"labels has {labels.numel()} entries but the batch has {inputs.shape[0]} images")
    labels = labels.to(inputs.device).reshape(-1).long()
    fractions_list = [float(f) for f in fractions]
    if not fractions_list or any(not 0.0 <= f <= 1.0 for f in fractions_list):
        raise ValueError(f"fractions must be a non-empty sequence of values in [0, 1], got {fractions!r}")
    max_batch = default_max_batch(inputs) if max_batch is None else check_positive_int(max_batch, "max_batch")

    num_pixels = inputs.shape[-2] * inputs.shape[-1]
    counts = torch.tensor([math.floor(f * num_pixels + 0.5) for f in fractions_list], device=inputs.device)
    ranks = pixel_ranks(maps)
    correct = torch.empty((inputs.shape[0], counts.shape[0]), dtype=torch.bool, device=inputs.device)
    with _model_context(model), torch.no_grad():
        fill = make_reference(reference, inputs, "reference", blur_kernel, blur_sigma)
        for images, steps, logits in _curve_logits(model, inputs, fill, ranks, counts, max_batch):
            correct[images, steps] = logits.argmax(dim=2) == labels[images].unsqueeze(1)
    return MaskedAccuracyResult(
        fractions=torch.tensor(fractions_list, dtype=torch.float64),
        counts=counts,
        correct=correct,
        accuracy=correct.double().mean(dim=0),
    )


# ---------------------------------------------------------------------------------------------
# sparsity
# ---------------------------------------------------------------------------------------------
def gini(attributions: Tensor) -> Tensor:
    """Gini index of each image's attribution (B,), in [0, 1]; higher is sparser.

    Flattens |a| over everything but the batch (channels included when given), adds 1e-7,
    sorts ascending: G = Σ_i (2i − n − 1)·a_(i) / (n·Σ a) — Quantus ``Sparseness`` with
    ``normalise=False``. Computed in float64, returned in the attributions' dtype; a constant
    map has G = 0 (no sparsity), so it is a valid input here.
    """
    if not isinstance(attributions, Tensor):
        raise TypeError(f"attributions must be a torch.Tensor, got {type(attributions).__name__}")
    if attributions.dim() < 2 or attributions.shape[0] == 0 or attributions[0].numel() == 0:
        raise ValueError(f"attributions must be a non-empty batch (B, ...), got shape {tuple(attributions.shape)}")
    if not attributions.is_floating_point():
        raise TypeError(f"attributions must be a floating tensor, got {attributions.dtype}")
    check_finite(attributions, "attributions")
    values = attributions.detach().flatten(1).abs().double() + GINI_EPSILON
    values = values.sort(dim=1).values
    n = values.shape[1]
    weights = 2 * torch.arange(1, n + 1, dtype=torch.float64, device=values.device) - n - 1
    return ((weights * values).sum(dim=1) / (n * values.sum(dim=1))).to(attributions.dtype)


# ---------------------------------------------------------------------------------------------
# completeness
# ---------------------------------------------------------------------------------------------
def completeness_error(
    model: Callable[[Tensor], Tensor],
    inputs: Tensor,
    attributions: Tensor,
    reference: Reference = "zeros",
    target: Target = None,
    score: str = "logit",
    blur_kernel: Optional[int] = None,
    blur_sigma: float = 5.0,
    output: Selector = None,
) -> Tensor:
    """|Σ attribution − (f_c(x) − f_c(reference))| / |f_c(x) − f_c(reference)| per image (B,).

    ``reference`` is the path's start: "zeros", "blur" or a tensor (IG's baseline, a SAMP
    path's reference). The sum runs over all of the attribution ((B, H, W) or (B, C, H, W)).
    When f_c(x) = f_c(reference) the error is inf (0 if the attribution also sums to 0).
    """
    model = _validate_model_inputs(model, inputs, output)
    _attribution_maps(attributions, inputs)
    check_score(score)
    with _model_context(model), torch.no_grad():
        target = resolve_target(model, inputs, target)
        start = make_reference(reference, inputs, "reference", blur_kernel, blur_sigma)
        batch = inputs.shape[0]
        scores = score_outputs(model(torch.cat([inputs, start])), target.repeat(2), score)
    return relative_completeness_error(attributions, scores[:batch] - scores[batch:])


# ---------------------------------------------------------------------------------------------
# localisation
# ---------------------------------------------------------------------------------------------
def _check_mask(mask: Tensor, name: str, batch: int, map_size: tuple[int, int]) -> Tensor:
    """(B, H, W) or (B, 1, H, W) boolean or 0/1 mask → (B, H, W) bool, at least the map's size."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.dim() != 3 or mask.shape[0] != batch:
        raise ValueError(f"{name} must have shape (B, H, W) with B = {batch}, got {tuple(mask.shape)}")
    if mask.shape[1] < map_size[0] or mask.shape[2] < map_size[1]:
        raise ValueError(
            f"{name} is {tuple(mask.shape[1:])} but the attribution maps are {map_size}; maps are "
            "upsampled to the mask size, so masks must be at least as large as the maps"
        )
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{name} must be boolean or hold only 0 and 1")
        mask = mask != 0
    return mask


def localization(
    attributions: Tensor,
    positive_mask: Tensor,
    negative_mask: Optional[Tensor] = None,
    threshold: float = 0.5,
    allow_constant: bool = False,
) -> dict[str, Tensor]:
    """IoU, precision, recall, F1 and pointing game of each map against its masks (RES protocol).

    Maps ((B, H, W), or (B, C, H, W) summed over channels) are bilinearly upsampled to the mask
    size (align_corners=False), min–max normalised per image and binarised at ``>= threshold``.
    False positives count only on ``negative_mask`` pixels when it is given, otherwise on all
    pixels outside the positive mask. Precision is 0 when nothing is selected; F1 is 0 when
    precision + recall = 0. The pointing game hits when the map's maximum (first in flat order
    among ties) lies in the positive mask. Returns (B,) tensors ``iou``, ``precision``,
    ``recall``, ``f1``, ``pointing_game`` and their batch means ``<name>_mean``.
    """
    maps = _attribution_maps(attributions)
    _check_not_constant(maps, allow_constant)
    batch, map_size = maps.shape[0], (maps.shape[1], maps.shape[2])
    positive = _check_mask(positive_mask, "positive_mask", batch, map_size)
    check_same_device(maps, positive_mask=positive)
    if negative_mask is not None:
        negative = _check_mask(negative_mask, "negative_mask", batch, map_size)
        check_same_device(maps, negative_mask=negative)
        if negative.shape != positive.shape:
            raise ValueError(
                f"negative_mask has shape {tuple(negative.shape)} but positive_mask {tuple(positive.shape)}; "
                "give both masks at the same size"
            )
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1] (maps are min-max normalised), got {threshold}")
    empty = (~positive.flatten(1).any(dim=1)).nonzero().flatten()
    if empty.numel() > 0:
        raise ValueError(
            f"positive_mask is empty for images {empty[:10].tolist()}; localisation needs an annotated "
            "region, so evaluate only the images that have one"
        )

    maps = maps.detach()
    if tuple(maps.shape[1:]) != tuple(positive.shape[1:]):
        maps = F.interpolate(maps.unsqueeze(1), size=tuple(positive.shape[1:]), mode="bilinear",
                             align_corners=False).squeeze(1)
    selected = (minmax_normalize(maps) >= threshold).flatten(1)
    positive = positive.flatten(1)
    false_region = negative.flatten(1) if negative_mask is not None else ~positive

    def count(mask: Tensor) -> Tensor:
        return mask.sum(dim=1).to(maps.dtype)

    hits = count(selected & positive)
    false_positives = count(selected & false_region)
    iou = hits / count(selected | positive)
    precision = torch.where(hits + false_positives > 0, hits / (hits + false_positives), torch.zeros_like(hits))
    recall = hits / count(positive)
    both = precision + recall
    f1 = torch.where(both > 0, 2 * precision * recall / both, torch.zeros_like(both))
    peak = maps.flatten(1).argmax(dim=1, keepdim=True)
    pointing_game = positive.gather(1, peak).squeeze(1).to(maps.dtype)
    result = {"iou": iou, "precision": precision, "recall": recall, "f1": f1, "pointing_game": pointing_game}
    result.update({f"{name}_mean": value.mean() for name, value in list(result.items())})
    return result
