"""Typed Python wrappers of the native ops (``torch.ops.saliency_fast.*``).

Each wrapper dispatches to the compiled op when the extension is built for the tensors'
device and to its pure-PyTorch twin in ``_reference`` otherwise. Fakes are registered here so
the ops trace under torch.compile.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _reference
from ._native import _C, build_info, warn_fallback_once


# Read once: a plain constant keeps the wrappers traceable by torch.compile(fullgraph=True).
NATIVE_BACKENDS = frozenset(build_info()["backends"])


def use_native(tensor: Tensor) -> bool:
    """Whether the compiled op serves this tensor's device."""
    if _C is None:
        warn_fallback_once()
        return False
    return tensor.device.type in NATIVE_BACKENDS


def _same_device(**tensors: Tensor) -> None:
    """Raises naming the first tensor argument that is not on the first one's device. The fakes
    call it: the dispatcher sends a call to them as soon as one argument is on ``meta``, and a
    fake must not answer for a call whose real tensors sit on CPU (the native kernels' own
    TORCH_CHECKs catch CPU/CUDA mixes)."""
    (first_name, first), *others = tensors.items()
    for name, tensor in others:
        if tensor.device != first.device:
            raise ValueError(f"{name} is on {tensor.device} but {first_name} is on {first.device}: "
                             "pass every tensor argument on one device")


_SAMP_TENSORS = ("point", "end", "grad", "grad_avg", "attribution", "active", "active_count", "step_count",
                 "rows", "bound")


def samp_step(
    point: Tensor,
    end: Tensor,
    grad: Tensor,
    grad_avg: Tensor,
    attribution: Tensor,
    active: Tensor,
    active_count: Tensor,
    step_count: Tensor,
    rows: Tensor,
    bound: Tensor,
    k: int,
    momentum: float = 1.0,
    insertion: bool = False,
    exact_ties: bool = False,
    atol: float = _reference.ATOL,
    rtol: float = _reference.RTOL,
    tie_tolerance: float = 0.0,
) -> None:
    """One fused SAMP step for the images ``rows`` (distinct indices into the batch; the CPU
    kernel raises otherwise; the CUDA kernel, which cannot raise without a host sync, leaves
    every image named by a repeated row untouched and ignores rows outside [0, B)).

    ``grad[i]`` is the score gradient at ``point[rows[i]]``. Updates ``point``, ``grad_avg``
    (momentum state; pass ``momentum=1`` on the first step), ``attribution``, ``active``
    (B, H, W) and ``active_count`` (B,) in place, and adds one to ``step_count`` (B,) for
    every image that still had pixels to move. ``bound`` (B,) is the IC bound on each
    step's L1 size (+inf: none); ``k`` the pixels per step; ``exact_ties`` moves exactly
    min(k, #active) pixels, lower flat index first among ties; ``tie_tolerance`` t (without
    ``exact_ties``) also moves every active pixel whose key lies within t above the k-th key.
    """
    samp_step_kernel(point)(point, end, grad, grad_avg, attribution, active, active_count, step_count, rows,
                            bound, int(k), float(momentum), bool(insertion), bool(exact_ties), float(atol),
                            float(rtol), float(tie_tolerance))


def samp_step_kernel(point: Tensor):
    """What ``samp_step`` calls for ``point``'s device: the compiled op or its reference twin,
    resolved once, for loops that step many times. It takes all 17 arguments positionally, with
    k an int, momentum, atol, rtol and tie_tolerance floats, and the flags bools: the per-call conversions and
    the device lookup of ``samp_step`` are what it saves (SAMP's step loop runs between model
    calls, with the interpreter's caches cold)."""
    return torch.ops.saliency_fast.samp_step.default if use_native(point) else _reference.samp_step


if _C is not None:

    @torch.library.register_fake("saliency_fast::samp_step")
    def _samp_step_fake(*args, **kwargs):  # mutates its inputs in place, allocates nothing
        _same_device(**dict(zip(_SAMP_TENSORS, args)))
        return None


def perturbation_curve(start: Tensor, finish: Tensor, ranks: Tensor, counts: Tensor) -> Tensor:
    """The perturbed images of many deletion/insertion curve points in one pass.

    ``start``/``finish`` are (B, C, H, W) images of one dtype, ``ranks`` (B, H, W) int64 each
    pixel's position in the attribution order (0 = most salient), ``counts`` (S,) int64 how
    many ranked pixels are replaced at each curve point. Returns (B, S, C, H, W) with
    ``out[b, s, :, p] = finish[b, :, p] if ranks[b, p] < counts[s] else start[b, :, p]``.
    Deletion is ``(x, reference)``, insertion ``(reference, x)``. Not differentiable.
    """
    if use_native(start):
        return torch.ops.saliency_fast.perturbation_curve(start, finish, ranks, counts)
    return _reference.perturbation_curve(start, finish, ranks, counts)


