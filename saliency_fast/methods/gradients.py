"""Gradient baselines: Saliency, InputXGradient, IntegratedGradients and SmoothGrad.

All follow Captum's definitions (and agree with Captum in float64; see tests/test_baselines.py)
but are built for throughput and bounded memory: Integrated Gradients and SmoothGrad stream
over their steps/samples in passes of a bounded number of images, reusing one input buffer,
and the model's parameters are frozen while attributing (``attribution_mode``) so every
backward pass computes the input gradient only.

Every method returns (B, H, W) maps summed over channels; ``reduce_channels=False`` gives the
(B, C, H, W) attributions in Captum's layout. Inputs need not be images: any (B, ...) batch
(e.g. (B, D) features) gives attributions of the inputs' shape. The Captum-style call
(``baselines=``, ``additional_forward_args=``, ``return_convergence_delta=``, Captum's per-call
``n_steps`` / ``method`` / ``internal_batch_size`` for IG, ``internal_batch_size`` for SmoothGrad
and ``abs`` for Saliency) and the channel sum (``reduce_channels``) come from ``AttributionMethod``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from .._validation import check_choice, check_positive_int
from .._common import Selector, input_gradient
from ..references import Reference
from ._base import AttributionMethod, DeprecatedBatchSize, PathAttributionMethod, pass_size

# Captum's names for the quadrature rules of the path integral.
IG_METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")
SMOOTHGRAD_BASES = ("saliency", "input_x_gradient")

# With no explicit batch size, one forward/backward pass holds at most this many input
# elements, and at least the whole input batch. Activation memory of a conv net grows with the
# input size, so this bounds peak memory independently of n_steps / n_samples. On an
# accelerator 2^22 (27 images of 3×224×224, 4096 of 1×32×32) keeps passes large enough to fill
# the device. On CPU a pass whose activations stay in cache is fastest: a sweep of IG's pass
# size on the digits CNN was fastest at 128–192 images a pass, slower at half or twice that
# and far slower at ten times that; so 2^17 (128 digits).
DEFAULT_ELEMENTS_PER_PASS = {"cpu": 1 << 17, "accelerator": 1 << 22}


def repeats_per_pass(requested_images: Optional[int], inputs: Tensor, total_repeats: int) -> int:
    """How many copies of the whole batch (steps or noise samples) one pass evaluates.

    ``requested_images`` counts images per pass, as Captum's ``internal_batch_size``; it is
    rounded down to a multiple of the batch size and never below one copy of the batch.
    """
    batch = inputs.shape[0]
    if requested_images is None:
        budget = DEFAULT_ELEMENTS_PER_PASS["cpu" if inputs.device.type == "cpu" else "accelerator"]
        requested_images = max(batch, budget // max(1, inputs[0].numel()))
    largest = max(1, min(total_repeats, requested_images // batch))
    passes = -(-total_repeats // largest)
    return -(-total_repeats // passes)  # the same number of passes, evenly filled (no tiny last pass)


def quadrature(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) in float64 for Captum's integral approximation ``method``.

    The same nodes and weights as captum.attr._utils.approximation_methods, computed in
    float64 throughout (Captum rounds the Riemann nodes and all weights to float32).
    """
    check_choice(method, "method", IG_METHODS)
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n_steps)
        return 0.5 * (1.0 + nodes), 0.5 * weights
    if n_steps < 2:
        raise ValueError(f"n_steps must be >= 2 for the Riemann methods, got {n_steps}")
    weights = np.full(n_steps, 1.0 / n_steps)
    if method == "riemann_trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
        alphas = np.linspace(0.0, 1.0, n_steps)
    elif method == "riemann_left":
        alphas = np.linspace(0.0, 1.0 - 1.0 / n_steps, n_steps)
    elif method == "riemann_middle":
        alphas = np.linspace(1.0 / (2 * n_steps), 1.0 - 1.0 / (2 * n_steps), n_steps)
    else:  # riemann_right
        alphas = np.linspace(1.0 / n_steps, 1.0, n_steps)
    return alphas, weights


