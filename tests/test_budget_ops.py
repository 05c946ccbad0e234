"""saliency_budget, masked_perturb, masked_random_fill: native ops vs their pure-PyTorch twins
and vs literal per-image definitions, float64 agreement, opcheck, devices and argument errors."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import saliency_fast as sf
from saliency_fast import _reference, ops

pytestmark = pytest.mark.skipif(not sf.native_available(), reason="the extension is not built")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
MODES = ["mass", "topk", "inverse", "uniform"]


def saliency_maps(batch, height, width, dtype=torch.float64, seed=0, tied=False, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    maps = torch.rand(batch, height, width, generator=generator, dtype=torch.float64) ** 3
    if tied:  # few distinct values and exact zeros: regions must take ties all-or-nothing
        maps = (maps * 4).floor() / 4
    return maps.to(dtype=dtype, device=device)


def literal_budget(s, mode, epsilon, rho, k, gamma):
    """The definitions of csrc/saliency_budget.h, one image and one pixel at a time."""
    out = torch.zeros_like(s)
    for b in range(s.shape[0]):
        values = s[b].flatten().tolist()
        n = len(values)
        for i, v in enumerate(values):
            if mode == "uniform":
                e = epsilon
            elif mode == "inverse":
                rank = sum(w < v for w in values) / (n - 1) if n > 1 else 0.0
                e = epsilon * (1 - rank) ** gamma
            elif mode == "topk":
                m = int(k * n)
                e = epsilon if m > 0 and v <= sorted(values)[m - 1] else 0.0
            else:
                limit = rho * sum(values)
                fitting = [u for u in set(values) if sum(w for w in values if w <= u) <= limit]
                e = epsilon if fitting and v <= max(fitting) else 0.0
            out[b].view(-1)[i] = e
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tied", [False, True])
def test_budget_matches_literal_definition(mode, tied):
    s = saliency_maps(3, 5, 6, tied=tied, seed=1)
    got = ops.saliency_budget(s, mode, epsilon=0.25, rho=0.3, k=0.4, gamma=1.5)
    torch.testing.assert_close(got, literal_budget(s, mode, 0.25, 0.3, 0.4, 1.5), rtol=1e-12, atol=1e-14)


@given(
    batch=st.integers(1, 4), height=st.integers(1, 9), width=st.integers(1, 9), mode=st.sampled_from(MODES),
    rho=st.floats(0, 1), k=st.floats(0, 1), gamma=st.sampled_from([0.5, 1.0, 2.0]), tied=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_budget_native_matches_reference_float64(batch, height, width, mode, rho, k, gamma, tied, seed):
    s = saliency_maps(batch, height, width, tied=tied, seed=seed)
    args = (s, mode, 0.1, rho, k, gamma)
    torch.testing.assert_close(torch.ops.saliency_fast.saliency_budget(*args), _reference.saliency_budget(*args),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_budget_float32_and_devices(device, mode):
    s = saliency_maps(4, 16, 16, dtype=torch.float32, seed=3, device=device)
    got = ops.saliency_budget(s, mode, 8 / 255, 0.1, 0.5, 1.0)
    want = _reference.saliency_budget(s.cpu().double(), mode, 8 / 255, 0.1, 0.5, 1.0).float()
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-7)
    assert got.dtype == torch.float32 and got.device.type == device


def test_budget_region_properties():
    s = saliency_maps(8, 12, 12, seed=4)
    mass = ops.saliency_budget(s, "mass", 1.0, rho=0.1)
    inside_mass = (s * (mass > 0)).flatten(1).sum(1)
    assert bool((inside_mass <= 0.1 * s.flatten(1).sum(1) + 1e-12).all())
    # adding the next-lowest pixel outside the region would exceed the mass limit
    outside_min = torch.where(mass > 0, torch.full_like(s, float("inf")), s).flatten(1).min(1).values
    assert bool((inside_mass + outside_min > 0.1 * s.flatten(1).sum(1)).all())
    topk = ops.saliency_budget(s, "topk", 1.0, k=0.25)
    assert bool(((topk > 0).flatten(1).sum(1) == 36).all())  # no ties in continuous maps
    inverse = ops.saliency_budget(s, "inverse", 2.0)
    assert float(inverse.max()) == 2.0 and float(inverse.min()) == 0.0


def test_budget_keeps_layout_and_edge_cases():
    s = saliency_maps(2, 4, 4).unsqueeze(1)
    assert ops.saliency_budget(s, "mass").shape == (2, 1, 4, 4)
    zeros = torch.zeros(2, 4, 4, dtype=torch.float64)
    assert bool((ops.saliency_budget(zeros, "mass", 0.5) == 0.5).all())  # no mass: every pixel fits
    assert bool((ops.saliency_budget(zeros, "topk", 0.5, k=0.1) == 0.5).all())  # all tied at the threshold
    assert bool((ops.saliency_budget(saliency_maps(2, 4, 4), "topk", 0.5, k=0.0) == 0).all())
    one_pixel = torch.rand(3, 1, 1, dtype=torch.float64)
    assert bool((ops.saliency_budget(one_pixel, "inverse", 0.5) == 0.5).all())


def random_perturb_args(batch=3, channels=2, height=5, width=4, dtype=torch.float64, device="cpu", seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, channels, height, width, generator=generator, dtype=torch.float64)
    budget = torch.rand(batch, height, width, generator=generator, dtype=torch.float64) * 0.1
    budget[:, 0] = 0  # pixels without budget must not move
    delta = (torch.rand(x.shape, generator=generator, dtype=torch.float64) * 2 - 1) * budget.unsqueeze(1)
    grad = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    grad[0, 0, 1, 1] = 0.0
    return tuple(t.to(dtype=dtype, device=device) for t in (x, delta, grad, budget))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_masked_perturb_matches_reference(device, dtype):
    x, delta, grad, budget = random_perturb_args(dtype=dtype, device=device, seed=5)
    want = delta.clone()
    _reference.masked_perturb(x, want, grad, budget, 0.03, 0.1, 0.0, 1.0)
    got = delta.clone()
    returned = ops.masked_perturb(x, got, grad, budget.unsqueeze(1), 0.03, 0.1, 0.0, 1.0)
    assert returned is got
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # the same roundings, no contraction


def test_masked_perturb_stays_in_box_and_range():
    x, delta, grad, budget = random_perturb_args(batch=4, height=8, width=8, seed=6)
    x = 0.2 + 0.7 * x  # valid inputs: inside the range, so the box and the range hold together
    delta = ((x + delta).clamp(0.2, 0.9) - x).contiguous()
    for _ in range(5):  # repeated steps: the step (0.06/0.1)·e overshoots the box and must be cut
        ops.masked_perturb(x, delta, torch.randn_like(grad), budget, 0.06, 0.1, 0.2, 0.9)
        box = budget.unsqueeze(1).expand_as(delta)
        assert bool((delta.abs() <= box + 1e-15).all())
        assert bool((((x + delta) >= 0.2 - 1e-15) & ((x + delta) <= 0.9 + 1e-15)).all())
    assert bool((delta[:, :, 0] == 0).all())


def test_masked_perturb_step_is_sign_times_scaled_budget():
    x = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    delta = torch.zeros_like(x)
    grad = torch.tensor([[[[2.0, -3.0], [0.0, 1e-30]]]], dtype=torch.float64)
    budget = torch.tensor([[[0.1, 0.2], [0.1, 0.05]]], dtype=torch.float64)
    ops.masked_perturb(x, delta, grad, budget, step_size=0.05, epsilon=0.2)
    torch.testing.assert_close(delta, torch.tensor([[[[0.025, -0.05], [0.0, 0.0125]]]], dtype=torch.float64))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_masked_random_fill_matches_reference(device, dtype):
    generator = torch.Generator().manual_seed(7)
    x = (torch.randn(3, 2, 5, 5, generator=generator, dtype=torch.float64) * 2).to(dtype=dtype, device=device)
    mask = (torch.rand(3, 5, 5, generator=generator) < 0.5).to(device)
    noise = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)
    got = ops.masked_random_fill(x, mask, noise)
    torch.testing.assert_close(got, _reference.masked_random_fill(x, mask, noise), rtol=0, atol=0)
    keep = ~mask.unsqueeze(1).expand_as(x)
    assert torch.equal(got[keep], x[keep])
    low = x.flatten(1).min(1).values.view(-1, 1, 1, 1).expand_as(x)
    high = x.flatten(1).max(1).values.view(-1, 1, 1, 1).expand_as(x)
    assert bool(((got >= low) & (got <= high)).all())


def test_opcheck_every_op():
    s = saliency_maps(2, 4, 5)
    for mode in MODES:
        torch.library.opcheck(torch.ops.saliency_fast.saliency_budget.default, (s, mode, 0.1, 0.2, 0.5, 1.0))
    x, delta, grad, budget = random_perturb_args()
    torch.library.opcheck(torch.ops.saliency_fast.masked_perturb.default, (x, delta, grad, budget, 0.02, 0.1, 0.0, 1.0))
    mask = torch.rand(3, 5, 4) < 0.5
    torch.library.opcheck(torch.ops.saliency_fast.masked_random_fill.default, (x, mask, torch.rand_like(x)))


def test_budget_bad_inputs():
    s = saliency_maps(2, 4, 4)
    with pytest.raises(ValueError, match="mode"):
        ops.saliency_budget(s, "median")
    with pytest.raises(ValueError, match="rho"):
        ops.saliency_budget(s, "mass", rho=1.5)
    with pytest.raises(ValueError, match="k must"):
        ops.saliency_budget(s, "topk", k=-0.1)
    with pytest.raises(ValueError, match="gamma"):
        ops.saliency_budget(s, "inverse", gamma=0)
    with pytest.raises(ValueError, match="saliency must have shape"):
        ops.saliency_budget(s[0], "mass")
    native = torch.ops.saliency_fast.saliency_budget
    with pytest.raises(RuntimeError, match="mode must be one of"):
        native(s, "median", 0.1, 0.1, 0.5, 1.0)
    with pytest.raises(RuntimeError, match="saliency must be float32 or float64"):
        native(s.half(), "mass", 0.1, 0.1, 0.5, 1.0)
    with pytest.raises(RuntimeError, match="epsilon"):
        native(s, "mass", -1.0, 0.1, 0.5, 1.0)


def test_perturb_and_fill_bad_inputs():
    x, delta, grad, budget = random_perturb_args()
    native = torch.ops.saliency_fast.masked_perturb
    with pytest.raises(RuntimeError, match="budget must have shape"):
        native(x, delta, grad, budget[:, :2].contiguous(), 0.01, 0.1, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="grad must have dtype"):
        native(x, delta, grad.float(), budget, 0.01, 0.1, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="delta must have the shape"):
        native(x, delta[:, :1].contiguous(), grad, budget, 0.01, 0.1, 0.0, 1.0)
    with pytest.raises(ValueError, match="low must be <= high"):
        ops.masked_perturb(x, delta, grad, budget, 0.01, 0.1, 1.0, 0.0)
    with pytest.raises(ValueError, match="delta must be contiguous"):
        ops.masked_perturb(x, delta.transpose(2, 3), grad, budget, 0.01, 0.1)
    with pytest.raises(RuntimeError, match="mask must have dtype"):
        torch.ops.saliency_fast.masked_random_fill(x, torch.zeros(3, 5, 4), torch.rand_like(x))
    with pytest.raises(RuntimeError, match="noise must have the shape"):
        torch.ops.saliency_fast.masked_random_fill(x, torch.zeros(3, 5, 4, dtype=torch.bool), torch.rand(3, 5, 4, dtype=torch.float64))


def test_reference_fallback_agrees_with_native_wrapper(monkeypatch):
    s = saliency_maps(2, 6, 6, seed=9)
    native = ops.saliency_budget(s, "mass", 0.1)
    monkeypatch.setattr(ops, "use_native", lambda tensor: False)
    torch.testing.assert_close(ops.saliency_budget(s, "mass", 0.1), native, rtol=0, atol=0)
