"""LIME (Ribeiro et al., KDD 2016) over superpixels, as Captum's ``Lime`` with its defaults.

Per image: superpixel features (scikit-image SLIC, ~50 segments, or quickshift with the
``lime`` package's image defaults, or a given ``feature_mask``); ``n_samples`` random on/off patterns of the features,
each feature on with probability 1/2; the perturbed image shows the image where its feature is
on and the hide colour (0) elsewhere; each sample is weighted by exp(−d² / (2 w²)) with d the
cosine distance between the flattened image and the perturbed image (w = ``kernel_width``); a
weighted Lasso (scikit-learn, ``alpha``) of the target score on the patterns gives one
coefficient per feature, which is the map's value on that superpixel.

The patterns of an image come from a CPU generator seeded with ``seed`` and depend only on its
number of features, so an image's map does not depend on its batch mates. The perturbed images
of the whole batch go through the model in passes of bounded size; the segmentation and the
Lasso fit (small: n_samples × features) run per image.
"""
from __future__ import annotations

import warnings

from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from .._validation import check_choice, check_positive_int
from .._common import Target, check_score, score_outputs
from ._base import AttributionMethod, DeprecatedBatchSize, pass_size
from .gradients import repeats_per_pass
from .xrai import _skimage

SEGMENTATIONS = ("slic", "quickshift")
# The lime package's image default: SegmentationAlgorithm("quickshift", kernel_size=4, max_dist=200, ratio=0.2).
QUICKSHIFT = {"kernel_size": 4, "max_dist": 200, "ratio": 0.2}
SLIC = {"n_segments": 50, "compactness": 10.0, "start_label": 0}


def _lasso(alpha: float) -> Any:  # sklearn.linear_model.Lasso (scikit-learn ships no type information)
    try:
        from sklearn.linear_model import Lasso
    except ImportError as error:
        raise ImportError("LIME fits its surrogate with scikit-learn: pip install scikit-learn "
                          "(or saliency-fast[baselines])") from error
    return Lasso(alpha=alpha)


def superpixels(image: np.ndarray, method: str = "slic", seed: int = 0) -> np.ndarray:
    """(H, W) int labels 0 … F−1 of one (H, W, C) image: SLIC, or quickshift (the lime package's
    defaults; a gray image is repeated to RGB, other channel counts skip the Lab conversion)."""
    _, segmentation, _ = _skimage()
    channels = image.shape[2]
    if method == "quickshift":
        if channels == 1:
            image = np.repeat(image, 3, axis=2)
        labels = segmentation.quickshift(image, **QUICKSHIFT, rng=seed, convert2lab=image.shape[2] == 3,
                                         channel_axis=-1)
    else:
        labels = segmentation.slic(image, **SLIC, channel_axis=-1)
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape)


