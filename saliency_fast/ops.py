"""The ops layer's one contract: typed Python wrappers of the native ops (``torch.ops.saliency_fast.*``).

Callers call these functions and nothing below them. Each wrapper

* validates its user-facing scalars, raising ``ValueError`` that names the argument (this is the
  one layer that validates scalars for the user; the C++ kernels keep their TORCH_CHECKs only as
  the native guard for direct ``torch.ops`` calls, and the pure-PyTorch twins validate nothing);
* chooses the implementation: the compiled op when the extension is built for the tensors'
  device, else its pure-PyTorch twin in ``_reference`` (``use_native``; callers never choose);
* is not differentiable, like its op: with grad mode on, a tensor argument that requires grad is
  refused with a RuntimeError naming it (the compiled ops refuse it in their Autograd kernel,
  csrc/ops.cpp; the fallback path refuses it here). Call them under ``torch.no_grad()`` or
  pass detached tensors.

The constants of the contract, ``ATOL``/``RTOL`` (when a SAMP pixel has reached its end value)
and ``BUDGET_MODES``, are exported here; import them from ``saliency_fast.ops``. The fakes that
let the ops trace under torch.compile are registered once, in ``_fakes``.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._validation import check_choice, check_nonnegative, check_positive_int
from . import _reference
from ._native import _C, build_info, warn_fallback_once
from ._op_constants import ATOL, BUDGET_MODES, RTOL, SAMP_STEP_TENSORS
from ._reference import pixels_active

if _C is not None:
    from . import _fakes  # noqa: F401  (registers the fakes, once)

__all__ = ["ATOL", "RTOL", "BUDGET_MODES", "pixels_active", "use_native", "samp_step", "perturbation_curve",
           "saliency_budget", "masked_perturb", "masked_random_fill", "check_budget_shape"]

# Read once: a plain constant keeps the wrappers traceable by torch.compile(fullgraph=True).
NATIVE_BACKENDS = frozenset(build_info()["backends"])
# Looked up once: SAMP calls samp_step between model calls, many times per image.
_NATIVE_SAMP_STEP = torch.ops.saliency_fast.samp_step.default if _C is not None else None


def use_native(tensor: Tensor) -> bool:
    """Whether the compiled op serves this tensor's device."""
    if _C is None:
        warn_fallback_once()
        return False
    return tensor.device.type in NATIVE_BACKENDS


def _refuse_grad(op: str, names: tuple[str, ...], args: tuple) -> None:
    """The fallback path's twin of the compiled ops' Autograd kernel (csrc/ops.cpp): these ops
    are not differentiable, so with grad mode on no tensor argument (``names``: those of the
    first ``args``) may require grad."""
    if not torch.is_grad_enabled():
        return
    for name, tensor in zip(names, args):
        if tensor.requires_grad:
            raise RuntimeError(f"saliency_fast::{op} is not differentiable, but its argument {name} requires grad: "
                               f"call it under torch.no_grad() or pass {name}.detach()")


def _dispatch(op: str, names: tuple[str, ...], args: tuple) -> Any:
    """Run op ``op`` on ``args``: the compiled op for the first argument's device, else its
    pure-PyTorch twin, which first refuses (as the compiled Autograd kernel does) a tensor
    argument that requires grad (``names``: those of the first ``args``)."""
    if use_native(args[0]):
        return getattr(torch.ops.saliency_fast, op)(*args)
    _refuse_grad(op, names, args)
    return getattr(_reference, op)(*args)


# --- SAMP (samp.md) ----------------------------------------------------------------------------

