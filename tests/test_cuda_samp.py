"""SAMP / SAMP++ end to end on CUDA against the CPU: float32/float64, half and bfloat16 models,
and inputs on a non-current GPU.

The contract (issue 14, README "Parity"): samp_step is bit-identical between CPU and CUDA, so a
SAMP map computed on a GPU EQUALS the CPU map when the model's gradients are the same on both
devices; the comparisons use torch.equal. The models here are chosen so that they are:
- ``linear_model``: logits = W·x + b; the input gradient of a logit is a row of W, copied exactly
  by the backward's one-hot matmul on any device (TF32 off), whatever the dtype;
- ``cpu_hop_model``: a non-linear float64 CNN that runs on the CPU one image at a time, whatever
  device its input is on (autograd carries the gradient back): identical gradients for identical
  path points, so any difference comes from the SAMP code on the device.
References are given as tensors computed once (the blur is a convolution, which differs by
rounding between devices and is not part of the contract).

Each test also runs with device "cpu", where it compares CPU against CPU: a dry run of the
test's logic (and a check that SAMP is deterministic) on machines without a GPU.
"""
import pytest
import torch
from torch import nn

import saliency_fast as sf
from saliency_fast.references import make_reference

from .conftest import DEVICES, requires_two_gpus

CHANNELS, HEIGHT, WIDTH, CLASSES = 3, 9, 11, 5  # odd sizes

VARIANTS = {  # name → SAMP options
    "samp": dict(pixels_per_step=7),
    "samp++": dict(pixels_per_step=7, n_frag=6, momentum=0.5),
    "samp++ exact ties": dict(pixels_per_step=7, n_frag=6, momentum=0.5, ties="exact"),
    "samp deletion only, norm reduction": dict(pixels_per_step=10, paths=("deletion",), reduction="norm"),
}  # the "logit" score only: softmax's exp rounds differently on each device


@pytest.fixture(autouse=True)
def no_tf32():
    """Exact one-hot matmuls on the GPU: TF32 would round W's rows."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def linear_model(dtype=torch.float32, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(CHANNELS * HEIGHT * WIDTH, CLASSES)).to(dtype).eval()


def cpu_hop_model(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(CHANNELS, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 4, 3, padding=1), nn.Softplus(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, CLASSES)).double().eval()

    def model(x):
        logits = torch.cat([net(image.unsqueeze(0).cpu().double()) for image in x])  # per image: batch-independent
        return logits.to(device=x.device, dtype=x.dtype)

    return model


def images(dtype=torch.float32, batch=3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, CHANNELS, HEIGHT, WIDTH, generator=generator, dtype=torch.float64).to(dtype)


def run_samp(model, x, target, device, options, dtype_of_path=None):
    blur = make_reference("blur", x.to(dtype_of_path or x.dtype), "insertion_reference")
    method = sf.SAMP(model, insertion_reference=blur.to(device), **options)
    return method.attribute_paths(x.to(device), target.to(device), scores=False)


def assert_same_result(on_device, on_cpu):
    """Bit-identical maps and steps; the device may make up to two extra (no-op) batched calls per
    path, because it reads the active counts one step late (methods/samp.py, _HostCounts)."""
    assert torch.equal(on_device.attribution.cpu(), on_cpu.attribution)
    assert torch.equal(on_device.raw.cpu(), on_cpu.raw)
    for name, path in on_cpu.paths.items():
        device_path = on_device.paths[name]
        assert torch.equal(device_path.attribution.cpu(), path.attribution), name
        assert torch.equal(device_path.steps.cpu(), path.steps), name
        assert path.model_calls <= device_path.model_calls <= path.model_calls + 2, name
    assert on_cpu.raw.abs().sum() > 0  # a path that ended at once would also "agree"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_samp_on_device_equals_cpu_with_a_model_on_the_device(device, variant, dtype):
    model, x = linear_model(dtype), images(dtype)
    target = torch.tensor([0, 3, 4])
    expected = run_samp(model, x, target, "cpu", VARIANTS[variant])
    actual = run_samp(model.to(device), x, target, device, VARIANTS[variant])
    assert_same_result(actual, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["samp", "samp++", "samp++ exact ties"])
def test_samp_on_device_equals_cpu_with_a_nonlinear_model(device, variant):
    model, x = cpu_hop_model(), images(torch.float32)
    target = torch.tensor([1, 2, 0])
    expected = run_samp(model, x, target, "cpu", VARIANTS[variant])
    actual = run_samp(model, x, target, device, VARIANTS[variant])
    assert_same_result(actual, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_models_on_device_equal_cpu(device, dtype):
    """The model runs in half precision, the path in float32 (methods/samp.py): the linear model's
    half gradient (a row of W in half) is exact on both devices, so the float32 maps are equal."""
    model = linear_model(dtype)
    x = images(dtype)
    target = torch.tensor([4, 0, 2])
    options = VARIANTS["samp++"]
    expected = run_samp(model, x, target, "cpu", options, dtype_of_path=torch.float32)
    actual = run_samp(model.to(device), x, target, device, options, dtype_of_path=torch.float32)
    assert actual.attribution.dtype == torch.float32
    assert_same_result(actual, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_samp_maps_close_to_cpu_with_a_model_on_the_device(device):
    """A convolutional model on the device (cuDNN, not bit-identical to the CPU; blur reference
    computed on the device): the maps then differ where near-ties in the selection go the other
    way, so this checks what must still hold: the completeness error of the CPU run and a strong
    agreement with the CPU maps."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(CHANNELS, 6, 3, padding=1), nn.Tanh(), nn.Flatten(),
                        nn.Linear(6 * HEIGHT * WIDTH, CLASSES)).double().eval()
    x, target = images(torch.float64), torch.tensor([0, 1, 2])
    cpu = sf.SAMP.plus(net, pixels_per_step=10, n_frag=10).attribute_paths(x, target)
    on_device = sf.SAMP.plus(net.to(device), pixels_per_step=10, n_frag=10).attribute_paths(x.to(device),
                                                                                          target.to(device))
    for name, path in on_device.paths.items():  # SAMP++ is not exactly complete (momentum): as on the CPU
        torch.testing.assert_close(path.completeness_error.cpu(), cpu.paths[name].completeness_error,
                                   rtol=0, atol=0.02, msg=name)
    correlation = torch.corrcoef(torch.stack([on_device.raw.cpu().flatten(), cpu.raw.flatten()]))[0, 1]
    assert correlation > 0.99


