"""The native samp_step op against its pure-PyTorch twin (float64, random states), opcheck,
and bad inputs."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import saliency_fast as sf
from saliency_fast import _reference, ops

from .conftest import requires_cuda

native = pytest.mark.skipif(not sf.native_available(), reason="extension not built")


def random_state(batch, channels, height, width, dtype=torch.float64, tie_heavy=False, n_frag=None,
                 generator=None, device="cpu"):
    """A mid-path state: some pixels already at their end values, some grads exactly tied."""
    g = generator
    shape = (batch, channels, height, width)
    point = torch.randn(shape, generator=g, dtype=dtype)
    end = torch.randn(shape, generator=g, dtype=dtype)
    done = torch.rand(batch, 1, height, width, generator=g) < 0.3
    point = torch.where(done, end, point)
    if tie_heavy:  # small integers: exact sums, many equal projections (and −0 vs +0)
        point = torch.randint(-2, 3, shape, generator=g).to(dtype)
        end = torch.where(done, point, torch.randint(-2, 3, shape, generator=g).to(dtype))
        grad = torch.randint(-1, 2, shape, generator=g).to(dtype)
    else:
        grad = torch.randn(shape, generator=g, dtype=dtype)
    grad_avg = torch.randn(shape, generator=g, dtype=dtype)
    active = _reference.pixels_active(point, end)
    count = active.flatten(1).sum(1)
    distance = (point - end).abs().flatten(1).sum(1)
    bound = distance / n_frag if n_frag else torch.full_like(distance, math.inf)
    state = dict(point=point, end=end, grad=grad, grad_avg=grad_avg,
                 attribution=torch.randn(batch, height, width, generator=g, dtype=dtype), active=active,
                 active_count=count, step_count=torch.zeros(batch, dtype=torch.long), bound=bound)
    return {name: t.to(device) for name, t in state.items()}


def call(fn, state, rows, **options):
    fn(state["point"], state["end"], state["grad"][: len(rows)], state["grad_avg"], state["attribution"],
       state["active"], state["active_count"], state["step_count"], rows, state["bound"], **options)


def clone(state):
    return {name: t.clone() for name, t in state.items()}


def assert_states_equal(actual, expected, rtol=1e-12, atol=1e-12):
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=rtol, atol=atol, msg=name)


def assert_native_matches_reference(state, rows, tolerance=1e-12, **options):
    """One step of the native op and of the reference from copies of ``state``; the states after
    must agree. Returns the native op's state."""
    expected, actual = clone(state), clone(state)
    call(_reference.samp_step, expected, rows, **options)
    call(torch.ops.saliency_fast.samp_step, actual, rows, **options)
    assert_states_equal(actual, expected, rtol=tolerance, atol=tolerance)
    return actual


@native
@given(
    batch=st.integers(1, 4), channels=st.integers(1, 3), height=st.integers(1, 9), width=st.integers(1, 9),
    k=st.integers(1, 90), insertion=st.booleans(), exact=st.booleans(), tie_heavy=st.booleans(),
    momentum=st.sampled_from([1.0, 0.5, 0.25]), n_frag=st.sampled_from([None, 1, 3, 50]),
    subset=st.booleans(), seed=st.integers(0, 2**31 - 1),
)
def test_native_matches_reference_float64(batch, channels, height, width, k, insertion, exact, tie_heavy,
                                          momentum, n_frag, subset, seed):
    g = torch.Generator().manual_seed(seed)
    state = random_state(batch, channels, height, width, tie_heavy=tie_heavy, n_frag=n_frag, generator=g)
    rows = torch.randperm(batch, generator=g)[: max(1, batch - 1)] if subset else torch.arange(batch)
    assert_native_matches_reference(state, rows, k=k, momentum=momentum, insertion=insertion, exact_ties=exact)