def check_samp_scalars(k: int, exact_ties: bool, tie_tolerance: float) -> None:
    """The scalars of samp_step: k >= 1 pixels per step; tie_tolerance finite >= 0, and 0 with exact ties."""
    if type(k) is not int or k < 1:  # the common case, a plain int, costs one test per step
        check_positive_int(k, "k (pixels per step)")
    if tie_tolerance == 0.0:
        return
    if not 0 <= tie_tolerance < math.inf:
        raise ValueError(f"tie_tolerance must be a finite number >= 0, got {tie_tolerance}")
    if tie_tolerance > 0 and exact_ties:
        raise ValueError("tie_tolerance > 0 widens the ties that move; it cannot be combined with exact_ties")


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
    atol: float = ATOL,
    rtol: float = RTOL,
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
    Not differentiable (it updates the path state in place; SAMP calls it between model calls).
    """
    check_samp_scalars(k, exact_ties, tie_tolerance)
    args = (point, end, grad, grad_avg, attribution, active, active_count, step_count, rows, bound, int(k),
            float(momentum), bool(insertion), bool(exact_ties), float(atol), float(rtol), float(tie_tolerance))
    if use_native(point):
        assert _NATIVE_SAMP_STEP is not None  # use_native means the extension loaded
        _NATIVE_SAMP_STEP(*args)
    else:
        _refuse_grad("samp_step", SAMP_STEP_TENSORS, args)
        _reference.samp_step(*args)


# --- deletion/insertion curves (metrics.md) ----------------------------------------------------

def perturbation_curve(start: Tensor, finish: Tensor, ranks: Tensor, counts: Tensor) -> Tensor:
    """The perturbed images of many deletion/insertion curve points in one pass.

    ``start``/``finish`` are (B, C, H, W) images of one dtype, ``ranks`` (B, H, W) int64 each
    pixel's position in the attribution order (0 = most salient), ``counts`` (S,) int64 how
    many ranked pixels are replaced at each curve point. Returns (B, S, C, H, W) with
    ``out[b, s, :, p] = finish[b, :, p] if ranks[b, p] < counts[s] else start[b, :, p]``.
    Deletion is ``(x, reference)``, insertion ``(reference, x)``. Not differentiable (the
    metrics run it under torch.no_grad()).
    """
    return _dispatch("perturbation_curve", ("start", "finish", "ranks", "counts"), (start, finish, ranks, counts))


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
    Not differentiable (piecewise constant in the saliency).
    """
    check_choice(mode, "mode", BUDGET_MODES)
    check_nonnegative(epsilon, "epsilon")
    check_budget_shape(rho, k, gamma)
    maps = _pixel_map(saliency, "saliency")
    args = (maps, mode, float(epsilon), float(rho), float(k), float(gamma))
    return _dispatch("saliency_budget", ("saliency",), args).view(saliency.shape)


def masked_perturb(x: Tensor, delta: Tensor, grad: Tensor, budget: Tensor, step_size: float, epsilon: float,
                   low: float = 0.0, high: float = 1.0) -> Tensor:
    """One fused PGD step, in place on ``delta`` (returned): the sign step scaled by the
    budget, δ ← clamp(δ + α·(e/ε)·sign(g), −e, e), then x + δ clamped into [low, high].

    ``x``, ``delta``, ``grad`` are (B, C, H, W); ``budget`` e is (B, H, W) or (B, 1, H, W).
    Not differentiable (an in-place attack step; the attack's gradient comes from the model).
    """
    if not delta.is_contiguous():
        raise ValueError("delta must be contiguous (it is updated in place)")
    check_nonnegative(step_size, "step_size")
    check_nonnegative(epsilon, "epsilon")
    if not low <= high:
        raise ValueError(f"low must be <= high, got low={low}, high={high}")
    args = (x.contiguous(), delta, grad.contiguous(), _pixel_map(budget, "budget"), float(step_size),
            float(epsilon), float(low), float(high))
    _dispatch("masked_perturb", ("x", "delta", "grad", "budget"), args)
    return delta


def masked_random_fill(x: Tensor, mask: Tensor, noise: Tensor) -> Tensor:
    """Saliency Guided Training's masking: where ``mask`` (B, H, W) is set, every channel of the
    pixel becomes min + noise·(max − min) of its image (noise: uniform [0, 1), x's shape).
    Not differentiable (SGT masks its data, not parameters)."""
    args = (x.contiguous(), _pixel_map(mask, "mask"), noise.contiguous())
    return _dispatch("masked_random_fill", ("x", "mask", "noise"), args)
