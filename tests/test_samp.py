"""SAMP / SAMP++ end to end: the axioms samp.md lists, agreement with a literal transcription
of the spec, parameter handling and bad input."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import saliency_fast as sf
from saliency_fast import ops
from saliency_fast.methods.samp import _PathState
from saliency_fast.references import gaussian_kernel_2d, make_reference

from .samp_transcription import samp_path


def linear_model(channels=2, size=6, classes=3):
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, classes)).double()


def smooth_cnn(channels=2, classes=4):
    """Non-linear but smooth (tanh), so path integrals converge as IC refines them."""
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, classes)
    ).double()


def relu_cnn(channels=1, classes=4):
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, classes)
    ).double()


def run_path_steps(model, x, end, target, k, n_frag=None, insertion=False):
    """Drive the samp_step op by hand and record every step's point, to check the step-level axioms."""
    state = _PathState(x, end, n_frag, k, insertion, exact_ties=False)
    rows = torch.arange(x.shape[0])
    points = [state.point.clone()]
    while bool(state.active.any()):
        grad, _ = sf._common.input_gradient(model, state.point, target)
        state.step(grad, rows, 1.0)
        points.append(state.point.clone())
    return state, points


@pytest.mark.parametrize("n_frag", [None, 7])
@pytest.mark.parametrize("momentum", [None, 0.5])
def test_completeness_is_exact_for_a_linear_model(n_frag, momentum):
    model = linear_model()
    x = torch.rand(3, 2, 6, 6, dtype=torch.float64)
    result = sf.SAMP(model, pixels_per_step=5, n_frag=n_frag, momentum=momentum).attribute_paths(x)
    for path in result.paths.values():
        expected = path.input_score - path.reference_score
        torch.testing.assert_close(path.attribution.flatten(1).sum(1), expected, rtol=1e-10, atol=1e-12)


