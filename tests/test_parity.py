"""The CPU/CUDA parity contract of the native ops (README, "CPU/CUDA parity") and the findings of
issue 14 that the CPU can exercise: the fixed-order IC sum that CUDA mirrors, tie_tolerance,
"mass" at rho = 1, NaN and −0 in masked_random_fill, "inverse" in one precision, mixed devices,
the CUDA-only rows contract, and the stream _HostCounts waits on. The CUDA variants compare a
GPU result with the CPU op bit for bit; they skip without a GPU."""
import contextlib
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import saliency_fast as sf
from saliency_fast import _reference, ops
from saliency_fast.methods.samp import _HostCounts

from .test_samp_step import call, clone, random_state

pytestmark = pytest.mark.skipif(not sf.native_available(), reason="the extension is not built")

CUDA = torch.cuda.is_available() and sf.native_available("cuda")
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
requires_cuda_build = pytest.mark.skipif(not CUDA, reason="needs a GPU and the CUDA build")
samp_op = torch.ops.saliency_fast.samp_step


def assert_identical(actual, expected, name=""):
    """Bit for bit, NaN equal to NaN."""
    torch.testing.assert_close(actual.cpu(), expected.cpu(), rtol=0, atol=0, equal_nan=True, msg=name)


# --- samp_step ---------------------------------------------------------------------------------