class Saliency(AttributionMethod):
    """The input gradient of the target logit (Simonyan et al. 2014).

    ``abs=False`` (default) keeps the sign; ``abs=True`` returns |∂f_c/∂x| as Captum's
    ``Saliency`` does by default. The channel sum is taken after ``abs``.
    """

    any_input_shape = True
    channel_attributions = True
    call_options = ("abs",)

    def __init__(self, model: nn.Module, abs: bool = False, output: Selector = None) -> None:
        super().__init__(model, output)
        self.abs = bool(abs)

    def _set_call_options(self, abs: bool) -> None:  # type: ignore[override]  # gets only its call_options
        self.abs = bool(abs)

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        grad, _ = input_gradient(self.model, inputs, target)
        return grad.abs() if self.abs else grad


class InputXGradient(AttributionMethod):
    """Input times its gradient, x ⊙ ∂f_c/∂x (Shrikumar et al. 2016), as Captum's InputXGradient."""

    any_input_shape = True
    channel_attributions = True

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        grad, _ = input_gradient(self.model, inputs, target)
        return inputs * grad


class IntegratedGradients(PathAttributionMethod):
    """Integrated Gradients (Sundararajan et al. 2017) with Captum's quadrature rules.

    attribution = (x − x') ⊙ Σ_k w_k ∂f_c/∂x (x' + α_k (x − x')).

    Args:
        baseline: "zeros", "blur" (the SAMP blur of each input, see ``references``) or a
            tensor broadcastable to the inputs.
        n_steps: number of gradient evaluations along the path.
        method: one of ``IG_METHODS`` (Captum's names and nodes; default Gauss–Legendre as in
            Captum). Like Captum's, "riemann_trapezoid" takes steps of 1/n with halved end
            weights, so its weights sum to 1 − 1/n and its attributions fall short by that factor.
        internal_batch_size: images per forward/backward pass (Captum's meaning). Steps are
            streamed through one reused buffer, so peak memory depends on this, not on
            n_steps. Default: ``DEFAULT_ELEMENTS_PER_PASS`` input elements per pass (2^17 on
            CPU, 2^22 on an accelerator).
        blur_kernel, blur_sigma: the blur baseline's kernel size (default by image size) and σ.

    The (B, C, H, W) attributions (``reduce_channels=False``) sum to ≈ f_c(x) − f_c(x');
    ``baseline_for(inputs)`` returns the x' used, for the completeness check.
    """

    any_input_shape = True
    streams_passes = True
    call_options = ("n_steps", "method", "internal_batch_size")
    n_steps: int
    method: str

    def __init__(
        self,
        model: nn.Module,
        baseline: Reference = "zeros",
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: Optional[int] = None,
        blur_kernel: Optional[int] = None,
        blur_sigma: float = 5.0,
        output: Selector = None,
    ) -> None:
        super().__init__(model, output)
        self.baseline = baseline
        self._set_call_options(n_steps, method, internal_batch_size)
        if blur_kernel is not None:
            check_positive_int(blur_kernel, "blur_kernel")
        self.blur_kernel = blur_kernel
        self.blur_sigma = blur_sigma

    def _set_call_options(self, n_steps: Optional[int] = None,  # type: ignore[override]  # gets only its call_options
                          method: Optional[str] = None, internal_batch_size: Optional[int] = -1) -> None:
        """The quadrature and pass size; a call's ``n_steps`` / ``method`` / ``internal_batch_size``
        (Captum's per-call arguments) override the constructor's."""
        self.n_steps = check_positive_int(self.n_steps if n_steps is None else n_steps, "n_steps")
        self.method = self.method if method is None else method
        self.alphas, self.weights = quadrature(self.method, self.n_steps)
        if internal_batch_size != -1:
            self.internal_batch_size = internal_batch_size

    def completeness_reference(self, inputs: Tensor) -> Tensor:
        """The baseline: IG's attributions sum to ≈ f_c(x) − f_c(x') (the completeness axiom)."""
        return self.baseline_for(inputs)

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        baseline = self.baseline_for(inputs)
        path = inputs - baseline
        total = self._weighted_gradient_sum(baseline, path, target)
        return total.view_as(inputs) * path

    def _weighted_gradient_sum(self, baseline: Tensor, path: Tensor, target: Tensor) -> Tensor:
        """Σ_k w_k ∇f_c(x' + α_k (x − x')), flattened, streamed in passes of whole steps."""
        batch = path.shape[0]
        alphas = torch.as_tensor(self.alphas, dtype=path.dtype, device=path.device)
        weights = torch.as_tensor(self.weights, dtype=path.dtype, device=path.device)
        steps = repeats_per_pass(self.internal_batch_size, path, self.n_steps)
        buffer = torch.empty((steps, *path.shape), dtype=path.dtype, device=path.device)
        targets = target.repeat(steps)
        total = torch.zeros(path.numel(), dtype=path.dtype, device=path.device)
        for start in range(0, self.n_steps, steps):
            count = min(steps, self.n_steps - start)
            points = buffer[:count]
            torch.mul(alphas[start : start + count].view(count, *[1] * path.dim()), path, out=points)
            points.add_(baseline)
            grad, _ = input_gradient(self.model, points.view(count * batch, *path.shape[1:]), targets[: count * batch])
            total.addmv_(grad.view(count, -1).t(), weights[start : start + count])
        return total


