"""The fakes (``torch.library.register_fake``) of every native op, registered once, when
``saliency_fast.ops`` is imported with the extension loaded: they let the ops trace under
torch.compile and run on ``meta`` tensors.

Each fake checks, with ``torch._check``, the shapes and dtypes the kernels' TORCH_CHECKs demand
(csrc/*_checks, csrc/*.h), naming the argument, so a traced program fails where an eager one
would; scalars are left to the kernels (and to ``ops``, which validates them for the user).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ._op_constants import SAMP_STEP_TENSORS

FLOATING = (torch.float32, torch.float64)


def _same_device(**tensors: Tensor) -> None:
    """Raises naming the first tensor argument that is not on the first one's device. The
    dispatcher sends a call to a fake as soon as one argument is on ``meta``, and a fake must
    not answer for a call whose real tensors sit on CPU (the kernels' own TORCH_CHECKs catch
    CPU/CUDA mixes)."""
    (first_name, first), *others = tensors.items()
    for name, tensor in others:
        if tensor.device != first.device:
            raise ValueError(f"{name} is on {tensor.device} but {first_name} is on {first.device}: "
                             "pass every tensor argument on one device")


def _expect(tensor: Tensor, name: str, shape: Optional[Sequence] = None, dtype: Optional[torch.dtype] = None,
            dtypes: Sequence[torch.dtype] = ()) -> None:
    """torch._check that ``tensor`` has ``shape`` (when given), ``dtype`` or one of ``dtypes``, and is contiguous."""
    if shape is not None:
        torch._check(tuple(tensor.shape) == tuple(shape),
                     lambda: f"{name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")
    if dtype is not None:
        torch._check(tensor.dtype == dtype, lambda: f"{name} must have dtype {dtype}, got {tensor.dtype}")
    if dtypes:
        torch._check(tensor.dtype in dtypes, lambda: f"{name} must be one of {dtypes}, got {tensor.dtype}")
    torch._check(tensor.is_contiguous(), lambda: f"{name} must be contiguous")


def _expect_images(tensor: Tensor, name: str, dtypes: Sequence[torch.dtype] = FLOATING) -> None:
    """A (B, C, H, W) floating tensor."""
    torch._check(tensor.dim() == 4, lambda: f"{name} must have shape (B, C, H, W), got {tuple(tensor.shape)}")
    _expect(tensor, name, dtypes=dtypes)


@torch.library.register_fake("saliency_fast::samp_step")
def _samp_step_fake(point: Tensor, end: Tensor, grad: Tensor, grad_avg: Tensor, attribution: Tensor,
                    active: Tensor, active_count: Tensor, step_count: Tensor, rows: Tensor, bound: Tensor,
                    *scalars: Union[int, float, bool]) -> None:
    """Mutates its inputs in place, allocates nothing."""
    _same_device(**dict(zip(SAMP_STEP_TENSORS, (point, end, grad, grad_avg, attribution, active, active_count,
                                            step_count, rows, bound))))
    _expect_images(point, "point")
    batch, channels, height, width = point.shape
    dtype = point.dtype
    _expect(rows, "rows", dtype=torch.long)
    torch._check(rows.dim() == 1, lambda: f"rows must be a 1-D index, got shape {tuple(rows.shape)}")
    _expect(end, "end", point.shape, dtype)
    _expect(grad, "grad", (rows.shape[0], channels, height, width), dtype)
    _expect(grad_avg, "grad_avg", point.shape, dtype)
    _expect(attribution, "attribution", (batch, height, width), dtype)
    _expect(active, "active", (batch, height, width), torch.bool)
    _expect(active_count, "active_count", (batch,), torch.long)
    _expect(step_count, "step_count", (batch,), torch.long)
    _expect(bound, "bound", (batch,), dtype)
    return None


@torch.library.register_fake("saliency_fast::perturbation_curve")
def _perturbation_curve_fake(start: Tensor, finish: Tensor, ranks: Tensor, counts: Tensor) -> Tensor:
    _same_device(start=start, finish=finish, ranks=ranks, counts=counts)
    _expect_images(start, "start", dtypes=(torch.float16, torch.bfloat16, *FLOATING))
    batch, channels, height, width = start.shape
    _expect(finish, "finish", start.shape, start.dtype)
    _expect(ranks, "ranks", (batch, height, width), torch.long)
    torch._check(counts.dim() == 1, lambda: f"counts must be a 1-D tensor, got shape {tuple(counts.shape)}")
    _expect(counts, "counts", dtype=torch.long)
    return start.new_empty((batch, counts.shape[0], channels, height, width))


@torch.library.register_fake("saliency_fast::saliency_budget")
def _saliency_budget_fake(saliency: Tensor, mode: str, epsilon: float, rho: float, k: float,
                          gamma: float) -> Tensor:  # one tensor: no mix possible
    torch._check(saliency.dim() == 3, lambda: f"saliency must have shape (B, H, W), got {tuple(saliency.shape)}")
    _expect(saliency, "saliency", dtypes=FLOATING)
    return torch.empty_like(saliency)


@torch.library.register_fake("saliency_fast::masked_perturb")
def _masked_perturb_fake(x: Tensor, delta: Tensor, grad: Tensor, budget: Tensor, step_size: float, epsilon: float,
                         low: float, high: float) -> None:
    """Mutates delta in place, allocates nothing."""
    _same_device(x=x, delta=delta, grad=grad, budget=budget)
    _expect_images(x, "x")
    batch, _, height, width = x.shape
    _expect(delta, "delta", x.shape, x.dtype)
    _expect(grad, "grad", x.shape, x.dtype)
    _expect(budget, "budget", (batch, height, width), x.dtype)
    return None


@torch.library.register_fake("saliency_fast::masked_random_fill")
def _masked_random_fill_fake(x: Tensor, mask: Tensor, noise: Tensor) -> Tensor:
    _same_device(x=x, mask=mask, noise=noise)
    _expect_images(x, "x")
    batch, _, height, width = x.shape
    _expect(mask, "mask", (batch, height, width), torch.bool)
    _expect(noise, "noise", x.shape, x.dtype)
    return torch.empty_like(x)
