"""Every baseline and every metric on CUDA against a float64 CPU run.

The device runs float32 (GuidedIG float64: its path picks features by |gradient| rank, and a rank
flipped by rounding changes the path) and must agree with the float64 CPU reference within the
tolerance of its dtype, measured as max |device − reference| / max |reference| over the batch:
FLOAT32_RTOL for float32, FLOAT64_RTOL for float64. Counts and ranks (accuracies, pointing game)
must be equal. The "cpu" cases run the same comparison with the float32 run on the CPU: a dry run
of each test on machines without a GPU.
"""
import pytest
import torch

import saliency_fast as sf
from saliency_fast import metrics

from .conftest import DEVICES, requires_two_gpus
from .test_baselines import BATCH, CHANNELS, HEIGHT, WIDTH, relative_error, tiny_cnn

FLOAT32_RTOL = 1e-4
FLOAT64_RTOL = 1e-9

BASELINES = {  # name → (factory, dtype on the device)
    "saliency": (lambda m: sf.Saliency(m), torch.float32),
    "saliency abs": (lambda m: sf.Saliency(m, abs=True), torch.float32),
    "input_x_gradient": (lambda m: sf.InputXGradient(m), torch.float32),
    "integrated_gradients": (lambda m: sf.IntegratedGradients(m, n_steps=9, internal_batch_size=2 * BATCH),
                             torch.float32),
    "integrated_gradients blur baseline": (lambda m: sf.IntegratedGradients(m, n_steps=6, baseline="blur"),
                                           torch.float32),
    "gradcam": (lambda m: sf.GradCAM(m, "conv2"), torch.float32),
    "guided_ig": (lambda m: sf.GuidedIG(m, x_steps=6), torch.float64),
}


@pytest.fixture(autouse=True)
def no_tf32():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.fixture
def work():
    generator = torch.Generator().manual_seed(1)
    inputs = torch.rand(BATCH, CHANNELS, HEIGHT, WIDTH, generator=generator, dtype=torch.float64)
    return tiny_cnn(), inputs, torch.tensor([0, 3, 4])


def on(device, dtype, model, *tensors):
    moved = [t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device) for t in tensors]
    return (tiny_cnn().to(device=device, dtype=dtype).eval() if model is not None else None), moved


def tolerance(dtype):
    return FLOAT64_RTOL if dtype == torch.float64 else FLOAT32_RTOL


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_on_device_matches_float64_cpu(device, name, work):
    model, inputs, target = work
    make, dtype = BASELINES[name]
    expected = make(model).attribute(inputs, target)
    device_model, (x, t) = on(device, dtype, model, inputs, target)
    actual = make(device_model).attribute(x, t)
    assert actual.device.type == torch.device(device).type and actual.dtype == dtype
    assert relative_error(actual.cpu(), expected) <= tolerance(dtype), name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("base", ["saliency", "input_x_gradient"])
def test_smoothgrad_on_device_matches_float64_cpu_with_the_same_noise(device, base, work):
    """SmoothGrad draws its noise from a generator on the inputs' device (seeded), so the CUDA run
    uses CUDA's random stream: the reference replays that stream's draws, one per sample in
    order (methods/gradients.py), and averages float64 CPU gradients at the noisy points."""
    model, inputs, target = work
    n_samples, stdev, seed = 5, 0.2, 7
    device_model, (x, t) = on(device, torch.float32, model, inputs, target)
    actual = sf.SmoothGrad(device_model, n_samples=n_samples, stdev=stdev, seed=seed, base=base).attribute(x, t)

    generator = torch.Generator(device=device).manual_seed(seed)
    draws = [torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).double().cpu()
             for _ in range(n_samples)]
    flat = inputs.flatten(1)
    sigma = (stdev * (flat.max(1).values - flat.min(1).values)).view(-1, 1, 1, 1)
    total = torch.zeros_like(inputs)
    for noise in draws:
        noisy = inputs + sigma * noise
        attribution = sf.Saliency(model).attribute(noisy, target, reduce_channels=False)
        total += attribution if base == "saliency" else attribution * noisy
    expected = (total / n_samples).sum(1)
    assert relative_error(actual.cpu(), expected) <= FLOAT32_RTOL


@pytest.fixture
def metric_work(work):
    model, inputs, target = work
    generator = torch.Generator().manual_seed(2)
    # float32-representable maps: the float32 run ranks the pixels exactly as the float64 one
    maps = torch.randn(BATCH, HEIGHT, WIDTH, generator=generator).double()
    maps[0, :3] = 0.5  # ties: broken by flat index on every device
    positive = torch.rand(BATCH, HEIGHT, WIDTH, generator=generator) < 0.3
    negative = ~positive & (torch.rand(BATCH, HEIGHT, WIDTH, generator=generator) < 0.3)
    return model, inputs, target, maps, positive, negative