class SmoothGrad(AttributionMethod):
    """SmoothGrad (Smilkov et al. 2017): the mean attribution over noisy copies of the input.

    Args:
        n_samples: number of noisy copies per image.
        stdev: noise σ as a fraction of each image's value range (max − min), as in the
            paper and PAIR ``saliency`` (Captum's NoiseTunnel takes an absolute σ instead).
        seed: seeds a private generator on the inputs' device; the global RNG is untouched.
            Sample s of every call uses the same noise whatever ``internal_batch_size`` is.
        internal_batch_size: images per forward/backward pass (default as IntegratedGradients;
            also a per-call option). ``batch_size`` is its deprecated alias.
        base: "saliency" (the gradient) or "input_x_gradient" (noisy input × its gradient).
        abs: take |·| of each sample's attribution before averaging (Captum NoiseTunnel over
            Saliency(abs=True)); the channel sum comes after.
    """

    any_input_shape = True
    channel_attributions = True
    streams_passes = True
    call_options = ("internal_batch_size",)
    batch_size = DeprecatedBatchSize()

    def __init__(
        self,
        model: nn.Module,
        n_samples: int = 50,
        stdev: float = 0.15,
        seed: int = 0,
        batch_size: Optional[int] = None,
        base: str = "saliency",
        abs: bool = False,
        output: Selector = None,
        internal_batch_size: Optional[int] = None,
    ) -> None:
        super().__init__(model, output)
        self.n_samples = check_positive_int(n_samples, "n_samples")
        if not (isinstance(stdev, (int, float)) and np.isfinite(stdev) and stdev >= 0):
            raise ValueError(f"stdev must be a finite number >= 0 (a fraction of the input range), got {stdev!r}")
        self.stdev = float(stdev)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.seed = int(seed)
        self.internal_batch_size = pass_size(internal_batch_size, batch_size, "SmoothGrad")
        self.base = check_choice(base, "base", SMOOTHGRAD_BASES)
        self.abs = bool(abs)

    def noise_scale(self, inputs: Tensor) -> Tensor:
        """Per-image σ = stdev · (max − min), shaped (B, 1, …, 1) like the inputs."""
        flat = inputs.reshape(inputs.shape[0], -1)
        value_range = flat.max(dim=1).values - flat.min(dim=1).values
        return (self.stdev * value_range).view(-1, *[1] * (inputs.dim() - 1))

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        batch = inputs.shape[0]
        sigma = self.noise_scale(inputs)
        generator = torch.Generator(device=inputs.device).manual_seed(self.seed)
        samples = repeats_per_pass(self.internal_batch_size, inputs, self.n_samples)
        buffer = torch.empty((samples, *inputs.shape), dtype=inputs.dtype, device=inputs.device)
        targets = target.repeat(samples)
        total = torch.zeros_like(inputs)
        for start in range(0, self.n_samples, samples):
            count = min(samples, self.n_samples - start)
            noisy = buffer[:count]
            for sample in noisy:  # one draw per sample keeps the noise independent of the pass size
                torch.randn(inputs.shape, generator=generator, out=sample)
            noisy.mul_(sigma).add_(inputs)
            flat = noisy.view(count * batch, *inputs.shape[1:])
            grad, _ = input_gradient(self.model, flat, targets[: count * batch])
            attribution = grad if self.base == "saliency" else grad.mul_(flat)
            if self.abs:
                attribution = attribution.abs_()
            total += attribution.view(count, *inputs.shape).sum(dim=0)
        return total / self.n_samples
