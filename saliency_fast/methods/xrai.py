"""XRAI (Kapishnikov et al., ICCV 2019): region attribution by greedily adding the segment with
the highest attribution density, as PAIR ``saliency``'s ``XRAI`` with its defaults.

1. Base attribution: Integrated Gradients with PAIR's path (``steps`` points
   α = linspace(0, 1, steps), each weighted 1/steps) from two baselines, the all-min and the
   all-max image (each image's own min and max), averaged, then the max over channels.
2. Segments: scikit-image's Felzenszwalb segmentation of the image rescaled to [−1, 1] and
   resized to 224 × 224, at scales 50, 100, 150, 250, 500, 1200 (σ 0.8, min size 150), resized
   back (nearest), one mask per segment, each dilated with a disk of radius 5.
3. Greedy: while area remains, add the mask whose not-yet-covered pixels have the highest mean
   attribution (skipping, for good, masks adding fewer than 50 pixels); those pixels get that
   mean. Pixels no mask covers get the mean attribution over them.

The IG gradients of every image and both baselines stream through the model in shared passes;
the segmentation runs per image on the CPU (scikit-image) in a thread, alongside the IG; the
greedy selection runs for the whole batch at once, one batched matrix product an iteration.
"""
from __future__ import annotations

import copy

from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .._validation import check_positive_int
from ._base import AttributionMethod
from .gradients import IntegratedGradients

FELZENSZWALB_SCALES = (50, 100, 150, 250, 500, 1200)
FELZENSZWALB_SIGMA = 0.8
FELZENSZWALB_MIN_SIZE = 150
SEGMENTATION_SIZE = (224, 224)
DILATION_RADIUS = 5
MIN_PIXEL_DIFF = 50


def _skimage() -> Tuple[ModuleType, ModuleType, ModuleType]:
    try:
        from skimage import morphology, segmentation, transform
    except ImportError as error:  # an optional dependency: say how to get it
        raise ImportError("XRAI and LIME segment images with scikit-image: pip install scikit-image "
                          "(or saliency-fast[baselines])") from error
    return morphology, segmentation, transform


def felzenszwalb_masks(image: np.ndarray) -> np.ndarray:
    """PAIR's ``_get_segments_felzenszwalb`` for one (H, W, C) float image: (M, H, W) bool masks."""
    morphology, segmentation, transform = _skimage()
    height, width = image.shape[:2]
    low, high = image.min(), image.max()
    span = high - low if high > low else 1.0  # a constant image (PAIR divides by zero): one segment
    scaled = (image - low) / span * 2.0 - 1.0  # PAIR's _normalize_image to [-1, 1]
    resized = transform.resize(scaled, SEGMENTATION_SIZE, order=3, mode="constant", preserve_range=True,
                               anti_aliasing=True)
    masks: List[np.ndarray] = []
    for scale in FELZENSZWALB_SCALES:
        labels = segmentation.felzenszwalb(resized, scale=scale, sigma=FELZENSZWALB_SIGMA,
                                           min_size=FELZENSZWALB_MIN_SIZE)
        labels = transform.resize(labels, (height, width), order=0, preserve_range=True, mode="constant",
                                  anti_aliasing=False).astype(int)
        masks.extend(labels == label for label in range(labels.min(), labels.max() + 1))
    return dilate(np.stack(masks), morphology.disk(DILATION_RADIUS))