@native
def test_native_matches_reference_float32_large_image():
    state = random_state(3, 3, 64, 48, dtype=torch.float32, n_frag=50)
    rows = torch.arange(3)
    assert_native_matches_reference(state, rows, tolerance=1e-5, k=300, momentum=0.5, insertion=True,
                                    exact_ties=False)


@native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("insertion", [False, True])
@pytest.mark.parametrize("k", [1, 700, 5000, 9216])
def test_native_matches_reference_on_concentrated_keys(dtype, exact, insertion, k):
    """Projections packed into [1, 1.002) with heavy ties: every key shares its top bits, so the
    CPU radix select must narrow the one crowded bucket digit by digit."""
    g = torch.Generator().manual_seed(k)
    state = random_state(2, 1, 96, 96, dtype=dtype, generator=g)
    state["point"].zero_()
    state["end"].copy_(1 + torch.randint(0, 2048, state["end"].shape, generator=g).to(dtype) * 2.0**-20)
    state["grad"].fill_(1.0)
    state["active"].fill_(True)
    state["active_count"].fill_(96 * 96)
    rows = torch.arange(2)
    actual = assert_native_matches_reference(state, rows, k=k, momentum=1.0, insertion=insertion, exact_ties=exact)
    moved = (actual["point"] != 0).flatten(1).sum(1)
    assert (moved == k).all() if exact else (moved >= k).all()


@native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("tie_heavy", [False, True])
@pytest.mark.parametrize("k", [1, 10, 16, 17, 33])
@pytest.mark.parametrize("side", [(32, 32), (31, 33)])
def test_native_matches_reference_with_small_k(dtype, exact, tie_heavy, k, side):
    """k at most 1/64 of the pixels (SAMP's default 10 of 1024): the CPU op's block filter (k = 17
    and 33 cross over to the radix select), on images with some pixels already inactive, whose
    pixels fill whole blocks of 16 or not (31×33), and with tie_heavy many equal keys."""
    g = torch.Generator().manual_seed(k)
    state = random_state(6, 2, *side, dtype=dtype, tie_heavy=tie_heavy, n_frag=50, generator=g)
    rows = torch.tensor([4, 0, 2, 5])
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5  # float32: the IC sum's rounding order
    for insertion in (False, True):
        assert_native_matches_reference(state, rows, tolerance, k=k, momentum=0.5, insertion=insertion,
                                        exact_ties=exact)