if _C is not None:

    @torch.library.register_fake("saliency_fast::perturbation_curve")
    def _perturbation_curve_fake(start, finish, ranks, counts):
        _same_device(start=start, finish=finish, ranks=ranks, counts=counts)
        torch._check(start.dim() == 4, lambda: "start must have shape (B, C, H, W)")
        torch._check(counts.dim() == 1, lambda: "counts must be a 1-D tensor")
        batch, channels, height, width = start.shape
        return start.new_empty((batch, counts.shape[0], channels, height, width))


# --- SCAAT / Saliency Guided Training ops (scaat.md) -------------------------------------------

def _pixel_map(tensor: Tensor, name: str) -> Tensor:
    """(B, H, W) view of a (B, H, W) or (B, 1, H, W) per-pixel map."""
    if tensor.dim() == 4 and tensor.shape[1] == 1:
        tensor = tensor.squeeze(1)
    if tensor.dim() != 3:
        raise ValueError(f"{name} must have shape (B, H, W) or (B, 1, H, W), got {tuple(tensor.shape)}")
    return tensor.contiguous()


def check_budget_shape(rho: float, k: float, gamma: float) -> None:
    """The parameters that shape a budget region: fractions rho and k in [0, 1], gamma > 0."""
    if not 0 <= rho <= 1:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    if not 0 <= k <= 1:
        raise ValueError(f"k must be in [0, 1], got {k}")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")


def saliency_budget(saliency: Tensor, mode: str = "mass", epsilon: float = 8 / 255, rho: float = 0.1,
                    k: float = 0.5, gamma: float = 1.0) -> Tensor:
    """Per-image attack budget from a non-negative saliency map, in its layout ((B,H,W) or (B,1,H,W)).

    ``"mass"``: ε on the lowest-saliency pixels that together hold at most ``rho`` of the image's
    saliency; ``"topk"``: ε on the floor(k·H·W) lowest pixels; ``"inverse"``: ε·(1 − rank)^gamma
    with rank the pixel's saliency percentile; ``"uniform"``: ε everywhere. Regions are value
    thresholds, so tied pixels are all in or all out. "topk"/"mass" use selection, not sorts.
    """
    if mode not in _reference.BUDGET_MODES:
        raise ValueError(f"mode must be one of {_reference.BUDGET_MODES}, got {mode!r}")
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    check_budget_shape(rho, k, gamma)
    maps = _pixel_map(saliency, "saliency")
    args = (maps, mode, float(epsilon), float(rho), float(k), float(gamma))
    if use_native(maps):
        budget = torch.ops.saliency_fast.saliency_budget(*args)
    else:
        budget = _reference.saliency_budget(*args)
    return budget.view(saliency.shape)


def masked_perturb(x: Tensor, delta: Tensor, grad: Tensor, budget: Tensor, step_size: float, epsilon: float,
                   low: float = 0.0, high: float = 1.0) -> Tensor:
    """One fused PGD step, in place on ``delta`` (returned): the sign step scaled by the
    budget, δ ← clamp(δ + α·(e/ε)·sign(g), −e, e), then x + δ clamped into [low, high].

    ``x``, ``delta``, ``grad`` are (B, C, H, W); ``budget`` e is (B, H, W) or (B, 1, H, W).
    """
    if not delta.is_contiguous():
        raise ValueError("delta must be contiguous (it is updated in place)")
    if not step_size >= 0:
        raise ValueError(f"step_size must be >= 0, got {step_size}")
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    if not low <= high:
        raise ValueError(f"low must be <= high, got low={low}, high={high}")
    args = (x.contiguous(), delta, grad.contiguous(), _pixel_map(budget, "budget"), float(step_size),
            float(epsilon), float(low), float(high))
    if use_native(x):
        torch.ops.saliency_fast.masked_perturb(*args)
    else:
        _reference.masked_perturb(*args)
    return delta


def masked_random_fill(x: Tensor, mask: Tensor, noise: Tensor) -> Tensor:
    """Saliency Guided Training's masking: where ``mask`` (B, H, W) is set, every channel of the
    pixel becomes min + noise·(max − min) of its image (noise: uniform [0, 1), x's shape)."""
    args = (x.contiguous(), _pixel_map(mask, "mask"), noise.contiguous())
    if use_native(x):
        return torch.ops.saliency_fast.masked_random_fill(*args)
    return _reference.masked_random_fill(*args)


if _C is not None:

    @torch.library.register_fake("saliency_fast::saliency_budget")
    def _saliency_budget_fake(saliency, mode, epsilon, rho, k, gamma):  # one tensor: no mix possible
        torch._check(saliency.dim() == 3, lambda: "saliency must have shape (B, H, W)")
        return torch.empty_like(saliency)

    @torch.library.register_fake("saliency_fast::masked_perturb")
    def _masked_perturb_fake(x, delta, grad, budget, step_size, epsilon, low, high):
        _same_device(x=x, delta=delta, grad=grad, budget=budget)
        return None

    @torch.library.register_fake("saliency_fast::masked_random_fill")
    def _masked_random_fill_fake(x, mask, noise):
        _same_device(x=x, mask=mask, noise=noise)
        return torch.empty_like(x)
