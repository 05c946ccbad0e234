"""Path references: the zero image and the SAMP blur (samp.md, metrics.md).

The blur kernel is the klen×klen image SciPy's ``gaussian_filter(delta, sigma)`` (mode
"reflect", truncate 4.0) makes of a centred unit delta. It is computed here in closed form so
SciPy is not needed at run time; tests compare it with SciPy where SciPy is installed.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

Reference = Union[str, Tensor]
REFERENCE_KINDS = ("zeros", "blur")
SMALL_IMAGE_SIDE = 64  # images up to 64×64 use the small defaults (klen 11, 10 pixels per step)


def default_blur_kernel_size(height: int, width: int) -> int:
    """klen = 11 for images up to 64×64, 31 for larger (ImageNet-size) images."""
    return 11 if max(height, width) <= SMALL_IMAGE_SIDE else 31


def _reflect_index(index: int, size: int) -> int:
    """SciPy's "reflect" boundary (half-sample symmetric: d c b a | a b c d | d c b a)."""
    period = 2 * size
    index %= period
    return period - 1 - index if index >= size else index


def gaussian_kernel_1d(klen: int, sigma: float, truncate: float = 4.0) -> list[float]:
    """SciPy's 1-D Gaussian filter applied to a centred unit delta of length ``klen``."""
    if klen < 1:
        raise ValueError(f"blur_kernel must be a positive int, got {klen}")
    if not sigma > 0:
        raise ValueError(f"blur_sigma must be positive, got {sigma}")
    radius = int(truncate * sigma + 0.5)
    weights = [math.exp(-0.5 * (j / sigma) ** 2) for j in range(-radius, radius + 1)]
    total = sum(weights)
    centre = klen // 2
    out = [0.0] * klen
    for i in range(klen):
        for offset, weight in zip(range(-radius, radius + 1), weights):
            if _reflect_index(i + offset, klen) == centre:
                out[i] += weight / total
    return out


def gaussian_kernel_2d(klen: int, sigma: float, dtype: torch.dtype = torch.float32,
                       device: Union[None, str, torch.device] = None) -> Tensor:
    """The (klen, klen) SAMP blur kernel; the 2-D filter of a separable delta is an outer product."""
    line = torch.tensor(gaussian_kernel_1d(klen, sigma), dtype=torch.float64)
    return torch.outer(line, line).to(dtype=dtype, device=device)


def gaussian_blur(inputs: Tensor, klen: Optional[int] = None, sigma: float = 5.0) -> Tensor:
    """Depthwise conv2d of (B, C, H, W) images with the SAMP kernel, zero padding klen // 2.

    The kernel is an outer product, so the blur runs as a pass down the columns and one along
    the rows: 2·klen products a pixel instead of klen² (62 against 961 at ImageNet size, where
    it is ~10× faster). Zero padding commutes with the split, so only rounding differs."""
    if klen is None:
        klen = default_blur_kernel_size(inputs.shape[-2], inputs.shape[-1])
    channels = inputs.shape[1]
    line = torch.tensor(gaussian_kernel_1d(klen, sigma), dtype=inputs.dtype, device=inputs.device)
    down = line.view(1, 1, klen, 1).expand(channels, 1, klen, 1)
    across = line.view(1, 1, 1, klen).expand(channels, 1, 1, klen)
    blurred = F.conv2d(inputs, down, padding=(klen // 2, 0), groups=channels)
    blurred = F.conv2d(blurred, across, padding=(0, klen // 2), groups=channels)
    # An even kernel grows the image by one pixel in each direction; keep the top-left H×W.
    return blurred[..., : inputs.shape[-2], : inputs.shape[-1]]


def make_reference(
    reference: Reference, inputs: Tensor, name: str, blur_kernel: Optional[int] = None, blur_sigma: float = 5.0
) -> Tensor:
    """Resolve "zeros", "blur" or a user tensor (broadcastable to the inputs) into a (B, C, H, W) tensor."""
    if isinstance(reference, str):
        if reference == "zeros":
            return torch.zeros_like(inputs)
        if reference == "blur":
            return gaussian_blur(inputs, blur_kernel, blur_sigma)
        raise ValueError(f"{name} must be one of {REFERENCE_KINDS} or a tensor, got {reference!r}")
    if not isinstance(reference, Tensor):
        raise TypeError(f"{name} must be one of {REFERENCE_KINDS} or a tensor, got {type(reference).__name__}")
    if reference.device != inputs.device:
        raise ValueError(f"{name} is on {reference.device} but inputs are on {inputs.device}")
    try:
        expanded = reference.to(inputs.dtype).expand_as(inputs)
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(reference.shape)} does not broadcast to the inputs' shape {tuple(inputs.shape)}"
        ) from None
    if not bool(torch.isfinite(expanded).all()):
        raise ValueError(f"{name} contains NaN or Inf values")
    return expanded.contiguous()