def deletion_state(grad):
    """A 32×32 deletion state with every pixel at 1, moving to 0, so that key = −grad."""
    batch = grad.shape[0]
    state = random_state(batch, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    state["point"].fill_(1.0)
    state["end"].zero_()
    state["active"].fill_(True)
    state["active_count"].fill_(32 * 32)
    state["grad"] = grad.reshape(batch, 1, 32, 32)
    return state


@native
@pytest.mark.parametrize("exact", [False, True])
def test_native_matches_reference_when_the_smallest_keys_cluster(exact):
    """The 10 smallest keys all lie in one block of 16 pixels: a single block holds them all."""
    grad = torch.rand(2, 32 * 32, dtype=torch.float64)
    grad[:, 160:176] += 10.0
    state = deletion_state(grad)
    actual = assert_native_matches_reference(state, torch.arange(2), k=10, momentum=1.0, insertion=False,
                                             exact_ties=exact)
    moved = (actual["point"] != 1.0).flatten(1)
    assert (moved.sum(1) == 10).all() and (moved[:, 160:176].sum(1) == 10).all()


@native
@pytest.mark.parametrize("exact", [False, True])
def test_native_matches_reference_when_fewer_than_k_blocks_are_active(exact):
    """12 active pixels in two blocks (11 in the first, 1 in the third) and k = 10: fewer than k
    block minima are active keys, so every active key is a candidate."""
    state = deletion_state(torch.rand(2, 32 * 32, dtype=torch.float64))
    state["point"].view(2, -1)[:, 11:] = 0.0  # at the end value: inactive
    state["point"].view(2, -1)[:, 40] = 1.0
    state["active"] = _reference.pixels_active(state["point"], state["end"])
    state["active_count"] = state["active"].flatten(1).sum(1)
    assert state["active_count"].tolist() == [12, 12]
    actual = assert_native_matches_reference(state, torch.arange(2), k=10, momentum=1.0, insertion=False,
                                             exact_ties=exact)
    assert ((state["point"] != actual["point"]).flatten(1).sum(1) == 10).all()


@native
@pytest.mark.parametrize("exact", [False, True])
def test_native_matches_reference_when_ties_admit_most_blocks(exact):
    """6 keys below the rest, which all tie: the 10th smallest block minimum is the tie, every block
    holds it, and the block filter gives way to the radix select."""
    grad = torch.ones(2, 32 * 32, dtype=torch.float64)
    grad[:, ::200] = 2.0  # keys −2 at 6 pixels; the other 1018 tie at −1
    state = deletion_state(grad)
    actual = assert_native_matches_reference(state, torch.arange(2), k=10, momentum=1.0, insertion=False,
                                             exact_ties=exact)
    moved = (actual["point"] != 1.0).flatten(1).sum(1)
    assert (moved == 10).all() if exact else (moved == 32 * 32).all()


@pytest.mark.parametrize("fn", [_reference.samp_step, ops.samp_step])
@pytest.mark.parametrize("exact", [False, True])
def test_moves_k_pixels_under_each_tie_policy(fn, exact):
    state = random_state(2, 1, 6, 6, tie_heavy=True)
    state["grad"].zero_()  # every projection ties at 0
    before = state["active"].clone()
    call(fn, state, torch.arange(2), k=3, momentum=1.0, insertion=False, exact_ties=exact)
    moved = (before & ~state["active"]).flatten(1).sum(1)
    expected_moves = torch.clamp(before.flatten(1).sum(1), max=3)
    if exact:
        assert torch.equal(moved, expected_moves)
        # lower flat index first: the moved pixels are the first active ones
        for b in range(2):
            first = before[b].flatten().nonzero().flatten()[:3]
            assert torch.equal((before[b] & ~state["active"][b]).flatten().nonzero().flatten(), first)
    else:
        assert torch.equal(moved, before.flatten(1).sum(1))  # all tie, all move


def test_inactive_images_are_untouched_and_not_counted():
    state = random_state(3, 2, 5, 5)
    state["point"][1] = state["end"][1]
    state["active"][1] = False
    state["active_count"][1] = 0
    before = clone(state)
    ops.samp_step(state["point"], state["end"], state["grad"], state["grad_avg"], state["attribution"],
                  state["active"], state["active_count"], state["step_count"], torch.arange(3), state["bound"], 4)
    assert torch.equal(state["point"][1], before["point"][1])
    assert torch.equal(state["attribution"][1], before["attribution"][1])
    assert state["step_count"].tolist() == [1, 0, 1]


@native
@pytest.mark.parametrize("exact", [False, True])
def test_opcheck(exact):
    state = random_state(2, 3, 5, 4, n_frag=3)
    args = (state["point"], state["end"], state["grad"], state["grad_avg"], state["attribution"],
            state["active"], state["active_count"], state["step_count"], torch.arange(2), state["bound"],
            3, 0.5, True, exact, 1e-8, 1e-5)
    torch.library.opcheck(torch.ops.saliency_fast.samp_step.default, args)


@native
def test_compiles_under_torch_compile():
    state = random_state(2, 1, 4, 4)
    expected = clone(state)
    call(_reference.samp_step, expected, torch.arange(2), k=2, momentum=1.0, insertion=False, exact_ties=False)

    @torch.compile(backend="aot_eager", fullgraph=True)
    def step(point, end, grad, grad_avg, attribution, active, count, steps, rows, bound):
        torch.ops.saliency_fast.samp_step(point, end, grad, grad_avg, attribution, active, count, steps, rows,
                                          bound, 2, 1.0, False, False, 1e-8, 1e-5)
        return point * 1

    step(*(state[name] for name in ("point", "end", "grad", "grad_avg", "attribution", "active",
                                    "active_count", "step_count")), torch.arange(2), state["bound"])
    assert_states_equal(state, expected)


@native
@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda s: s.update(end=s["end"][:, :, :-1]), "end"),
        (lambda s: s.update(grad=s["grad"].float()), "grad"),
        (lambda s: s.update(active=s["active"].double()), "active"),
        (lambda s: s.update(bound=s["bound"][:1]), "bound"),
        (lambda s: s.update(point=s["point"].transpose(2, 3)), "point"),
        (lambda s: s.update(step_count=s["step_count"].int()), "step_count"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(mutate, match):
    state = random_state(2, 1, 4, 4)
    mutate(state)
    with pytest.raises(RuntimeError, match=match):
        call(torch.ops.saliency_fast.samp_step, state, torch.arange(2), k=2, momentum=1.0, insertion=False,
             exact_ties=False)


@native
def test_bad_rows_and_k():
    state = random_state(2, 1, 4, 4)
    with pytest.raises(RuntimeError, match="rows"):
        call(torch.ops.saliency_fast.samp_step, state, torch.tensor([0, 5]), k=2, momentum=1.0, insertion=False,
             exact_ties=False)
    with pytest.raises(RuntimeError, match="rows must be distinct"):
        call(torch.ops.saliency_fast.samp_step, state, torch.tensor([1, 1]), k=2, momentum=1.0, insertion=False,
             exact_ties=False)
    with pytest.raises(RuntimeError, match="k"):
        call(torch.ops.saliency_fast.samp_step, state, torch.arange(2), k=0, momentum=1.0, insertion=False,
             exact_ties=False)


@requires_cuda
@pytest.mark.skipif(not sf.native_available("cuda"), reason="extension built without CUDA")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("shape, k", [((3, 3, 7, 5), 4), ((2, 1, 224, 224), 3584), ((4, 3, 33, 31), 1000)])
def test_cuda_matches_cpu(dtype, exact, shape, k):
    for tie_heavy in (False, True):
        state = random_state(*shape, dtype=dtype, tie_heavy=tie_heavy, n_frag=50)
        rows = torch.arange(shape[0] - 1, -1, -1)
        expected = clone(state)
        call(torch.ops.saliency_fast.samp_step, expected, rows, k=k, momentum=0.5, insertion=True, exact_ties=exact)
        actual = {name: t.cuda() for name, t in state.items()}
        call(torch.ops.saliency_fast.samp_step, actual, rows.cuda(), k=k, momentum=0.5, insertion=True,
             exact_ties=exact)
        # bit-identical (README, "CPU/CUDA parity")
        assert_states_equal({n: t.cpu() for n, t in actual.items()}, expected, rtol=0, atol=0)


@requires_cuda
@pytest.mark.skipif(not sf.native_available("cuda"), reason="extension built without CUDA")
def test_cuda_opcheck_and_samp_end_to_end():
    state = {n: t.cuda() for n, t in random_state(2, 3, 5, 4, n_frag=3).items()}
    args = (state["point"], state["end"], state["grad"], state["grad_avg"], state["attribution"],
            state["active"], state["active_count"], state["step_count"], torch.arange(2, device="cuda"),
            state["bound"], 3, 0.5, True, True, 1e-8, 1e-5)
    torch.library.opcheck(torch.ops.saliency_fast.samp_step.default, args)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 8 * 8, 5)).double()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    cpu = sf.SAMP.plus(model, pixels_per_step=5).attribute_paths(x)
    gpu = sf.SAMP.plus(model.cuda(), pixels_per_step=5).attribute_paths(x.cuda())
    torch.testing.assert_close(gpu.raw.cpu(), cpu.raw, rtol=1e-9, atol=1e-9)
