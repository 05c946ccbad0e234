"""Pure-PyTorch twins of every native op: the fallback when the extension is absent and the
tests' oracle. Each follows its spec literally (vectorised over the batch, no custom kernels).
"""
from __future__ import annotations

import torch
from torch import Tensor


def _selection_key(proj: Tensor, insertion: bool) -> Tensor:
    """Smallest key moves first; NaN sorts last and −0 equals +0 (csrc/samp_step.h)."""
    key = -proj if insertion else proj
    key = torch.where(torch.isnan(key), torch.full_like(key, float("inf")), key)
    return torch.where(key == 0, torch.zeros_like(key), key)


def pixels_active(point: Tensor, end: Tensor, atol: float = 1e-8, rtol: float = 1e-5) -> Tensor:
    """(B, H, W): some channel still has |p − e| > atol + rtol·|e|."""
    return ((point - end).abs() > atol + rtol * end.abs()).any(dim=1)


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
    momentum: float,
    insertion: bool,
    exact_ties: bool,
    atol: float = 1e-8,
    rtol: float = 1e-5,
) -> None:
    """One SAMP step (samp.md) for the images ``rows``; updates the state tensors in place."""
    p, e, act = point[rows], end[rows], active[rows]
    g = grad if momentum == 1.0 else momentum * grad + (1.0 - momentum) * grad_avg[rows]
    delta = e - p
    proj = (g * delta).sum(dim=1)  # (R, H, W)
    key = _selection_key(proj, insertion).flatten(1)
    act_flat = act.flatten(1)
    n_active = act_flat.sum(dim=1)
    kk = torch.clamp(torch.clamp(n_active, max=k), min=1)
    masked = torch.where(act_flat, key, torch.full_like(key, float("inf")))
    kth = masked.sort(dim=1).values.gather(1, (kk - 1).unsqueeze(1))
    below = act_flat & (key < kth)
    ties = act_flat & (key == kth)
    if exact_ties:  # the first (k − #below) ties by flat index
        quota = kk.unsqueeze(1) - below.sum(dim=1, keepdim=True)
        ties = ties & (torch.cumsum(ties.long(), dim=1) <= quota)
    chosen = ((below | ties) & (n_active > 0).unsqueeze(1)).view_as(act)
    step_l1 = (delta.abs() * chosen.unsqueeze(1)).sum(dim=(1, 2, 3))
    image_bound = bound[rows]
    scale = torch.where(step_l1 > image_bound, image_bound / step_l1, torch.ones_like(step_l1))
    scale4 = scale.view(-1, 1, 1, 1)
    moved = torch.where(scale4 == 1, e, p + scale4 * delta)
    new_p = torch.where(chosen.unsqueeze(1), moved, p)
    new_act = torch.where(chosen, pixels_active(new_p, e, atol, rtol), act)
    attribution[rows] = attribution[rows] + torch.where(chosen, scale.view(-1, 1, 1) * proj, torch.zeros_like(proj))
    point[rows] = new_p
    grad_avg[rows] = g
    active[rows] = new_act
    active_count[rows] = new_act.flatten(1).sum(dim=1)