def fixed_order_l1(point, end, chosen):
    """samp_step.h's order, one float operation at a time: lane t adds the chosen pixels
    p ≡ t (mod 512) in increasing p, channels in order; then lanes fold pairwise, halving."""
    channels, pixels = point.shape[0], point[0].numel()
    flat_point, flat_end = point.reshape(channels, pixels), end.reshape(channels, pixels)
    lanes = [torch.zeros((), dtype=point.dtype) for _ in range(512)]
    for p in chosen.flatten().nonzero().flatten().tolist():
        for c in range(channels):
            lanes[p % 512] = lanes[p % 512] + (flat_end[c, p] - flat_point[c, p]).abs()
    half = 256
    while half:
        for t in range(half):
            lanes[t] = lanes[t] + lanes[t + half]
        half //= 2
    return lanes[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ic_scale_uses_the_fixed_summation_order(dtype):
    """The CPU op's IC scale is bound / (the L1 sum in the documented order), bit for bit: the
    order the CUDA kernel uses, so the two agree exactly (a different order differs in float32)."""
    generator = torch.Generator().manual_seed(11)
    state = random_state(1, 3, 40, 40, dtype=dtype, n_frag=7, generator=generator)
    state["point"] = state["point"] * torch.logspace(-6, 6, 40, dtype=dtype).view(1, 1, 1, 40)  # wide range
    state["active"] = _reference.pixels_active(state["point"], state["end"])
    state["active_count"] = state["active"].flatten(1).sum(1)
    before = clone(state)
    call(samp_op, state, torch.arange(1), k=1200, momentum=1.0, insertion=False, exact_ties=False)
    moved = before["active"] & (state["point"] != before["point"]).any(1)
    scale = before["bound"][0] / fixed_order_l1(before["point"][0], before["end"][0], moved[0])
    assert 0 < float(scale) < 1  # IC acted
    proj = (before["grad"] * (before["end"] - before["point"])).sum(1)
    want = before["attribution"] + torch.where(moved, scale * proj, torch.zeros_like(proj))
    assert_identical(state["attribution"], want, "attribution")


@given(
    batch=st.integers(1, 3), channels=st.integers(1, 3), height=st.integers(1, 9), width=st.integers(1, 9),
    k=st.integers(1, 40), insertion=st.booleans(), tolerance=st.sampled_from([1e-6, 0.05, 0.5, 3.0]),
    n_frag=st.sampled_from([None, 3]), tie_heavy=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_tie_tolerance_native_matches_reference(batch, channels, height, width, k, insertion, tolerance, n_frag,
                                                tie_heavy, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    state = random_state(batch, channels, height, width, dtype=dtype, tie_heavy=tie_heavy, n_frag=n_frag,
                         generator=generator)
    expected, actual = clone(state), clone(state)
    options = dict(k=k, momentum=0.5, insertion=insertion, exact_ties=False, atol=1e-8, rtol=1e-5,
                   tie_tolerance=tolerance)
    rows = torch.arange(batch)
    call(_reference.samp_step, expected, rows, **options)
    call(samp_op, actual, rows, **options)
    for name in ("active", "active_count", "step_count"):  # the chosen set: exactly
        assert torch.equal(actual[name], expected[name]), name
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for name in ("point", "attribution", "grad_avg"):
        torch.testing.assert_close(actual[name], expected[name], rtol=tol, atol=tol, msg=name)


def test_tie_tolerance_widens_the_chosen_set():
    proj_gap = torch.tensor([0.0, 1e-7, 5e-7, 2e-6, 1.0, 3.0], dtype=torch.float64)
    point = torch.zeros(1, 1, 1, 6, dtype=torch.float64)
    end = torch.ones_like(point)
    state = dict(point=point, end=end, grad=proj_gap.view(1, 1, 1, 6).clone(), grad_avg=torch.zeros_like(point),
                 attribution=torch.zeros(1, 1, 6, dtype=torch.float64), active=torch.ones(1, 1, 6, dtype=torch.bool),
                 active_count=torch.tensor([6]), step_count=torch.zeros(1, dtype=torch.long),
                 bound=torch.tensor([math.inf], dtype=torch.float64))
    moved = []
    for tolerance in (0.0, 1e-6, 2.5e-6):
        s = clone(state)
        call(samp_op, s, torch.arange(1), k=1, momentum=1.0, insertion=False, exact_ties=False,
             tie_tolerance=tolerance)
        moved.append((~s["active"]).flatten().nonzero().flatten().tolist())
    assert moved == [[0], [0, 1, 2], [0, 1, 2, 3]]


@pytest.mark.parametrize("fn", [samp_op, ops.samp_step])
def test_tie_tolerance_bad_values(fn):
    state = random_state(1, 1, 3, 3)
    for tolerance, match in ((-1.0, "tie_tolerance must be"), (math.inf, "tie_tolerance must be"),
                             (1e-6, "exact_ties")):
        with pytest.raises((RuntimeError, ValueError), match=match):
            call(fn, clone(state), torch.arange(1), k=1, momentum=1.0, insertion=False,
                 exact_ties=tolerance == 1e-6, tie_tolerance=tolerance)


@requires_cuda_build
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("exact, tolerance", [(False, 0.0), (True, 0.0), (False, 1e-6), (False, 0.3)])
@pytest.mark.parametrize("shape, k", [((3, 3, 7, 5), 4), ((2, 1, 224, 224), 3584), ((4, 3, 33, 31), 1000),
                                      ((2, 3, 40, 40), 1)])
def test_samp_step_cuda_is_bit_identical_to_cpu(dtype, exact, tolerance, shape, k):
    for tie_heavy in (False, True):
        for n_frag in (None, 50):
            state = random_state(*shape, dtype=dtype, tie_heavy=tie_heavy, n_frag=n_frag)
            rows = torch.arange(shape[0] - 1, -1, -1)
            options = dict(k=k, momentum=0.5, insertion=True, exact_ties=exact, tie_tolerance=tolerance)
            expected = clone(state)
            call(samp_op, expected, rows, **options)
            actual = {name: t.cuda() for name, t in state.items()}
            call(samp_op, actual, rows.cuda(), **options)
            for name in expected:
                assert_identical(actual[name], expected[name], name)


@requires_cuda_build
def test_samp_step_cuda_bad_rows_cannot_corrupt():
    """The CUDA op cannot raise without a sync: an image named by a repeated row is left
    untouched (no two blocks race on it), rows outside [0, B) are ignored, the rest step as on CPU."""
    state = random_state(4, 2, 6, 6, n_frag=5)
    cpu = clone(state)
    call(samp_op, cpu, torch.tensor([3]), k=4, momentum=1.0, insertion=False, exact_ties=False)
    gpu = {name: t.cuda() for name, t in state.items()}
    grad = torch.cat([state["grad"][:1], state["grad"][:1], state["grad"][:1], state["grad"][:1]])
    gpu["grad"] = grad.cuda()
    samp_op(gpu["point"], gpu["end"], gpu["grad"], gpu["grad_avg"], gpu["attribution"], gpu["active"],
            gpu["active_count"], gpu["step_count"], torch.tensor([1, 7, 1, 3], device="cuda"), gpu["bound"],
            4, 1.0, False, False, 1e-8, 1e-5, 0.0)
    for name in ("point", "attribution", "active", "active_count", "step_count", "grad_avg"):
        assert_identical(gpu[name][[0, 1, 2]], state[name][[0, 1, 2]], name)  # untouched
        assert_identical(gpu[name][3], cpu[name][3], name)  # stepped as on CPU
    assert int(gpu["step_count"][3]) == 1


# --- saliency_budget ---------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mass_at_rho_one_is_every_pixel(device, dtype):
    """Even where a cumulative sum in another order would exceed the total by rounding (about
    one random float image in eight before the fix dropped its largest pixel)."""
    generator = torch.Generator().manual_seed(5)
    s = torch.rand(64, 13, 11, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)
    s[0, 0, 0] = float("nan")  # every pixel, NaN included
    for fn in (torch.ops.saliency_fast.saliency_budget, _reference.saliency_budget):
        out = fn(s, "mass", 0.25, 1.0, 0.5, 1.0)
        assert_identical(out, torch.full_like(s, 0.25))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma", [1.0, 0.5, 1.7, 3.0])
def test_inverse_is_computed_in_double_and_rounded_once(device, dtype, gamma):
    """In float64 for every dtype: gamma = 1 bit-identical to the reference; otherwise pow may
    differ by a few ulp of float64 between libraries, so float32 agrees to 1 ulp."""
    generator = torch.Generator().manual_seed(6)
    s = (torch.rand(3, 37, 29, generator=generator, dtype=torch.float64) * 8).floor().to(dtype=dtype, device=device)
    got = torch.ops.saliency_fast.saliency_budget(s, "inverse", 8 / 255, 0.1, 0.5, gamma)
    want = _reference.saliency_budget(s.cpu(), "inverse", 8 / 255, 0.1, 0.5, gamma)
    if gamma == 1.0:
        assert_identical(got, want)
    else:
        ulp = torch.finfo(dtype).eps * (8 / 255)
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=(4 if dtype == torch.float64 else 1) * ulp)
    rank = torch.searchsorted(want.new_tensor(sorted(set(s.cpu()[0].flatten().tolist()))), s.cpu()[0])
    assert bool((want[0] > 0).all()) and rank.numel() == s[0].numel()


@requires_cuda_build
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["topk", "uniform", "mass"])
def test_budget_cuda_matches_cpu(dtype, mode):
    s = (torch.rand(6, 20, 17, dtype=torch.float64) ** 3).to(dtype)
    cpu = torch.ops.saliency_fast.saliency_budget(s, mode, 0.1, 0.3, 0.4, 1.0)
    gpu = torch.ops.saliency_fast.saliency_budget(s.cuda(), mode, 0.1, 0.3, 0.4, 1.0)
    assert_identical(gpu, cpu)


# --- masked_random_fill, masked_perturb, perturbation_curve -------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fill_with_nan_and_signed_zeros_matches_the_reference(device, dtype):
    """NaN anywhere in an image (not only first) makes its fill NaN, as torch.min/max do; an
    image of ±0 fills with +0 whichever zero a reduction meets first."""
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(4, 2, 5, 5, generator=generator, dtype=torch.float64).to(dtype)
    x[1, 1, 3, 2] = float("nan")  # in the middle
    x[2, 0, 0, 0] = float("nan")  # first
    x[3] = torch.where(torch.rand(2, 5, 5, generator=generator) < 0.5, -0.0, 0.0)
    mask = torch.rand(4, 5, 5, generator=generator) < 0.5
    noise = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(dtype)
    noise[3] = 0.0
    args = tuple(t.to(device) for t in (x, mask, noise))
    got = torch.ops.saliency_fast.masked_random_fill(*args)
    want = _reference.masked_random_fill(x, mask, noise)
    assert_identical(got, want)
    filled = mask.unsqueeze(1).expand_as(x)
    assert bool(got[1][filled[1]].isnan().all()) and bool(got[2][filled[2]].isnan().all())
    assert not bool(torch.signbit(got[3][filled[3]]).any())
    assert bool((got[0][filled[0]] == want[0][filled[0]]).all())


@requires_cuda_build
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_perturb_fill_and_curve_cuda_are_bit_identical_to_cpu(dtype):
    generator = torch.Generator().manual_seed(9)
    x = torch.rand(5, 3, 19, 23, generator=generator, dtype=torch.float64).to(dtype)
    delta = (torch.rand(x.shape, generator=generator, dtype=torch.float64) * 0.1).to(dtype)
    grad = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(dtype)
    budget = (torch.rand(5, 19, 23, generator=generator, dtype=torch.float64) * 0.1).to(dtype)
    cpu_delta = delta.clone()
    torch.ops.saliency_fast.masked_perturb(x, cpu_delta, grad, budget, 0.013, 0.07, 0.0, 1.0)
    gpu_delta = delta.cuda()
    torch.ops.saliency_fast.masked_perturb(x.cuda(), gpu_delta, grad.cuda(), budget.cuda(), 0.013, 0.07, 0.0, 1.0)
    assert_identical(gpu_delta, cpu_delta, "masked_perturb")
    mask = torch.rand(5, 19, 23, generator=generator) < 0.5
    noise = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(dtype)
    assert_identical(torch.ops.saliency_fast.masked_random_fill(x.cuda(), mask.cuda(), noise.cuda()),
                     torch.ops.saliency_fast.masked_random_fill(x, mask, noise), "masked_random_fill")
    ranks = torch.randperm(19 * 23, generator=generator).view(1, 19, 23).repeat(5, 1, 1)
    counts = torch.tensor([0, 7, 100, 437, 1000])
    assert_identical(torch.ops.saliency_fast.perturbation_curve(x.cuda(), delta.cuda(), ranks.cuda(), counts.cuda()),
                     torch.ops.saliency_fast.perturbation_curve(x, delta, ranks, counts), "perturbation_curve")


# --- every op: one argument on meta, the rest on CPU --------------------------------------------

def _op_calls():
    state = random_state(2, 1, 4, 4)
    samp_args = [state[n] for n in ("point", "end", "grad", "grad_avg", "attribution", "active", "active_count",
                                    "step_count")] + [torch.arange(2), state["bound"]]
    samp_names = ["point", "end", "grad", "grad_avg", "attribution", "active", "active_count", "step_count",
                  "rows", "bound"]
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    budget = torch.rand(2, 4, 4, dtype=torch.float64)
    mask = torch.rand(2, 4, 4) < 0.5
    ranks = torch.randperm(16).view(1, 4, 4).repeat(2, 1, 1)
    return [
        ("samp_step", samp_names, samp_args, (3, 1.0, False, False, 1e-8, 1e-5, 0.0)),
        ("perturbation_curve", ["start", "finish", "ranks", "counts"], [x, x.clone(), ranks, torch.tensor([0, 5])], ()),
        ("masked_perturb", ["x", "delta", "grad", "budget"], [x, torch.zeros_like(x), torch.randn_like(x), budget],
         (0.01, 0.1, 0.0, 1.0)),
        ("masked_random_fill", ["x", "mask", "noise"], [x, mask, torch.rand_like(x)], ()),
    ]


@pytest.mark.parametrize("op, names, tensors, scalars", _op_calls(), ids=[c[0] for c in _op_calls()])
def test_mixed_meta_and_cpu_arguments_raise_naming_the_argument(op, names, tensors, scalars):
    fn = getattr(torch.ops.saliency_fast, op)
    for i, name in enumerate(names):
        args = list(tensors)
        args[i] = args[i].to("meta")
        other = names[0] if i else names[1]
        with pytest.raises((ValueError, RuntimeError), match=rf"({name} is on meta|{other} is on cpu)"):
            fn(*args, *scalars)
    fn(*[t.to("meta") for t in tensors], *scalars)  # all on meta: the fake answers, no error


def test_saliency_budget_on_meta_is_shape_only():
    out = torch.ops.saliency_fast.saliency_budget(torch.empty(2, 4, 4, device="meta"), "mass", 0.1, 0.1, 0.5, 1.0)
    assert out.device.type == "meta" and out.shape == (2, 4, 4)


# --- _HostCounts: the stream and device of the copy ---------------------------------------------

class _OnCuda1(torch.Tensor):
    """A CPU tensor that reports cuda:1 (the copy itself then runs on the CPU)."""

    @property
    def device(self):
        return torch.device("cuda", 1)


class _RecordingCuda:
    """torch.cuda's calls as _HostCounts makes them, with the device that is current at each."""

    def __init__(self):
        self.current = 0  # the current device, as torch.cuda would have it
        self.log = []

    @contextlib.contextmanager
    def device(self, device):
        previous, self.current = self.current, torch.device(device).index
        try:
            yield
        finally:
            self.current = previous

    def current_stream(self, device=None):
        index = self.current if device is None else torch.device(device).index
        self.log.append(("stream", index, self.current))
        return f"stream of cuda:{index}"

    def Event(self):
        recorder = self

        class Event:
            def record(self, stream=None):
                recorder.log.append(("record", stream or f"stream of cuda:{recorder.current}", recorder.current))

            def synchronize(self):
                pass

        self.log.append(("event", None, self.current))
        return Event()

    def pinned_like(self, tensor):
        self.log.append(("pin", None, self.current))
        return torch.empty(tensor.shape, dtype=tensor.dtype)


def test_host_counts_wait_on_the_stream_of_counts_device():
    """With the counts on cuda:1 and cuda:0 current, every event is recorded on cuda:1's stream
    (where the non-blocking copy runs) and nothing runs with cuda:0 current."""
    cuda = _RecordingCuda()
    count = torch.tensor([3, 0, 2]).as_subclass(_OnCuda1)
    counts = _HostCounts(count, cuda=cuda)
    counts.snapshot()
    records = [entry for entry in cuda.log if entry[0] == "record"]
    assert len(records) == 3 and all(stream == "stream of cuda:1" for _, stream, _ in records)
    assert {current for _, _, current in cuda.log} == {1}  # pinning, events, streams: under cuda:1
    assert counts.live().tolist() == [0, 2]
    assert cuda.current == 0  # the guard restored it


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_samp_on_a_non_current_gpu_equals_cpu():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 8 * 8, 5)).double()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    cpu = sf.SAMP.plus(model, pixels_per_step=5).attribute_paths(x)
    with torch.cuda.device(0):
        gpu = sf.SAMP.plus(model.to("cuda:1"), pixels_per_step=5).attribute_paths(x.to("cuda:1"))
        assert torch.cuda.current_device() == 0
    # the model's own kernels differ between CPU and GPU, so the maps agree to rounding
    torch.testing.assert_close(gpu.raw.cpu(), cpu.raw, rtol=1e-9, atol=1e-9)
    assert torch.equal(gpu.paths["deletion"].steps.cpu(), cpu.paths["deletion"].steps)
