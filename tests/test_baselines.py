"""The baseline attribution methods against Captum and PAIR `saliency` in float64, plus the
properties that do not need a peer: IG completeness, batch-size independence, seeded
SmoothGrad, Grad-CAM's training-path gradients, and clear errors on bad input.

Agreement is measured as max |ours − peer| / max |peer| over the whole batch.
"""
from __future__ import annotations

import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import saliency_fast as sf
from saliency_fast.methods.gradcam import gradcam_maps
from saliency_fast.methods.gradients import DEFAULT_ELEMENTS_PER_PASS, IG_METHODS, quadrature, repeats_per_pass

RTOL = 1e-6
BATCH, CHANNELS, HEIGHT, WIDTH, CLASSES = 3, 3, 8, 10, 5


def relative_error(ours: torch.Tensor, peer: torch.Tensor) -> float:
    peer = torch.as_tensor(peer).detach().to(torch.float64)
    return float((ours.detach().to(torch.float64) - peer).abs().max() / peer.abs().max().clamp_min(1e-300))


def tiny_cnn(activation=nn.ReLU, seed: int = 0) -> nn.Module:
    """conv1 → act (in place when ReLU) → conv2 → act → pool → linear, float64, eval."""
    torch.manual_seed(seed)
    inplace = {"inplace": True} if activation is nn.ReLU else {}
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(CHANNELS, 4, 3, padding=1),
            act1=activation(**inplace),
            conv2=nn.Conv2d(4, 6, 3, padding=1),
            act2=activation(**inplace),
            pool=nn.AdaptiveAvgPool2d(2),
            flatten=nn.Flatten(),
            fc=nn.Linear(24, CLASSES),
        )
    )
    return model.double().eval()


