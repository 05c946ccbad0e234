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


def use_native(tensor: Tensor) -> bool:
    """Whether the compiled op serves this tensor's device."""
    if _C is None:
        warn_fallback_once()
        return False
    return tensor.device.type in build_info()["backends"]


def samp_step(
    point: Tensor,
    end: Tensor,
    grad: Tensor,
    grad_avg: Tensor,
    attribution: Tensor,
    active: Tensor,
    active_count: Tensor,
    rows: Tensor,
    bound: Tensor,
    k: int,
    momentum: float = 1.0,
    insertion: bool = False,
    exact_ties: bool = False,
    atol: float = 1e-8,
    rtol: float = 1e-5,
) -> None:
    """One fused SAMP step for the images ``rows`` (distinct indices into the batch).

    ``grad[i]`` is the score gradient at ``point[rows[i]]``. Updates ``point``, ``grad_avg``
    (momentum state; pass ``momentum=1`` on the first step), ``attribution``, ``active``
    (B, H, W) and ``active_count`` (B,) in place. ``bound`` (B,) is the IC bound on each
    step's L1 size (+inf: none); ``k`` the pixels per step; ``exact_ties`` moves exactly
    min(k, #active) pixels, lower flat index first among ties.
    """
    args = (point, end, grad, grad_avg, attribution, active, active_count, rows, bound,
            int(k), float(momentum), bool(insertion), bool(exact_ties), float(atol), float(rtol))
    if use_native(point):
        torch.ops.saliency_fast.samp_step(*args)
    else:
        _reference.samp_step(*args)


if _C is not None:

    @torch.library.register_fake("saliency_fast::samp_step")
    def _samp_step_fake(point, end, grad, grad_avg, attribution, active, active_count, rows, bound,
                        k, momentum, insertion, exact_ties, atol, rtol):
        return None
