"""A literal, one-image-at-a-time transcription of shared/specs/samp.md: the end-to-end
oracle for SAMP. Deliberately simple (Python loop per step, full sorts)."""
import torch


def samp_path(model, x, end, target, s, n_frag=None, momentum=None, insertion=False, ties="include",
              atol=1e-8, rtol=1e-5, tie_tolerance=0.0):
    """One path for one image x (C, H, W) → (signed attribution (H, W), steps).

    ``tie_tolerance`` t: the published benchmark code's rule, written as it states it: with v the
    k-th smallest (deletion) / k-th largest (insertion) projection, every active pixel with
    proj <= v + t (deletion) / proj >= v − t (insertion) moves."""
    p = x.clone()
    attribution = torch.zeros(x.shape[1:], dtype=x.dtype)
    distance = (p - end).abs().sum()
    bound = distance / n_frag if n_frag else None
    gbar = None
    steps = 0
    active = ((p - end).abs() > atol + rtol * end.abs()).any(0)
    while bool(active.any()):
        point = p.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(point[None])[0, target], point)
        gbar = g if gbar is None or momentum is None else momentum * g + (1 - momentum) * gbar
        delta = end - p
        proj = (gbar * delta).sum(0)
        flat_active = active.flatten().nonzero().flatten()
        values = proj.flatten()[flat_active]
        k = min(s, flat_active.numel())
        key = -values if insertion else values
        order = torch.sort(key, stable=True).indices  # ties: lower flat index first
        chosen = torch.zeros(active.numel(), dtype=torch.bool)
        if ties == "exact":
            chosen[flat_active[order[:k]]] = True
        elif tie_tolerance > 0:
            v = values[order[k - 1]]
            near = values >= v - tie_tolerance if insertion else values <= v + tie_tolerance
            chosen[flat_active[near]] = True
        else:
            v = key[order[k - 1]]
            chosen[flat_active[key <= v]] = True
        chosen = chosen.view_as(active)
        step = delta * chosen
        size = step.abs().sum()
        full = bound is None or size <= bound
        if not full:
            step = step * (bound / size)
        p = torch.where(chosen & full, end, p + step)
        attribution += (step * gbar).sum(0)
        active = ((p - end).abs() > atol + rtol * end.abs()).any(0)
        steps += 1
    return (attribution if insertion else -attribution), steps