class LIME(AttributionMethod):
    """LIME (Ribeiro et al., "Why Should I Trust You?", KDD 2016) with the SAMP paper's
    settings (100 samples, hide colour 0) and Captum's ``Lime`` defaults otherwise (features on
    with probability 1/2, exponential cosine kernel of width 1, Lasso with α = 0.01); equals
    Captum's ``Lime`` given the same feature mask and samples (to float32, the precision in which
    Captum fits).

    Args:
        n_samples: perturbed images per input image.
        segmentation: "slic" (default: scikit-image SLIC, n_segments 50, compactness 10; 36
            square-ish segments on a 32 × 32 digit) or "quickshift" (kernel_size 4, max_dist
            200, ratio 0.2: the ``lime`` package's image default, made for natural images; it
            gives 1–2 segments on a 32 × 32 digit). Ignored where ``attribute`` gets a
            ``feature_mask``.
        kernel_width: width w of the similarity kernel.
        alpha: the Lasso's L1 weight.
        seed: seeds the on/off patterns (and quickshift's tie-breaking).
        score: "logit" (default, Captum's model output), "probability" or "log_probability".
        internal_batch_size: perturbed images per forward pass (default: as IntegratedGradients'
            passes; also a per-call option). ``batch_size`` is its deprecated alias.

    Returns (B, H, W): each superpixel's coefficient on its pixels.
    """

    needs_gradients = False  # model calls only: runs under torch.inference_mode() too
    streams_passes = True
    call_options = ("internal_batch_size",)
    batch_size = DeprecatedBatchSize()

    def __init__(
        self,
        model: nn.Module,
        n_samples: int = 100,
        segmentation: str = "slic",
        kernel_width: float = 1.0,
        alpha: float = 0.01,
        seed: int = 0,
        score: str = "logit",
        batch_size: Optional[int] = None,
        internal_batch_size: Optional[int] = None,
    ) -> None:
        super().__init__(model)
        self.n_samples = check_positive_int(n_samples, "n_samples")
        self.segmentation = check_choice(segmentation, "segmentation", SEGMENTATIONS)
        for name, value in (("kernel_width", kernel_width), ("alpha", alpha)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        self.kernel_width = float(kernel_width)
        self.alpha = float(alpha)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.seed = int(seed)
        self.score = check_score(score)
        self.internal_batch_size = pass_size(internal_batch_size, batch_size, "LIME")
        _skimage()
        _lasso(self.alpha)

    def feature_masks(self, inputs: Tensor, feature_mask: Optional[Tensor] = None) -> Tensor:
        """(B, H, W) int64 labels 0 … F_b − 1 per image (on the CPU)."""
        batch, _, height, width = inputs.shape
        if feature_mask is None:
            images = inputs.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy()
            labels = [superpixels(image, self.segmentation, self.seed) for image in images]
            single = [index for index, label in enumerate(labels) if label.max() == 0]
            if single:  # one feature: the map is one constant, which must not pass for an explanation
                warnings.warn(f"LIME: the {self.segmentation} segmentation found one superpixel in image(s) "
                              f"{single[:10]}, so their maps are constant; pass feature_mask= (e.g. a grid) or "
                              "segmentation='quickshift'", RuntimeWarning, stacklevel=4)
            return torch.from_numpy(np.stack(labels)).long()
        if not isinstance(feature_mask, Tensor) or feature_mask.is_floating_point() or feature_mask.is_complex():
            raise TypeError("feature_mask must be an integer tensor of superpixel labels, shaped (H, W) or (B, H, W)")
        if feature_mask.shape not in ((height, width), (batch, height, width), (1, height, width)):
            raise ValueError(f"feature_mask must have shape (H, W) or (B, H, W) = {(batch, height, width)}, "
                             f"got {tuple(feature_mask.shape)}")
        mask = feature_mask.to("cpu", torch.long).expand(batch, height, width)
        return torch.stack([torch.unique(m, return_inverse=True)[1] for m in mask])

    def samples(self, n_features: int) -> Tensor:
        """The (n_samples, n_features) on/off patterns of an image with that many features."""
        generator = torch.Generator().manual_seed(self.seed)
        return torch.bernoulli(torch.full((self.n_samples, n_features), 0.5, dtype=torch.float64), generator=generator)

    def _forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _attribute(self, inputs: Tensor, target: Tensor, feature_mask: Optional[Tensor] = None) -> Tensor:
        """(B, H, W) maps. ``attribute(..., feature_mask=...)``: (H, W) or (B, H, W) integer superpixel
        labels to use instead of the segmentation (as Captum's ``feature_mask``)."""
        batch, _, height, width = inputs.shape
        labels = self.feature_masks(inputs, feature_mask)
        counts = (labels.view(batch, -1).max(dim=1).values + 1).tolist()
        patterns = torch.zeros(batch, self.n_samples, max(counts), dtype=inputs.dtype)
        for index, count in enumerate(counts):
            patterns[index, :, :count] = self.samples(count)
        scores, weights = self._scores_and_weights(inputs, target, patterns.to(inputs.device),
                                                   labels.view(batch, 1, -1).to(inputs.device))
        coefficients = torch.zeros(batch, max(counts), dtype=torch.float64)
        fittable = torch.isfinite(scores).all(dim=1).tolist()
        for index, count in enumerate(counts):  # the surrogate fit: small, per image
            if not fittable[index]:  # the model gave NaN/Inf: a NaN map, which attribute() reports
                coefficients[index] = float("nan")
                continue
            lasso = _lasso(self.alpha).fit(patterns[index, :, :count].cpu().numpy(), scores[index].cpu().numpy(),
                                           sample_weight=weights[index].cpu().numpy())
            coefficients[index, :count] = torch.from_numpy(lasso.coef_)
        coefficients = coefficients.to(device=inputs.device, dtype=inputs.dtype)
        return coefficients.gather(1, labels.view(batch, -1).to(inputs.device)).view(batch, height, width)

    def _scores_and_weights(self, inputs: Tensor, target: Tensor, patterns: Tensor, labels: Tensor
                            ) -> tuple[Tensor, Tensor]:
        """(B, S) target scores of the perturbed images and their similarity weights, given the
        (B, S, F) on/off patterns and the (B, 1, H·W) pixel labels; built a pass at a time."""
        batch, _, height, width = inputs.shape
        per_pass = repeats_per_pass(self.internal_batch_size, inputs, self.n_samples)
        scores = torch.empty(batch, self.n_samples, dtype=inputs.dtype, device=inputs.device)
        weights = torch.empty_like(scores)
        flat = inputs.reshape(batch, 1, -1)
        norm = flat.norm(dim=2)
        with torch.no_grad():
            for start in range(0, self.n_samples, per_pass):
                count = min(per_pass, self.n_samples - start)
                shown = patterns[:, start : start + count].gather(2, labels.expand(-1, count, -1))
                perturbed = shown.view(batch, count, 1, height, width) * inputs[:, None]  # hide colour 0
                logits = self._forward(perturbed.reshape(batch * count, *inputs.shape[1:]))
                scores[:, start : start + count] = score_outputs(
                    logits, target.repeat_interleave(count), self.score).view(batch, count)
                perturbed = perturbed.reshape(batch, count, -1)
                cosine = (perturbed * flat).sum(dim=2) / (perturbed.norm(dim=2) * norm).clamp_min(1e-8)
                weights[:, start : start + count] = torch.exp(-((1 - cosine) ** 2) / (2 * self.kernel_width**2))
        return scores, weights
