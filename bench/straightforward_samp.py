"""The straightforward PyTorch implementation of a SAMP++ path, the way one writes it without a
fused op: a Python loop over images for torch.quantile, boolean indexing, torch.isclose. It is
the baseline the native step is compared with (BENCHMARKS.md)."""
import torch


def straightforward_step(point, end, grad, grad_avg, attribution, active, bound, k, momentum, first, insertion):
    """One SAMP++ step for all images; returns the new state tensors."""
    gbar = grad if first else momentum * grad + (1 - momentum) * grad_avg
    delta = end - point
    proj = (gbar * delta).sum(1)
    key = -proj if insertion else proj
    chosen = torch.zeros_like(active)
    for i in range(point.shape[0]):
        values = key[i][active[i]]
        if values.numel() == 0:
            continue
        kk = min(k, values.numel())
        q = (kk - 1) / max(values.numel() - 1, 1)
        v = torch.quantile(values, q, interpolation="lower")
        chosen[i] = active[i] & (key[i] <= v)
    step = delta * chosen.unsqueeze(1)
    size = step.abs().sum((1, 2, 3))
    scale = torch.where(size > bound, bound / size, torch.ones_like(size)).view(-1, 1, 1, 1)
    step = step * scale
    point = torch.where(chosen.unsqueeze(1) & (scale == 1), end, point + step)
    attribution = attribution + (step * gbar).sum(1)
    active = ~torch.isclose(point, end).all(1)
    return point, gbar, attribution, active


def straightforward_path(model, start, end, target, k, n_frag=50, momentum=0.5, insertion=False):
    """A whole path (converged images leave the model batch by boolean indexing)."""
    point = start.clone()
    grad_avg = torch.zeros_like(point)
    attribution = point.new_zeros(point.shape[0], *point.shape[2:])
    bound = (point - end).abs().sum((1, 2, 3)) / n_frag
    active = ~torch.isclose(point, end).all(1)
    first, calls = True, 0
    while bool(active.any()):
        live = active.flatten(1).any(1)
        x = point[live].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(x).gather(1, target[live, None]).sum(), x)
        new = straightforward_step(point[live], end[live], grad, grad_avg[live], attribution[live], active[live],
                                   bound[live], k, momentum, first, insertion)
        point[live], grad_avg[live], attribution[live], active[live] = new
        first = False
        calls += 1
    return (attribution if insertion else -attribution), calls