def test_completeness_error_falls_as_n_frag_grows():
    model = smooth_cnn()
    x = torch.rand(4, 2, 8, 8, dtype=torch.float64)
    errors = []
    for n_frag in (2, 20, 200):
        result = sf.SAMP(model, pixels_per_step=64, n_frag=n_frag, paths=("deletion",)).attribute_paths(x)
        errors.append(float(result.paths["deletion"].completeness_error.mean()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.2 * errors[0]


@pytest.mark.parametrize("n_frag", [None, 5])
@pytest.mark.parametrize("insertion", [False, True])
def test_every_pixel_reaches_its_end_value_and_ic_bound_holds(n_frag, insertion):
    model = relu_cnn()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    reference = make_reference("blur", x, "reference")
    start, end = (reference, x) if insertion else (x, reference)
    target = model(x).argmax(1)
    state, points = run_path_steps(model, start, end, target, k=6, n_frag=n_frag, insertion=insertion)
    assert torch.equal(state.point, end)
    assert int(state.active_count.sum()) == 0
    assert int(state.step_count.max()) == len(points) - 1
    bound = (start - end).abs().flatten(1).sum(1) / n_frag if n_frag else None
    for before, after in zip(points, points[1:]):
        moved = (after - before).abs().flatten(1).sum(1)
        if bound is not None:
            assert bool((moved <= bound * (1 + 1e-12)).all())


def test_without_ic_every_pixel_moves_exactly_once():
    model = relu_cnn()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    end = torch.zeros_like(x)
    _, points = run_path_steps(model, x, end, model(x).argmax(1), k=5)
    moves = torch.zeros(2, 8, 8, dtype=torch.long)
    for before, after in zip(points, points[1:]):
        moves += (after != before).any(1).long()
    assert bool((moves == 1).all())


@pytest.mark.parametrize(
    "options",
    [
        dict(pixels_per_step=7),
        dict(pixels_per_step=7, ties="exact"),
        dict(pixels_per_step=9, n_frag=6),
        dict(pixels_per_step=9, n_frag=6, momentum=0.5),
        dict(pixels_per_step=4, momentum=0.3, ties="exact"),
    ],
)
@pytest.mark.parametrize("model_fn", [relu_cnn, smooth_cnn])
def test_matches_a_literal_transcription_of_the_spec(options, model_fn):
    channels = 1 if model_fn is relu_cnn else 2
    model = model_fn(channels=channels)
    x = torch.rand(3, channels, 8, 8, dtype=torch.float64)
    result = sf.SAMP(model, normalize=False, **options).attribute_paths(x)
    target = model(x).argmax(1)
    for name, path in result.paths.items():
        insertion = name == "insertion"
        for b in range(3):
            start, end = (path.reference[b], x[b]) if insertion else (x[b], path.reference[b])
            expected, steps = samp_path(
                model, start, end, int(target[b]), options["pixels_per_step"], options.get("n_frag"),
                options.get("momentum"), insertion, options.get("ties", "include"),
            )
            torch.testing.assert_close(path.attribution[b], expected, rtol=1e-9, atol=1e-12)
            assert int(path.steps[b]) == steps
        assert path.model_calls == int(path.steps.max())
    torch.testing.assert_close(result.raw, result.paths["deletion"].attribution + result.paths["insertion"].attribution)


@pytest.mark.parametrize("n_frag, momentum", [(None, None), (6, 0.5)])
def test_tie_tolerance_matches_a_transcription_of_the_published_rule(n_frag, momentum):
    """tie_tolerance=1e-6 (the published benchmark code) on a model whose projections are small
    enough that the margin moves extra pixels: equal to the transcription, step for step."""
    torch.manual_seed(3)
    model = relu_cnn()
    with torch.no_grad():
        model[-1].weight.mul_(2e-5)  # projections of order 1e-6: the margin matters
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    options = dict(pixels_per_step=3, n_frag=n_frag, momentum=momentum, normalize=False)
    tolerant = sf.SAMP(model, tie_tolerance=1e-6, **options).attribute_paths(x)
    plain = sf.SAMP(model, **options).attribute_paths(x)
    target = model(x).argmax(1)
    for name, path in tolerant.paths.items():
        insertion = name == "insertion"
        for b in range(3):
            start, end = (path.reference[b], x[b]) if insertion else (x[b], path.reference[b])
            expected, steps = samp_path(model, start, end, int(target[b]), 3, n_frag, momentum, insertion,
                                        tie_tolerance=1e-6)
            torch.testing.assert_close(path.attribution[b], expected, rtol=1e-9, atol=1e-15)
            assert int(path.steps[b]) == steps
    fewer = sum(int(tolerant.paths[n].steps.sum()) for n in tolerant.paths)
    assert fewer < sum(int(plain.paths[n].steps.sum()) for n in plain.paths)  # the margin did act


def test_tie_tolerance_options():
    model = relu_cnn()
    assert sf.SAMP(model).tie_tolerance == 0.0
    assert sf.SAMP.plus(model, tie_tolerance=1e-6).tie_tolerance == 1e-6
    for bad in (-1e-6, math.inf, math.nan, "1e-6", True):
        with pytest.raises(ValueError, match="tie_tolerance"):
            sf.SAMP(model, tie_tolerance=bad)
    with pytest.raises(ValueError, match="ties='exact'"):
        sf.SAMP(model, tie_tolerance=1e-6, ties="exact")


def test_native_and_reference_ops_give_the_same_maps(monkeypatch):
    model = relu_cnn()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    native = sf.SAMP.plus(model, pixels_per_step=5).attribute_paths(x)
    monkeypatch.setattr(ops, "use_native", lambda tensor: False)
    reference = sf.SAMP.plus(model, pixels_per_step=5).attribute_paths(x)
    torch.testing.assert_close(native.raw, reference.raw, rtol=1e-10, atol=1e-12)


def test_exact_ties_moves_exactly_k_and_include_at_least_k():
    model = relu_cnn()  # ReLU + max-pool: many exactly-zero gradients, hence ties
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    exact = sf.SAMP(model, pixels_per_step=5, ties="exact").attribute_paths(x)
    include = sf.SAMP(model, pixels_per_step=5).attribute_paths(x)
    for name in ("deletion", "insertion"):
        assert exact.paths[name].steps.tolist() == [math.ceil(64 / 5)] * 2
        assert bool((include.paths[name].steps <= math.ceil(64 / 5)).all())


def test_normalisation_and_reduction():
    model = relu_cnn()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    result = sf.SAMP(model, pixels_per_step=6).attribute_paths(x)
    maps = result.attribution.flatten(1)
    assert torch.allclose(maps.min(1).values, torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(maps.max(1).values, torch.ones(3, dtype=torch.float64))
    norm = sf.SAMP(model, pixels_per_step=6, reduction="norm", normalize=False).attribute_paths(x)
    expected = sum(sf._common.minmax_normalize(p.attribution) for p in norm.paths.values())
    torch.testing.assert_close(norm.attribution, expected)
    one_path = sf.SAMP(model, pixels_per_step=6, paths="insertion", normalize=False).attribute_paths(x)
    torch.testing.assert_close(one_path.attribution, result.paths["insertion"].attribution)


def test_samp_plus_defaults_and_overrides():
    model = relu_cnn()
    plus = sf.SAMP.plus(model)
    assert (plus.n_frag, plus.momentum) == (50, 0.5)
    assert sf.SAMP.plus(model, n_frag=10).n_frag == 10
    assert sf.SAMP(model).n_frag is None and sf.SAMP(model).momentum is None


def test_pixels_per_step_defaults_and_fractions():
    from saliency_fast.methods.samp import resolve_pixels_per_step

    assert resolve_pixels_per_step(None, 32, 32) == 10
    assert resolve_pixels_per_step(None, 224, 224) == 3584
    assert resolve_pixels_per_step(0.25, 8, 8) == 16


def test_score_options_and_user_references():
    model = relu_cnn()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    reference = torch.full((1, 1, 8, 8), 0.5, dtype=torch.float64)
    for score in ("probability", "log_probability"):
        result = sf.SAMP(model, pixels_per_step=8, score=score, deletion_reference=reference,
                         paths="deletion").attribute_paths(x)
        path = result.paths["deletion"]
        assert torch.equal(path.reference, reference.expand_as(x))
        assert bool(torch.isfinite(path.attribution).all())


def test_model_state_is_restored():
    model = relu_cnn()
    model.train()
    model[0].weight.requires_grad_(False)
    sf.SAMP(model, pixels_per_step=16).attribute(torch.rand(1, 1, 8, 8, dtype=torch.float64))
    assert model.training and all(m.training for m in model.modules())
    assert not model[0].weight.requires_grad and model[0].bias.requires_grad


def test_max_steps_exceeded_is_a_clear_error():
    model = relu_cnn()
    with pytest.raises(RuntimeError, match="max_steps=2"):
        sf.SAMP(model, pixels_per_step=1, max_steps=2).attribute(torch.rand(1, 1, 8, 8, dtype=torch.float64))


def test_blur_kernel_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    for klen, sigma in ((11, 5.0), (31, 5.0), (5, 1.3)):
        delta = np.zeros((klen, klen))
        delta[klen // 2, klen // 2] = 1
        expected = ndimage.gaussian_filter(delta, sigma)
        np.testing.assert_allclose(gaussian_kernel_2d(klen, sigma, torch.float64).numpy(), expected, atol=1e-15)


@pytest.mark.parametrize("klen", [1, 4, 11, 31])
def test_blur_equals_the_depthwise_conv_with_the_2d_kernel(klen):
    """gaussian_blur runs as two 1-D passes; the spec's blur is one depthwise conv2d with the
    klen×klen kernel and zero padding klen // 2 (top-left H×W for an even klen)."""
    images = torch.rand(3, 2, 40, 37, generator=torch.Generator().manual_seed(klen), dtype=torch.float64)
    kernel = gaussian_kernel_2d(klen, 5.0, torch.float64).expand(2, 1, klen, klen)
    expected = torch.nn.functional.conv2d(images, kernel, padding=klen // 2, groups=2)[..., :40, :37]
    torch.testing.assert_close(make_reference("blur", images, "reference", klen), expected, rtol=1e-12, atol=1e-12)


def test_float32_inputs_run_natively():
    model = relu_cnn().float()
    x = torch.rand(2, 1, 8, 8)
    maps = sf.SAMP.plus(model, pixels_per_step=6).attribute(x)
    assert maps.dtype == torch.float32 and maps.shape == (2, 8, 8)


class DtypeRecorder(nn.Module):
    """Wraps a model and records the dtype of every batch it is called with."""

    def __init__(self, model):
        super().__init__()
        self.model, self.dtypes = model, set()

    def forward(self, x):
        self.dtypes.add(x.dtype)
        return self.model(x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_keep_the_path_in_float32(dtype):
    """The model runs in the inputs' dtype; the path accumulates in float32, so completeness
    holds to float32 rounding against the path's own end points for a model linear in its input
    (its input gradient is exactly its weights, in any dtype)."""
    model = DtypeRecorder(linear_model().to(dtype))
    x = torch.rand(3, 2, 6, 6).to(dtype)
    result = sf.SAMP(model, pixels_per_step=5, n_frag=7, momentum=0.5).attribute_paths(x)
    assert model.dtypes == {dtype}
    assert result.attribution.dtype == torch.float32
    weights = model.model[1].weight.double()[result.target]
    for path in result.paths.values():
        assert path.reference.dtype == torch.float32
        expected = (weights * (x.double() - path.reference.double()).flatten(1)).sum(1)
        torch.testing.assert_close(path.attribution.flatten(1).sum(1).double(), expected, rtol=1e-5, atol=1e-5)
        # the scores come from the model itself, in its own precision
        torch.testing.assert_close(path.input_score - path.reference_score, expected.float(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize(
    "inputs, target, match",
    [
        (torch.rand(1, 8, 8, dtype=torch.float64), None, "inputs must have shape"),
        (torch.randint(0, 3, (1, 1, 8, 8)), None, "floating"),
        (torch.full((1, 1, 8, 8), float("nan"), dtype=torch.float64), None, "NaN"),
        (torch.rand(0, 1, 8, 8, dtype=torch.float64), None, "empty batch"),
        (torch.rand(2, 1, 8, 8, dtype=torch.float64), 4, "outside"),
        (torch.rand(2, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2]), "target has 3 entries"),
    ],
)
def test_bad_inputs_raise_clear_errors(inputs, target, match):
    with pytest.raises((ValueError, TypeError), match=match):
        sf.SAMP(relu_cnn(), pixels_per_step=8).attribute(inputs, target)


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(pixels_per_step=0), "pixels_per_step"),
        (dict(pixels_per_step=1.5), "pixels_per_step"),
        (dict(n_frag=0), "n_frag"),
        (dict(momentum=0.0), "momentum"),
        (dict(paths=("deletion", "sideways")), "paths"),
        (dict(ties="random"), "ties"),
        (dict(reduction="max"), "reduction"),
        (dict(score="softmax"), "score"),
        (dict(deletion_reference="noise"), "deletion_reference"),
        (dict(insertion_reference=torch.zeros(3, 3, dtype=torch.float64)), "insertion_reference"),
    ],
)
def test_bad_options_raise_clear_errors(options, match):
    with pytest.raises((ValueError, TypeError), match=match):
        sf.SAMP(relu_cnn(), **options).attribute(torch.rand(1, 1, 8, 8, dtype=torch.float64))


def test_model_on_another_device_is_reported():
    model = relu_cnn().to("meta")
    with pytest.raises(ValueError, match="model is on meta"):
        sf.SAMP(model).attribute(torch.rand(1, 1, 8, 8, dtype=torch.float64))


def test_the_step_loop_never_synchronises():
    """Ops that would block on a GPU (.item(), nonzero, ...) happen only in set-up, never per step."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    syncing = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.item.default",
               "aten.is_nonzero.default", "aten.masked_select.default", "aten.equal.default"}

    class CountSyncs(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.counts = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if str(func) in syncing:
                self.counts[str(func)] += 1
            return func(*args, **(kwargs or {}))

    model = relu_cnn()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    totals = []
    for pixels_per_step in (32, 2):  # 2 vs 32 steps per path
        with CountSyncs() as mode:
            result = sf.SAMP.plus(model, pixels_per_step=pixels_per_step).attribute_paths(x, scores=False)
        totals.append(sum(mode.counts.values()))
        assert result.model_calls > 0
    assert totals[0] == totals[1]


def test_ic_bound_is_summed_in_one_fixed_pairwise_order():
    """The bound D / n_frag is added pairwise (the order a GPU kernel can repeat bit for bit), not
    in torch.sum's backend-dependent order; in float32 the two orders differ on these rows."""
    from saliency_fast.methods.samp import pairwise_row_sums

    values = torch.rand(64, 3 * 37 * 29, generator=torch.Generator().manual_seed(0)) * 1e3
    expected = []
    for row in values:
        level = list(row)
        while len(level) > 1:
            level = level + [torch.zeros(())] if len(level) % 2 else level
            level = [level[i] + level[i + 1] for i in range(0, len(level), 2)]
        expected.append(level[0])
    assert torch.equal(pairwise_row_sums(values), torch.stack(expected))
    assert not torch.equal(pairwise_row_sums(values), values.sum(1))  # so the order is really fixed
    torch.testing.assert_close(pairwise_row_sums(values.double()), values.double().sum(1), rtol=1e-12, atol=0)