CURVE_FIELDS = ("deletion_curve", "insertion_curve", "deletion_prob_curve", "insertion_prob_curve", "deletion_auc",
                "insertion_auc", "deletion_auc_prob", "insertion_auc_prob")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("options", [{}, {"pixels_per_step": 7, "score": "probability", "max_batch": 4},
                                     {"insertion_reference": "zeros", "paths": ("insertion",), "max_batch": 1}],
                         ids=["defaults", "probability, chunked", "insertion only, one image a call"])
def test_deletion_insertion_on_device_matches_float64_cpu(device, options, metric_work):
    model, inputs, target, maps, _, _ = metric_work
    expected = metrics.deletion_insertion(model, inputs, maps, target=target, **options)
    device_model, (x, m, t) = on(device, torch.float32, model, inputs, maps, target)
    actual = metrics.deletion_insertion(device_model, x, m, target=t, **options)
    assert torch.equal(actual.counts.cpu(), expected.counts)
    for field in CURVE_FIELDS:
        want, got = getattr(expected, field), getattr(actual, field)
        assert (want is None) == (got is None), field
        if want is not None:
            assert relative_error(got.cpu(), want) <= FLOAT32_RTOL, field


@pytest.mark.parametrize("device", DEVICES)
def test_masked_accuracy_on_device_matches_float64_cpu(device, metric_work):
    model, inputs, target, maps, _, _ = metric_work
    labels = model(inputs).argmax(1)
    labels[0] = (labels[0] + 1) % 5  # one image misclassified from the start
    expected = metrics.masked_accuracy(model, inputs, maps, labels, max_batch=5)
    device_model, (x, m, y) = on(device, torch.float32, model, inputs, maps, labels)
    actual = metrics.masked_accuracy(device_model, x, m, y, max_batch=5)
    assert torch.equal(actual.counts.cpu(), expected.counts)
    assert torch.equal(actual.correct.cpu(), expected.correct)
    assert torch.equal(actual.accuracy.cpu().double(), expected.accuracy.double())


@pytest.mark.parametrize("device", DEVICES)
def test_gini_completeness_localization_on_device_match_float64_cpu(device, metric_work):
    model, inputs, target, maps, positive, negative = metric_work
    ig = sf.IntegratedGradients(model, n_steps=16).attribute(inputs, target)
    device_model, (x, m, t, a, pos, neg) = on(device, torch.float32, model, inputs, maps, target, ig, positive,
                                                 negative)
    assert relative_error(metrics.gini(m).cpu(), metrics.gini(maps)) <= FLOAT32_RTOL
    for reference in ("zeros", "blur"):
        want = metrics.completeness_error(model, inputs, ig, reference=reference, target=target)
        got = metrics.completeness_error(device_model, x, a, reference=reference, target=t)
        assert relative_error(got.cpu(), want) <= 1e-3, reference  # a ratio of small differences
    for negative_mask in (None, neg):
        want = metrics.localization(maps, positive, negative if negative_mask is not None else None)
        got = metrics.localization(m, pos, negative_mask)
        for key, value in want.items():
            assert relative_error(got[key].cpu(), value) <= FLOAT32_RTOL, key


@requires_two_gpus
@pytest.mark.cuda
def test_baselines_and_metrics_on_a_non_current_gpu(work, metric_work):
    """Inputs and model on cuda:1 while cuda:0 is current: the same results as on the CPU, and no
    memory taken on the current device."""
    model, inputs, target = work
    maps = metric_work[3]
    torch.cuda.set_device(0)
    allocated_on_0 = torch.cuda.memory_allocated(0)
    torch.cuda.reset_peak_memory_stats(0)
    device_model, (x, t, m) = on("cuda:1", torch.float32, model, inputs, target, maps)
    for name in ("saliency", "integrated_gradients", "gradcam"):
        make, _ = BASELINES[name]
        actual = make(device_model).attribute(x, t)
        assert actual.device == torch.device("cuda:1")
        assert relative_error(actual.cpu(), make(model).attribute(inputs, target)) <= FLOAT32_RTOL, name
    actual = metrics.deletion_insertion(device_model, x, m, target=t)
    expected = metrics.deletion_insertion(model, inputs, maps, target=target)
    assert relative_error(actual.deletion_auc.cpu(), expected.deletion_auc) <= FLOAT32_RTOL
    assert relative_error(actual.insertion_auc.cpu(), expected.insertion_auc) <= FLOAT32_RTOL
    assert torch.cuda.current_device() == 0 and torch.cuda.max_memory_allocated(0) == allocated_on_0