def dilate(masks: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """scikit-image's binary ``dilation`` of every (H, W) mask at once: a pixel is set when the
    footprint centred on it covers a set pixel (outside the image counts as unset). One
    convolution of the 0/1 masks with the 0/1 footprint; sums of small integers are exact."""
    masks_t = torch.from_numpy(masks).to(torch.float32)[:, None]
    kernel = torch.from_numpy(np.ascontiguousarray(footprint[::-1, ::-1])).to(torch.float32)[None, None]
    covered = torch.nn.functional.conv2d(masks_t, kernel, padding=(footprint.shape[0] // 2, footprint.shape[1] // 2))
    return (covered[:, 0] > 0.5).numpy()


def xrai_regions(attr: Tensor, masks: Tensor, valid: Tensor, min_pixel_diff: int = MIN_PIXEL_DIFF) -> Tensor:
    """PAIR's full XRAI selection (area threshold 1.0) for a whole batch.

    attr: (B, P) attributions of P pixels; masks: (B, M, P) bool, padded; valid: (B, M) which
    masks exist. Returns the (B, P) XRAI maps.
    """
    batch, _, pixels = masks.shape
    masks_f = masks.to(attr.dtype)
    output = torch.full_like(attr, -torch.inf)
    covered = torch.zeros(batch, pixels, dtype=torch.bool, device=attr.device)
    remaining = valid.clone()
    while True:
        uncovered = (~covered).to(attr.dtype)
        # (B, M, P) @ (B, P, 2): each mask's count of new pixels and their attribution sum
        new_pixels, new_sums = torch.bmm(masks_f, torch.stack([uncovered, attr * uncovered], dim=2)).unbind(2)
        remaining &= new_pixels >= min_pixel_diff  # too small now means too small forever
        active = remaining.any(dim=1)
        if not bool(active.any()):
            break
        gain = torch.where(remaining, new_sums / new_pixels.clamp_min(1), -torch.inf)
        best = gain.argmax(dim=1)  # the first of equal gains, as PAIR's strict ">" in key order
        chosen = masks.gather(1, best.view(-1, 1, 1).expand(-1, 1, pixels)).squeeze(1)
        added = chosen & ~covered & active[:, None]
        output = torch.where(added, gain.gather(1, best[:, None]), output)
        covered |= added
        remaining[torch.arange(batch, device=attr.device), best] &= ~active
    rest = ~covered
    rest_mean = (attr * rest).sum(dim=1) / rest.sum(dim=1).clamp_min(1)
    return torch.where(rest, rest_mean[:, None], output)


class _PairIntegratedGradients(IntegratedGradients):
    """PAIR's IG path: α_k = linspace(0, 1, steps), every point weighted 1/steps."""

    def __init__(self, model: nn.Module, n_steps: int) -> None:
        super().__init__(model, n_steps=max(n_steps, 2), method="riemann_left")
        self.n_steps = n_steps
        self.alphas = np.linspace(0.0, 1.0, n_steps)
        self.weights = np.full(n_steps, 1.0 / n_steps)


class XRAI(AttributionMethod):
    """XRAI (Kapishnikov et al., "XRAI: Better Attributions Through Regions", ICCV 2019) with
    PAIR ``saliency``'s defaults; equals ``saliency.core.XRAI().GetMask`` (images in HWC there,
    its IG accumulated in float64).

    Args:
        steps: IG points per baseline (PAIR: 100).
        internal_batch_size: images per forward/backward pass of the IG (default as
            IntegratedGradients; also a per-call option).
        min_pixel_diff: masks adding fewer new pixels are dropped (PAIR: 50).

    Returns (B, H, W) region maps (no channel dimension: XRAI ranks pixels, not channels).
    ``segments(inputs)`` returns the masks used, ``base_attribution(inputs, target)`` the IG map.
    """

    streams_passes = True
    call_options = ("internal_batch_size",)

    def __init__(self, model: nn.Module, steps: int = 100, internal_batch_size: Optional[int] = None,
                 min_pixel_diff: int = MIN_PIXEL_DIFF) -> None:
        super().__init__(model)
        self.steps = check_positive_int(steps, "steps")
        self.internal_batch_size = internal_batch_size
        self._ig = _PairIntegratedGradients(model, self.steps)
        self.min_pixel_diff = check_positive_int(min_pixel_diff, "min_pixel_diff")
        _skimage()  # fail at construction when scikit-image is missing

    def base_attribution(self, inputs: Tensor, target: Tensor) -> Tensor:
        """(B, H, W): the mean of IG from the min and the max baseline, max over channels."""
        batch = inputs.shape[0]
        flat = inputs.reshape(batch, -1)
        low = flat.min(dim=1).values.view(-1, 1, 1, 1).expand_as(inputs)
        high = flat.max(dim=1).values.view(-1, 1, 1, 1).expand_as(inputs)
        baselines = torch.cat([low, high])
        path = torch.cat([inputs, inputs]) - baselines
        ig = copy.copy(self._ig)
        ig.model = self.model  # during attribute(): the bound model (forward arguments, output=)
        ig.internal_batch_size = self.internal_batch_size
        gradients = ig._weighted_gradient_sum(baselines, path, torch.cat([target, target]))
        attributions = gradients.view_as(path) * path
        return ((attributions[:batch] + attributions[batch:]) / 2).amax(dim=1)

    def segments(self, inputs: Tensor) -> list[np.ndarray]:
        """Per image, the (M, H, W) bool masks (Felzenszwalb at PAIR's scales, dilated)."""
        images = inputs.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy()
        return [felzenszwalb_masks(image) for image in images]

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        batch, _, height, width = inputs.shape
        # The segmentation (CPU, scikit-image) runs in a thread while the model computes the IG:
        # torch releases the GIL inside its kernels, so the two overlap.
        with ThreadPoolExecutor(max_workers=1) as pool:
            segmenting = pool.submit(self.segments, inputs)
            attr = self.base_attribution(inputs, target).reshape(batch, -1)
            per_image = segmenting.result()
        most = max(len(masks) for masks in per_image)
        masks = torch.zeros(batch, most, height * width, dtype=torch.bool)
        valid = torch.zeros(batch, most, dtype=torch.bool)
        for index, image_masks in enumerate(per_image):
            masks[index, : len(image_masks)] = torch.from_numpy(image_masks.reshape(len(image_masks), -1))
            valid[index, : len(image_masks)] = True
        regions = xrai_regions(attr, masks.to(attr.device), valid.to(attr.device), self.min_pixel_diff)
        return regions.view(batch, height, width)
