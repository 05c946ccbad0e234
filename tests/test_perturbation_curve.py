"""perturbation_curve: native op vs its pure-PyTorch twin and vs a literal per-step build,
opcheck, dtypes, devices and argument errors."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import saliency_fast as sf
from saliency_fast import _reference, ops
from saliency_fast.metrics import pixel_ranks

pytestmark = pytest.mark.skipif(not sf.native_available(), reason="the extension is not built")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
native = torch.ops.saliency_fast.perturbation_curve


def make_args(batch, channels, height, width, counts, dtype=torch.float64, device="cpu", seed=0, tied=False):
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(batch, channels, height, width, generator=generator, dtype=torch.float64)
    finish = torch.randn(batch, channels, height, width, generator=generator, dtype=torch.float64)
    maps = torch.randn(batch, height, width, generator=generator)
    if tied:  # few distinct values: the ranks must break ties by flat index
        maps = maps.round()
    ranks = pixel_ranks(maps)
    counts = torch.tensor(counts, dtype=torch.long)
    return tuple(t.to(device) for t in (start.to(dtype), finish.to(dtype), ranks, counts))


def per_step_build(start, finish, maps, counts):
    """The literal definition: for each count, copy the first `count` pixels of the stable
    descending order from finish into a copy of start (one image and one step at a time)."""
    batch, channels, height, width = start.shape
    order = torch.sort(maps.flatten(1), dim=1, descending=True, stable=True).indices
    out = torch.empty(batch, len(counts), channels, height, width, dtype=start.dtype)
    for b in range(batch):
        for s, count in enumerate(counts):
            image = start[b].clone().flatten(1)
            chosen = order[b, : max(0, min(count, height * width))]
            image[:, chosen] = finish[b].flatten(1)[:, chosen]
            out[b, s] = image.view(channels, height, width)
    return out


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 3),
    channels=st.integers(1, 3),
    height=st.integers(1, 6),
    width=st.integers(1, 6),
    counts=st.lists(st.integers(-2, 40), min_size=0, max_size=6),
    tied=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_native_equals_reference_float64(batch, channels, height, width, counts, tied, seed):
    args = make_args(batch, channels, height, width, counts, seed=seed, tied=tied)
    assert torch.equal(native(*args), _reference.perturbation_curve(*args))


@settings(max_examples=60, deadline=None)
@given(
    ranks=st.lists(st.sampled_from([-2**62, -3, -1, 0, 1, 2, 5, 7, 2**62]) | st.integers(-3, 12),
                   min_size=6, max_size=6),
    counts=st.lists(st.sampled_from([-2**63, -2, 0, 1, 3, 7, 2**63 - 1]) | st.integers(-3, 12),
                    min_size=0, max_size=8),
)
def test_native_equals_reference_for_any_ranks_and_counts(ranks, counts):
    """ranks need not be a permutation, counts need not be sorted, distinct or in range (the
    CPU kernel compares precomputed levels, which must agree with rank < count everywhere)."""
    start, finish = torch.randn(2, 2, 2, 3, dtype=torch.float64).unbind(0)
    args = (start.unsqueeze(0), finish.unsqueeze(0), torch.tensor(ranks).view(1, 2, 3),
            torch.tensor(counts, dtype=torch.long))
    assert torch.equal(native(*args), _reference.perturbation_curve(*args))


@pytest.mark.parametrize("tied", [False, True])
def test_matches_literal_per_step_build(tied):
    generator = torch.Generator().manual_seed(3)
    start = torch.randn(2, 3, 5, 4, generator=generator, dtype=torch.float64)
    finish = torch.randn(2, 3, 5, 4, generator=generator, dtype=torch.float64)
    maps = torch.randn(2, 5, 4, generator=generator, dtype=torch.float64)
    if tied:
        maps = (maps > 0).double()
    counts = [0, 1, 7, 19, 20, 25]
    expected = per_step_build(start, finish, maps, counts)
    got = ops.perturbation_curve(start, finish, pixel_ranks(maps), torch.tensor(counts))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_dtypes_and_devices(device, dtype):
    args = make_args(3, 2, 7, 5, [0, 4, 9, 35, 36], dtype=dtype, device=device, seed=1)
    out = native(*args)
    assert out.dtype == dtype and out.device.type == device and out.shape == (3, 5, 2, 7, 5)
    cpu_args = tuple(t.cpu() for t in args)
    assert torch.equal(out.cpu(), _reference.perturbation_curve(*cpu_args))


def test_empty_counts_and_wrapper_fallback(monkeypatch):
    args = make_args(2, 1, 3, 3, [], seed=2)
    assert native(*args).shape == (2, 0, 1, 3, 3)
    args = make_args(2, 1, 3, 3, [0, 5, 9], seed=2)
    monkeypatch.setattr(ops, "use_native", lambda tensor: False)
    assert torch.equal(ops.perturbation_curve(*args), native(*args))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    for counts in ([0, 3, 12], [5]):
        args = make_args(2, 3, 4, 3, counts, dtype=dtype, seed=4)
        torch.library.opcheck(native.default, args)


def test_traces_under_torch_compile():
    # the op itself (the Python wrapper's device check calls build_info, which dynamo does not trace)
    args = make_args(2, 1, 4, 4, [0, 8, 16], seed=5)
    compiled = torch.compile(lambda *a: native(*a) * 2, backend="eager", fullgraph=True)
    assert torch.equal(compiled(*args), native(*args) * 2)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: (a[0][0], a[1][0], a[2], a[3]), "start must have shape"),
        (lambda a: (a[0].long(), a[1].long(), a[2], a[3]), "start must be a floating tensor"),
        (lambda a: (a[0].transpose(2, 3), a[1].transpose(2, 3), a[2].transpose(1, 2), a[3]), "start must be contiguous"),
        (lambda a: (a[0], a[1].float(), a[2], a[3]), "finish must have dtype"),
        (lambda a: (a[0], a[1][:, :1].contiguous(), a[2], a[3]), "finish must have the shape of start"),
        (lambda a: (a[0], a[1], a[2].int(), a[3]), "ranks must have dtype"),
        (lambda a: (a[0], a[1], a[2][:, :2].contiguous(), a[3]), "ranks must have shape"),
        (lambda a: (a[0], a[1], a[2], a[3].view(1, -1)), "counts must be a 1-D"),
        (lambda a: (a[0], a[1], a[2], a[3].double()), "counts must have dtype"),
    ],
)
def test_bad_arguments(change, match):
    args = make_args(2, 2, 4, 3, [0, 2, 12], seed=6)
    with pytest.raises(RuntimeError, match=match):
        native(*change(args))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_device_mismatch():
    start, finish, ranks, counts = make_args(2, 1, 3, 3, [0, 4], seed=7)
    with pytest.raises(RuntimeError, match="finish is on"):
        native(start.cuda(), finish, ranks.cuda(), counts.cuda())
