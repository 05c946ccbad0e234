"""Blur Integrated Gradients (Xu et al., CVPR 2020), PAIR ``saliency``'s ``BlurIG``, batched.

The path runs from the input blurred with σ = max_sigma back to the input (σ = 0):

    attribution = −Σ_i (σ_{i+1} − σ_i) · ∂blur(x, σ)/∂σ |_{σ_i} ⊙ ∇f_c(blur(x, σ_i)),

σ_i = i · max_sigma / steps (or its square root spacing), ∂/∂σ a forward difference of step
``grad_step``, as PAIR. The blur is SciPy's ``gaussian_filter`` with mode "constant" (zero
padding, truncate 4.0), written as one (H × H) and one (W × W) matrix per σ, so the blurred
path points of every image and step come from two batched matrix products (in float64 whatever
the inputs' dtype: the σ derivative is a difference quotient); the gradient evaluations stream in
passes of bounded size like Integrated Gradients'.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from .._validation import check_positive_int
from .._common import input_gradient
from ._base import AttributionMethod
from .gradients import repeats_per_pass

TRUNCATE = 4.0  # SciPy's gaussian_filter default


def _check_positive_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def gaussian_filter_matrices(sigmas: Tensor, size: int) -> Tensor:
    """(S, size, size) matrices M with M @ v = SciPy's ``gaussian_filter1d(v, σ, mode="constant")``
    for each σ of ``sigmas`` (float64); σ = 0 gives the identity, as PAIR's ``gaussian_blur``."""
    offsets = torch.arange(size, dtype=torch.float64)
    distance = offsets[None, :] - offsets[:, None]
    matrices = []
    for sigma in sigmas.tolist():
        if sigma == 0:
            matrices.append(torch.eye(size, dtype=torch.float64))
            continue
        radius = int(TRUNCATE * sigma + 0.5)
        taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
        weights = torch.exp(-0.5 / sigma**2 * taps**2)
        total = weights.sum()
        matrix = torch.exp(-0.5 / sigma**2 * distance**2) / total
        matrices.append(torch.where(distance.abs() <= radius, matrix, 0.0))
    return torch.stack(matrices)


class BlurIG(AttributionMethod):
    """Blur IG (Xu et al., "Attribution in Scale and Space", CVPR 2020) with PAIR ``saliency``'s
    defaults; equals ``saliency.core.BlurIG().GetMask`` (images in HWC there).

    Args:
        max_sigma: σ of the most blurred path point (PAIR: 50).
        steps: number of gradient evaluations along the path (PAIR: 100).
        grad_step: the σ step of the forward difference ∂blur/∂σ (PAIR: 0.01).
        sqrt: space the σ_i as sqrt(i · max_sigma / steps) (PAIR: False).
        internal_batch_size: images per forward/backward pass (default as IntegratedGradients;
            also a per-call option).

    ``reduce_channels=False`` returns the (B, C, H, W) attributions.
    """

    channel_attributions = True
    streams_passes = True
    call_options = ("internal_batch_size",)

    def __init__(
        self,
        model: nn.Module,
        max_sigma: float = 50.0,
        steps: int = 100,
        grad_step: float = 0.01,
        sqrt: bool = False,
        internal_batch_size: Optional[int] = None,
    ) -> None:
        super().__init__(model)
        self.max_sigma = _check_positive_number(max_sigma, "max_sigma")
        self.steps = check_positive_int(steps, "steps")
        self.grad_step = _check_positive_number(grad_step, "grad_step")
        self.sqrt = bool(sqrt)
        self.internal_batch_size = internal_batch_size

    def sigmas(self) -> Tensor:
        """σ_0 … σ_steps (float64), PAIR's spacing."""
        grid = torch.arange(self.steps + 1, dtype=torch.float64) * self.max_sigma / self.steps
        return grid.sqrt() if self.sqrt else grid

    def _blur(self, inputs: Tensor, rows: Tensor, columns: Tensor) -> Tensor:
        """(S, B, C, H, W): every image blurred with each σ's (row, column) matrices."""
        return torch.einsum("shi,bcij,swj->sbchw", rows, inputs, columns)

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        """The (B, C, H, W) attributions (summed to (B, H, W) maps unless ``reduce_channels=False``)."""
        batch, _, height, width = inputs.shape
        sigmas = self.sigmas()
        step_sizes = (sigmas[1:] - sigmas[:-1]).to(dtype=inputs.dtype, device=inputs.device)
        points_sigmas = sigmas[:-1]
        # The σ derivative is a difference of two blurs divided by grad_step: in float32 it would
        # lose about two of its seven digits, so the blurs are computed in float64 (PAIR's dtype).
        exact = inputs.to(torch.float64)
        options: Dict[str, Any] = {"dtype": torch.float64, "device": inputs.device}
        steps = repeats_per_pass(self.internal_batch_size, inputs, self.steps)
        targets = target.repeat(steps)
        total = torch.zeros_like(inputs)
        for start in range(0, self.steps, steps):
            chunk = points_sigmas[start : start + steps]
            count = chunk.numel()
            both = torch.cat([chunk, chunk + self.grad_step])
            rows = gaussian_filter_matrices(both, height).to(**options)
            columns = rows if height == width else gaussian_filter_matrices(both, width).to(**options)
            blurred = self._blur(exact, rows, columns)
            points, further = blurred[:count], blurred[count:]
            sigma_gradient = ((further - points) / self.grad_step).to(inputs.dtype)
            points = points.to(inputs.dtype)
            grad, _ = input_gradient(self.model, points.reshape(count * batch, *inputs.shape[1:]),
                                     targets[: count * batch])
            total -= torch.einsum("s,sbchw->bchw", step_sizes[start : start + count],
                                  sigma_gradient * grad.view_as(points))
        return total