def linear_model(seed: int = 0) -> nn.Module:
    """A model linear in its input: the gradient is constant, so IG and SmoothGrad are exact."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(CHANNELS, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * HEIGHT * WIDTH, CLASSES)).double()


@pytest.fixture
def model():
    return tiny_cnn()


@pytest.fixture
def inputs():
    generator = torch.Generator().manual_seed(1)
    return torch.rand(BATCH, CHANNELS, HEIGHT, WIDTH, generator=generator, dtype=torch.float64)


@pytest.fixture
def target():
    return torch.tensor([0, 3, 4])


# ---------------------------------------------------------------- Captum agreement


@pytest.mark.parametrize("absolute", [False, True])
def test_saliency_matches_captum(model, inputs, target, absolute):
    captum_attr = pytest.importorskip("captum.attr")
    peer = captum_attr.Saliency(model).attribute(inputs, target=target, abs=absolute)
    ours = sf.Saliency(model, abs=absolute).attribute(inputs, target, reduce_channels=False)
    assert ours.shape == (BATCH, CHANNELS, HEIGHT, WIDTH)
    assert relative_error(ours, peer) <= RTOL
    assert relative_error(sf.Saliency(model, abs=absolute).attribute(inputs, target), peer.sum(1)) <= RTOL


def test_input_x_gradient_matches_captum(model, inputs, target):
    captum_attr = pytest.importorskip("captum.attr")
    peer = captum_attr.InputXGradient(model).attribute(inputs, target=target)
    method = sf.InputXGradient(model)
    assert relative_error(method.attribute(inputs, target, reduce_channels=False), peer) <= RTOL
    assert relative_error(method.attribute(inputs, target), peer.sum(1)) <= RTOL


def test_default_target_is_the_predicted_class(model, inputs):
    captum_attr = pytest.importorskip("captum.attr")
    predicted = model(inputs).argmax(1)
    peer = captum_attr.InputXGradient(model).attribute(inputs, target=predicted)
    assert relative_error(sf.InputXGradient(model).attribute(inputs), peer.sum(1)) <= RTOL


@pytest.mark.parametrize("method", IG_METHODS)
@pytest.mark.parametrize("baseline_kind", ["zeros", "tensor"])
def test_integrated_gradients_matches_captum(model, inputs, target, method, baseline_kind):
    captum_attr = pytest.importorskip("captum.attr")
    baseline = torch.zeros_like(inputs) if baseline_kind == "zeros" else torch.rand_like(inputs) * 0.5
    ours_baseline = "zeros" if baseline_kind == "zeros" else baseline
    peer = captum_attr.IntegratedGradients(model).attribute(
        inputs, baselines=baseline, target=target, n_steps=20, method=method
    )
    ig = sf.IntegratedGradients(model, baseline=ours_baseline, n_steps=20, method=method, internal_batch_size=2 * BATCH)
    assert relative_error(ig.attribute(inputs, target, reduce_channels=False), peer) <= RTOL
    assert relative_error(ig.attribute(inputs, target), peer.sum(1)) <= RTOL


def test_quadrature_matches_captum_nodes_and_weights():
    approximation = pytest.importorskip("captum.attr._utils.approximation_methods")
    for method in IG_METHODS:
        step_sizes, alphas = approximation.approximation_parameters(method)
        ours_alphas, ours_weights = quadrature(method, 7)
        # Captum builds Riemann nodes with float32 linspace: agreement to float32 precision
        np.testing.assert_allclose(ours_alphas, alphas(7), rtol=0, atol=1e-7)
        np.testing.assert_allclose(ours_weights, step_sizes(7), rtol=1e-12)


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("layer_name", ["conv1", "conv2"])
def test_gradcam_matches_captum_layer_gradcam(model, inputs, target, relu, layer_name):
    captum_attr = pytest.importorskip("captum.attr")
    layer = getattr(model, layer_name)  # conv1 is followed by an in-place ReLU
    peer = captum_attr.LayerGradCam(model, layer).attribute(inputs, target=target, relu_attributions=relu)
    upsampled = captum_attr.LayerAttribution.interpolate(peer, (HEIGHT, WIDTH), interpolate_mode="bilinear")
    ours = sf.GradCAM(model, layer_name, relu=relu).attribute(inputs, target)
    assert ours.shape == (BATCH, HEIGHT, WIDTH)
    assert relative_error(ours, upsampled.squeeze(1)) <= RTOL
    at_layer = sf.GradCAM(model, layer, relu=relu, upsample=False).attribute(inputs, target)
    assert relative_error(at_layer, peer.squeeze(1)) <= RTOL


# ---------------------------------------------------------------- PAIR Guided IG agreement


def _pair_guided_ig():
    """PAIR's GuidedIG, with np.quantile's removed `interpolation=` keyword mapped to `method=`.

    PAIR `saliency` 0.2 still calls np.quantile(..., interpolation='lower'), which NumPy 2.4
    no longer accepts; the shim only renames the keyword.
    """
    core = pytest.importorskip("saliency.core")
    guided_ig_module = pytest.importorskip("saliency.core.guided_ig")

    def quantile(a, q, *args, interpolation=None, **kwargs):
        if interpolation is not None:
            kwargs["method"] = interpolation
        return np.quantile(a, q, *args, **kwargs)

    shim = types.SimpleNamespace(**{name: getattr(np, name) for name in dir(np) if not name.startswith("__")})
    shim.quantile = quantile
    return core, guided_ig_module, shim


def _pair_attributions(model, inputs, baseline, target, x_steps, fraction, max_dist):
    core, guided_ig_module, shim = _pair_guided_ig()

    def call_model_function(x_batch, call_model_args=None, expected_keys=None):
        x = torch.tensor(x_batch, dtype=torch.float64, requires_grad=True)
        logits = model(x)
        (grad,) = torch.autograd.grad(logits[:, call_model_args].sum(), x)
        return {core.base.INPUT_OUTPUT_GRADIENTS: grad.numpy()}

    original = guided_ig_module.np
    guided_ig_module.np = shim
    try:
        return np.stack(
            [
                core.GuidedIG().GetMask(
                    inputs[i].numpy(),
                    call_model_function,
                    call_model_args=int(target[i]),
                    x_baseline=baseline[i].numpy(),
                    x_steps=x_steps,
                    fraction=fraction,
                    max_dist=max_dist,
                )
                for i in range(inputs.shape[0])
            ]
        )
    finally:
        guided_ig_module.np = original


@pytest.mark.parametrize(
    "x_steps, fraction, max_dist, baseline_kind",
    [(10, 0.25, 1.0, "zeros"), (12, 0.5, 0.1, "zeros"), (8, 0.1, 0.02, "tensor"), (6, 1.0, 0.0, "tensor")],
)
def test_guided_ig_matches_pair(model, inputs, target, x_steps, fraction, max_dist, baseline_kind):
    baseline = torch.zeros_like(inputs) if baseline_kind == "zeros" else torch.rand_like(inputs) * 0.5
    peer = _pair_attributions(model, inputs, baseline, target, x_steps, fraction, max_dist)
    method = sf.GuidedIG(
        model, baseline="zeros" if baseline_kind == "zeros" else baseline, x_steps=x_steps, fraction=fraction, max_dist=max_dist
    )
    ours = method.attribute(inputs, target, reduce_channels=False)
    assert relative_error(ours, peer) <= RTOL
    assert relative_error(method.attribute(inputs, target), peer.sum(1)) <= RTOL


def test_guided_ig_image_equal_to_baseline_gets_zero(model, inputs, target):
    baseline = inputs.clone()
    baseline[0] = 0.0
    attr = sf.GuidedIG(model, baseline=baseline, x_steps=5).attribute(inputs, target, reduce_channels=False)
    assert torch.count_nonzero(attr[1:]) == 0
    assert torch.count_nonzero(attr[0]) > 0


# ---------------------------------------------------------------- IG properties


def test_ig_completeness_on_a_smooth_model(inputs, target):
    model = tiny_cnn(nn.Softplus)
    ig = sf.IntegratedGradients(model, baseline="blur", n_steps=64)
    attr = ig.attribute(inputs, target, reduce_channels=False)
    baseline = ig.baseline_for(inputs)
    with torch.no_grad():
        gap = model(inputs).gather(1, target[:, None]).squeeze(1) - model(baseline).gather(1, target[:, None]).squeeze(1)
    error = (attr.sum((1, 2, 3)) - gap).abs() / gap.abs()
    assert float(error.max()) <= 1e-8


@pytest.mark.parametrize("method", ["riemann_left", "riemann_right", "riemann_middle", "gausslegendre"])
def test_ig_exact_for_a_linear_model(inputs, target, method):
    model = linear_model()
    baseline = torch.rand_like(inputs)
    attr = sf.IntegratedGradients(model, baseline=baseline, n_steps=3, method=method).attribute(
        inputs, target, reduce_channels=False
    )
    with torch.no_grad():
        gap = (model(inputs) - model(baseline)).gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(attr.sum((1, 2, 3)), gap, rtol=1e-12, atol=1e-12)


def test_ig_trapezoid_weights_sum_like_captum():
    # Captum's riemann_trapezoid uses step 1/n with halved end weights: they sum to 1 − 1/n.
    _, weights = quadrature("riemann_trapezoid", 10)
    assert weights.sum() == pytest.approx(0.9, rel=1e-14)


def test_ig_independent_of_internal_batch_size(model, inputs, target):
    results = [
        sf.IntegratedGradients(model, n_steps=11, internal_batch_size=size).attribute(inputs, target, reduce_channels=False)
        for size in (None, 1, BATCH, 4 * BATCH + 1, 100 * BATCH)
    ]
    for result in results[1:]:
        torch.testing.assert_close(result, results[0], rtol=1e-12, atol=1e-15)


def test_passes_are_bounded_and_evenly_filled():
    image = torch.zeros(2, 3, 224, 224)
    steps = repeats_per_pass(None, image, 200)
    assert steps == 1  # 2 images already hold more than the CPU budget: one step of the batch
    assert repeats_per_pass(None, image, 2000) == steps  # independent of n_steps
    digits = torch.zeros(64, 1, 32, 32)
    steps = repeats_per_pass(None, digits, 200)
    assert steps == 2 and 64 * steps * digits[0].numel() <= DEFAULT_ELEMENTS_PER_PASS["cpu"]
    steps = repeats_per_pass(None, image.to("meta"), 200)  # any device but the CPU: the accelerator budget
    assert steps == 13 and 2 * steps * image[0].numel() <= DEFAULT_ELEMENTS_PER_PASS["accelerator"]
    assert repeats_per_pass(9, torch.zeros(2, 1, 4, 4), 10) == 4  # ≤ 4 steps per pass → 3 passes of 4, 4, 2 → 4
    assert repeats_per_pass(7, torch.zeros(2, 1, 4, 4), 10) == 3  # ≤ 3 → 4 passes → ceil(10 / 4) = 3
    assert repeats_per_pass(1, torch.zeros(2, 1, 4, 4), 10) == 1  # fewer images than the batch: one step


# ---------------------------------------------------------------- SmoothGrad


def test_smoothgrad_is_seeded_and_leaves_global_rng_alone(model, inputs, target):
    state = torch.get_rng_state()
    first = sf.SmoothGrad(model, n_samples=6, seed=3).attribute(inputs, target)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(sf.SmoothGrad(model, n_samples=6, seed=3).attribute(inputs, target), first)
    assert not torch.allclose(sf.SmoothGrad(model, n_samples=6, seed=4).attribute(inputs, target), first)


@pytest.mark.parametrize("base", ["saliency", "input_x_gradient"])
def test_smoothgrad_independent_of_batch_size(model, inputs, target, base):
    results = [
        sf.SmoothGrad(model, n_samples=7, internal_batch_size=size, base=base, abs=True).attribute(inputs, target)
        for size in (None, BATCH, 2 * BATCH + 2, 50 * BATCH)
    ]
    for result in results[1:]:
        torch.testing.assert_close(result, results[0], rtol=1e-12, atol=1e-15)


def test_smoothgrad_of_a_linear_model_is_its_gradient(inputs, target):
    model = linear_model()
    smooth = sf.SmoothGrad(model, n_samples=5, stdev=0.3).attribute(inputs, target, reduce_channels=False)
    torch.testing.assert_close(smooth, sf.Saliency(model).attribute(inputs, target, reduce_channels=False))


def test_smoothgrad_without_noise_is_its_base(model, inputs, target):
    smooth = sf.SmoothGrad(model, n_samples=3, stdev=0.0, base="input_x_gradient").attribute(inputs, target)
    torch.testing.assert_close(smooth, sf.InputXGradient(model).attribute(inputs, target), rtol=1e-12, atol=1e-15)


def test_smoothgrad_noise_scales_with_the_input_range(model, inputs):
    sigma = sf.SmoothGrad(model, stdev=0.2).noise_scale(inputs)
    expected = 0.2 * (inputs.amax((1, 2, 3)) - inputs.amin((1, 2, 3)))
    torch.testing.assert_close(sigma.view(-1), expected)


# ---------------------------------------------------------------- Grad-CAM core for training


def test_gradcam_maps_training_gradients_flow_through_activations_only(inputs, target):
    model = tiny_cnn(nn.Softplus).train()
    cam, logits = gradcam_maps(model, inputs, target, "conv2", relu=False)
    assert model.training and cam.shape == (BATCH, HEIGHT, WIDTH) and logits.shape == (BATCH, CLASSES)
    (cam.sum() + logits.sum()).backward()  # the logits' graph is still there
    assert model.conv1.weight.grad is not None
    model.zero_grad(set_to_none=True)
    cam, _ = gradcam_maps(model, inputs, target, "conv2", relu=False)
    cam.sum().backward()
    assert model.fc.weight.grad is None  # constant channel weights: the classifier gets nothing
    model.zero_grad(set_to_none=True)
    cam, _ = gradcam_maps(model, inputs, target, "conv2", create_graph=True, detach_weights=False, relu=False)
    cam.sum().backward()
    assert model.fc.weight.grad is not None and model.fc.weight.grad.abs().sum() > 0


def test_gradcam_maps_equal_the_method_at_layer_resolution(model, inputs, target):
    cam, _ = gradcam_maps(model, inputs, target, model.conv2)
    torch.testing.assert_close(cam.detach(), sf.GradCAM(model, "conv2", upsample=False).attribute(inputs, target))


# ---------------------------------------------------------------- bad input


def test_unknown_ig_method_is_named(model):
    with pytest.raises(ValueError, match="method must be one of"):
        sf.IntegratedGradients(model, method="simpson")
    with pytest.raises(ValueError, match="n_steps"):
        sf.IntegratedGradients(model, n_steps=1, method="riemann_left")
    with pytest.raises(ValueError, match="n_steps"):
        sf.IntegratedGradients(model, n_steps=0)
    with pytest.raises(ValueError, match="internal_batch_size"):
        sf.IntegratedGradients(model, internal_batch_size=0)


def test_bad_layer_name_lists_close_names(model):
    with pytest.raises(ValueError, match=r"layer 'conv3' is not a submodule.*conv[12]"):
        sf.GradCAM(model, "conv3")
    with pytest.raises(ValueError, match="layer is a module that is not part of the model"):
        sf.GradCAM(model, nn.Conv2d(3, 3, 1))


def test_layer_with_non_spatial_output_is_rejected(model, inputs):
    with pytest.raises(ValueError, match="layer must output a"):
        sf.GradCAM(model, "fc").attribute(inputs)


def test_baseline_of_the_wrong_shape_is_named(model, inputs):
    for method in (sf.IntegratedGradients(model, baseline=torch.zeros(2, 3, 5, 5, dtype=torch.float64)),
                   sf.GuidedIG(model, baseline=torch.zeros(2, 3, 5, 5, dtype=torch.float64))):
        with pytest.raises(ValueError, match="baseline"):
            method.attribute(inputs)
    with pytest.raises(ValueError, match="baseline"):
        sf.IntegratedGradients(model, baseline="ones").attribute(inputs)


def test_nan_input_is_named(model, inputs):
    inputs[0, 0, 0, 0] = float("nan")
    for method in (sf.Saliency(model), sf.IntegratedGradients(model), sf.SmoothGrad(model), sf.GradCAM(model, "conv2"),
                   sf.GuidedIG(model)):
        with pytest.raises(ValueError, match="inputs contains NaN"):
            method.attribute(inputs)


def test_target_out_of_range_is_named(model, inputs):
    for method in (sf.InputXGradient(model), sf.IntegratedGradients(model), sf.GradCAM(model, "conv2"), sf.GuidedIG(model)):
        with pytest.raises(ValueError, match="target"):
            method.attribute(inputs, CLASSES)
    with pytest.raises(ValueError, match="target"):
        gradcam_maps(model, inputs, -1, "conv2")


def test_bad_hyperparameters_are_named(model):
    with pytest.raises(ValueError, match="stdev"):
        sf.SmoothGrad(model, stdev=-0.1)
    with pytest.raises(ValueError, match="base"):
        sf.SmoothGrad(model, base="guided")
    with pytest.raises(ValueError, match="n_samples"):
        sf.SmoothGrad(model, n_samples=0)
    with pytest.raises(ValueError, match="fraction"):
        sf.GuidedIG(model, fraction=0.0)
    with pytest.raises(ValueError, match="max_dist"):
        sf.GuidedIG(model, max_dist=1.5)
    with pytest.raises(ValueError, match="x_steps"):
        sf.GuidedIG(model, x_steps=0)


# ---------------------------------------------------------------- devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_methods_agree_between_cpu_and_cuda(model, inputs, target):
    methods = {
        "saliency": lambda m: sf.Saliency(m),
        "ig": lambda m: sf.IntegratedGradients(m, n_steps=9, internal_batch_size=2 * BATCH),
        "gradcam": lambda m: sf.GradCAM(m, "conv2"),
        "guided_ig": lambda m: sf.GuidedIG(m, x_steps=6),
    }
    cuda_model = tiny_cnn().cuda()
    for name, make in methods.items():
        cpu = make(model).attribute(inputs, target)
        gpu = make(cuda_model).attribute(inputs.cuda(), target.cuda())
        assert relative_error(gpu.cpu(), cpu) <= RTOL, name