@requires_two_gpus
@pytest.mark.cuda
@pytest.mark.parametrize("make_model", [linear_model, cpu_hop_model], ids=["linear", "cpu hop"])
def test_inputs_on_a_non_current_gpu(make_model):
    """Inputs on cuda:1 while cuda:0 is current (issue 14 finding 2: the host counts' copy and its
    event must use the inputs' device): the maps equal the CPU maps, and nothing is allocated on
    the current device."""
    model = make_model()
    x, target = images(torch.float32), torch.tensor([2, 4, 1])
    expected = run_samp(model, x, target, "cpu", VARIANTS["samp++"])
    torch.cuda.set_device(0)
    torch.cuda.synchronize(0)
    allocated_on_0 = torch.cuda.memory_allocated(0)
    torch.cuda.reset_peak_memory_stats(0)  # a transient allocation on cuda:0 shows in the peak
    if isinstance(model, nn.Module):
        model = model.to("cuda:1")
    actual = run_samp(model, x, target, "cuda:1", VARIANTS["samp++"])
    assert actual.attribution.device == torch.device("cuda:1")
    assert_same_result(actual, expected)
    assert torch.cuda.current_device() == 0
    assert torch.cuda.max_memory_allocated(0) == allocated_on_0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_path_state_equal_on_device(device, dtype):
    """What SAMP computes outside the op before the first step must also be identical, or the maps
    cannot be: the active pixels, their counts and the IC bound D / n_frag, whose D is a sum over
    C·H·W (a reduction whose order differs between the CPU and CUDA kernels of torch.sum unless
    the code fixes it). When the SAMP++ tests above fail on a GPU, this one says whether the
    bound is the cause."""
    from saliency_fast.methods.samp import _PathState

    start, end = images(dtype, seed=4), images(dtype, seed=5)
    end[:, :, :2] = start[:, :, :2]  # some pixels already at their end
    cpu = _PathState(start, end, 6, 7, False, False)
    on_device = _PathState(start.to(device), end.to(device), 6, 7, False, False)
    assert torch.equal(on_device.active.cpu(), cpu.active)
    assert torch.equal(on_device.active_count.cpu(), cpu.active_count)
    assert torch.equal(on_device.bound.cpu(), cpu.bound)
