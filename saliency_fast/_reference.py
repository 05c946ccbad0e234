"""Pure-PyTorch twins of every native op: the fallback when the extension is absent and the
tests' oracle. Each follows its spec literally (vectorised over the batch, no custom kernels).

Arguments are not validated here: ``saliency_fast.ops`` validates them before it calls a twin
(and the tests call the twins with valid arguments only).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._op_constants import ATOL, RTOL


def _order_key(values: Tensor) -> Tensor:
    """The ordering key of the selections (csrc/ordered_bits.h, order_key): NaN sorts last (+inf), −0
    becomes +0."""
    key = torch.where(torch.isnan(values), torch.full_like(values, float("inf")), values)
    return torch.where(key == 0, torch.zeros_like(key), key)


def _selection_key(proj: Tensor, insertion: bool) -> Tensor:
    """Smallest key moves first: proj for deletion, −proj for insertion (csrc/samp_step.h)."""
    return _order_key(-proj if insertion else proj)


def pixels_active(point: Tensor, end: Tensor, atol: float = ATOL, rtol: float = RTOL) -> Tensor:
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
    step_count: Tensor,
    rows: Tensor,
    bound: Tensor,
    k: int,
    momentum: float,
    insertion: bool,
    exact_ties: bool,
    atol: float = ATOL,
    rtol: float = RTOL,
    tie_tolerance: float = 0.0,
) -> None:
    """One SAMP step (samp.md) for the images ``rows``; updates the state tensors in place.
    ``tie_tolerance`` t (ties "include" only): keys up to the k-th key + t (in the dtype) move."""
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
    if tie_tolerance > 0:  # the published code's margin: everything up to kth + t
        ties = act_flat & (key >= kth) & (key <= kth + tie_tolerance)
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
    step_count[rows] = step_count[rows] + (n_active > 0).long()


def perturbation_curve(start: Tensor, finish: Tensor, ranks: Tensor, counts: Tensor) -> Tensor:
    """(B, S, C, H, W): image b with its ``counts[s]`` highest-ranked pixels taken from ``finish``."""
    replaced = ranks.unsqueeze(1) < counts.view(1, -1, 1, 1)  # (B, S, H, W)
    return torch.where(replaced.unsqueeze(2), finish.unsqueeze(1), start.unsqueeze(1))


# --- SCAAT / Saliency Guided Training ops (scaat.md) -------------------------------------------


def saliency_budget(saliency: Tensor, mode: str, epsilon: float, rho: float, k: float, gamma: float) -> Tensor:
    """Per-image attack budget (B, H, W) from a saliency map (B, H, W), by full sorts.

    "topk": ε where s <= the floor(k·H·W)-th smallest value; "mass": ε where s <= v*, the largest
    value whose cumulative mass Σ_{s_j <= v*} s_j is <= rho·Σ s; "inverse": ε·(1 − r)^gamma with
    r = #{s_j < s_i} / (H·W − 1); "uniform": ε everywhere.
    """
    if mode == "uniform" or (mode == "mass" and rho >= 1):  # rho >= 1: every pixel
        return torch.full_like(saliency, epsilon)
    batch = saliency.shape[0]
    flat = saliency.reshape(batch, -1)
    n = flat.shape[1]
    keys = _order_key(flat)
    ordered = keys.sort(dim=1).values
    if mode == "inverse":  # in float64 for every dtype, rounded once (csrc/saliency_budget.h)
        below = torch.searchsorted(ordered, keys, right=False)  # ties share the lower rank
        rank = below.to(torch.float64) / (n - 1) if n > 1 else torch.zeros_like(flat, dtype=torch.float64)
        keep = 1 - rank
        budget = epsilon * keep if gamma == 1 else epsilon * keep.pow(gamma)
        return budget.to(flat.dtype).reshape(saliency.shape)
    if mode == "topk":
        m = min(max(math.floor(k * n), 0), n)
        if m == 0:
            return torch.zeros_like(saliency)
        threshold = ordered[:, m - 1 : m]
        inside = keys <= threshold
    else:  # mass: the cumulative mass of every value counts all of its ties
        total = flat.sum(dim=1, keepdim=True)
        cumulative = ordered.cumsum(dim=1)
        last_tie = torch.searchsorted(ordered, ordered, right=True) - 1
        fits = cumulative.gather(1, last_tie) <= rho * total
        threshold = torch.where(fits, ordered, torch.full_like(ordered, -float("inf"))).max(dim=1, keepdim=True).values
        inside = (keys <= threshold) & fits.any(dim=1, keepdim=True)
    return torch.where(inside, torch.full_like(flat, epsilon), torch.zeros_like(flat)).reshape(saliency.shape)


def masked_perturb(x: Tensor, delta: Tensor, grad: Tensor, budget: Tensor, step_size: float, epsilon: float,
                   low: float, high: float) -> None:
    """One PGD step in place on ``delta`` with separate PyTorch ops (csrc/masked_perturb.h)."""
    ratio = step_size / epsilon if epsilon > 0 else 0.0
    box = budget.unsqueeze(1)
    sign = (grad > 0).to(grad.dtype) - (grad < 0).to(grad.dtype)
    stepped = delta + (box * ratio) * sign
    boxed = torch.minimum(torch.maximum(stepped, -box), box)
    delta.copy_((x + boxed).clamp(low, high) - x)


def masked_random_fill(x: Tensor, mask: Tensor, noise: Tensor) -> Tensor:
    """Where ``mask`` (B, H, W) is set, every channel becomes min + noise·(max − min) of its image
    (NaN if the image holds a NaN; −0 counts as +0, csrc/masked_perturb.h)."""
    flat = x.reshape(x.shape[0], -1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1) + 0.0
    high = flat.max(dim=1).values.view(-1, 1, 1, 1) + 0.0
    return torch.where(mask.unsqueeze(1), low + noise * (high - low), x)
