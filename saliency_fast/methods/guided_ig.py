"""Guided Integrated Gradients (Kapishnikov et al., CVPR 2021), batched over images.

The algorithm is PAIR ``saliency``'s ``guided_ig_impl`` step for step (same path, same
attribution in float64), rewritten in torch so that it runs on the model's device and moves
a whole batch of images at once: one forward/backward per step for the batch, and each
image's inner loop (which moves the features with the smallest |gradient| until the step's
L1 target is reached) runs with a per-image "still moving" mask.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .._validation import check_positive_int
from .._common import Selector, input_gradient
from ..references import Reference
from ._base import PathAttributionMethod


# PAIR's tolerance for "the L1 distance has reached this step's target" (math.isclose).
EPSILON = 1e-9


def _isclose(a: Tensor, b: Tensor) -> Tensor:
    """math.isclose(a, b, rel_tol=EPSILON, abs_tol=EPSILON), elementwise."""
    tolerance = torch.clamp(EPSILON * torch.maximum(a.abs(), b.abs()), min=EPSILON)
    return (a - b).abs() <= tolerance


def guided_ig_path(
    gradient: Callable[[Tensor], Tensor],
    x_input: Tensor,
    x_baseline: Tensor,
    steps: int,
    fraction: float,
    max_dist: float,
) -> Tensor:
    """Guided IG attributions for flattened (B, N) inputs and baselines.

    ``gradient(x)`` returns ∂f_c/∂x at the (B, N) points x. Images equal to their baseline
    get zero attribution. Where PAIR's loop would spin forever (no feature left to move
    while the L1 target is not reached) the image's step ends instead.
    """
    diff = x_input - x_baseline
    moves = diff != 0
    l1_total = diff.abs().sum(dim=1)
    nonzero_images = l1_total != 0
    x = x_baseline.clone()
    attr = torch.zeros_like(x_input)
    kth = math.floor((x_input.shape[1] - 1) * fraction) + 1  # np.quantile(..., method="lower")
    for step in range(steps):
        grad_actual = gradient(x)
        alpha = (step + 1.0) / steps
        alpha_min = max(alpha - max_dist, 0.0)
        alpha_max = min(alpha + max_dist, 1.0)
        x_min = x_baseline + diff * alpha_min
        x_max = x_baseline + diff * alpha_max
        l1_target = l1_total * (1 - (step + 1) / steps)
        grad = grad_actual.clone()
        active = nonzero_images
        while True:
            x_old = x
            # Features that fell behind the allowed [alpha_min, alpha_max] band jump to x_min.
            x_alpha = torch.where(moves, (x - x_baseline) / diff, alpha_max)
            x = torch.where((x_alpha < alpha_min) & active[:, None], x_min, x)
            l1_current = (x - x_input).abs().sum(dim=1)
            selecting = active & ~_isclose(l1_target, l1_current)
            # Move the fraction of features with the smallest |gradient|, excluding those at x_max.
            grad = torch.where(x == x_max, torch.inf, grad)
            magnitude = grad.abs()
            threshold = magnitude.kthvalue(kth, dim=1).values
            selected = (magnitude <= threshold[:, None]) & (grad != torch.inf) & selecting[:, None]
            l1_selected = ((x - x_max).abs() * selected).sum(dim=1)
            gamma = torch.where(
                l1_selected > 0, (l1_current - l1_target) / l1_selected.clamp_min(torch.finfo(x.dtype).tiny), torch.inf
            )
            reach_max = gamma > 1.0
            partial = x + (x_max - x) * gamma.clamp(max=1.0)[:, None]
            x = torch.where(selected, torch.where(reach_max[:, None], x_max, partial), x)
            attr += (x - x_old) * grad_actual
            # Images whose selection could not close the gap iterate again.
            active = selecting & reach_max & selected.any(dim=1)
            if not bool(active.any()):
                break
    return attr


class GuidedIG(PathAttributionMethod):
    """Guided Integrated Gradients: an adaptive path that moves low-|gradient| features first.

    Args:
        baseline: "zeros", "blur" (the SAMP blur) or a tensor broadcastable to the inputs.
        x_steps: number of steps (gradient evaluations) along the path.
        max_dist: the relative L1 distance [0, 1] any feature may lead or trail the straight
            line; 0 is IG on the straight line (right Riemann sum), 1 the unbounded path.
        fraction: the fraction of features (0, 1] moved per inner iteration.
        blur_kernel, blur_sigma: the blur baseline's kernel size and σ.

    Features are all C·H·W input values, as in PAIR; ``reduce_channels=False`` returns them.
    Any (B, ...) batch works (the path runs on the flattened features).
    """

    any_input_shape = True

    def __init__(
        self,
        model: nn.Module,
        baseline: Reference = "zeros",
        x_steps: int = 25,
        max_dist: float = 1.0,
        fraction: float = 0.25,
        blur_kernel: Optional[int] = None,
        blur_sigma: float = 5.0,
        output: Selector = None,
    ) -> None:
        super().__init__(model, output)
        self.x_steps = check_positive_int(x_steps, "x_steps")
        if not (isinstance(max_dist, (int, float)) and 0.0 <= max_dist <= 1.0):
            raise ValueError(f"max_dist must be a number in [0, 1], got {max_dist!r}")
        if not (isinstance(fraction, (int, float)) and 0.0 < fraction <= 1.0):
            raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
        self.max_dist = float(max_dist)
        self.fraction = float(fraction)
        self.baseline = baseline
        self.blur_kernel = blur_kernel
        self.blur_sigma = blur_sigma

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        batch = inputs.shape[0]
        baseline = self.baseline_for(inputs)

        def gradient(points: Tensor) -> Tensor:
            grad, _ = input_gradient(self.model, points.view_as(inputs), target)
            return grad.reshape(batch, -1)

        attr = guided_ig_path(
            gradient, inputs.reshape(batch, -1), baseline.reshape(batch, -1), self.x_steps, self.fraction, self.max_dist
        )
        return attr.view_as(inputs)
