"""The Captum-style call contract of every method (methods/_base.py), against Captum in float64.

baselines (tensor, scalar, "zeros"), additional_forward_args (per-example tensors and plain
values), targets as int / NumPy integer / list / tuple / array / tensor, return_convergence_delta,
(B, D) inputs for the gradient family, model outputs as tuple / dict / object through ``output=``,
and the promises of issue 16: inputs that require grad, outputs never attached to the caller's
graph, a model returning the wrong number of rows, inference mode.
"""
from __future__ import annotations

import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import saliency_fast as sf

captum_attr = pytest.importorskip("captum.attr")

RTOL = 1e-6
BATCH, CHANNELS, HEIGHT, WIDTH, CLASSES = 3, 3, 8, 10, 5


def relative_error(ours: torch.Tensor, peer: torch.Tensor) -> float:
    peer = torch.as_tensor(peer).detach().to(torch.float64)
    return float((ours.detach().to(torch.float64) - peer).abs().max() / peer.abs().max().clamp_min(1e-300))


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(CHANNELS, 4, 3, padding=1), act1=nn.Softplus(), conv2=nn.Conv2d(4, 6, 3, padding=1),
        act2=nn.Softplus(), pool=nn.AdaptiveAvgPool2d(2), flatten=nn.Flatten(), fc=nn.Linear(24, CLASSES),
    )).double().eval()


class ScaledModel(nn.Module):
    """logits · scale_b + shift: ``scale`` is a per-example (B,) tensor, ``shift`` a plain number."""

    def __init__(self):
        super().__init__()
        self.net = tiny_cnn()

    def forward(self, x, scale, shift=0.0):
        return self.net(x) * scale.view(-1, 1) + shift


class Wrapped(nn.Module):
    """The tiny CNN returning its logits inside a tuple, a dict or an object with ``logits``."""

    def __init__(self, kind: str):
        super().__init__()
        self.net, self.kind = tiny_cnn(), kind

    def forward(self, x):
        logits = self.net(x)
        if self.kind == "tuple":
            return (logits, logits.detach() * 0)
        if self.kind == "dict":
            return {"hidden": logits.detach() * 0, "logits": logits}
        return types.SimpleNamespace(logits=logits, loss=None)


class FewerRows(nn.Module):
    def __init__(self, rows: int):
        super().__init__()
        self.net, self.rows = tiny_cnn(), rows

    def forward(self, x):
        logits = self.net(x)
        return logits[:1] if self.rows < 0 else torch.cat([logits, logits])


@pytest.fixture
def inputs():
    return torch.rand(BATCH, CHANNELS, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.fixture
def scale():
    return torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64)


def all_methods(model, **samp):
    return {
        "saliency": sf.Saliency(model),
        "inputxgradient": sf.InputXGradient(model),
        "ig": sf.IntegratedGradients(model, n_steps=8),
        "smoothgrad": sf.SmoothGrad(model, n_samples=3),
        "guidedig": sf.GuidedIG(model, x_steps=5),
        "gradcam": sf.GradCAM(model, layer=model.net.conv2 if hasattr(model, "net") else "conv2"),
        "samp": sf.SAMP(model, pixels_per_step=8, **samp),
    }


# ------------------------------------------------------------------ Captum's numbers


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_middle"])
def test_ig_with_baselines_forward_args_list_target_and_delta_matches_captum(inputs, scale, method):
    model = ScaledModel()
    baselines = torch.rand_like(inputs) * 0.3
    target = [0, 3, 4]
    peer, peer_delta = captum_attr.IntegratedGradients(model).attribute(
        inputs, baselines=baselines, target=target, additional_forward_args=(scale, 0.25), n_steps=16,
        method=method, internal_batch_size=2 * BATCH, return_convergence_delta=True)
    ig = sf.IntegratedGradients(model)
    ours, delta = ig.attribute(inputs, target, baselines, (scale, 0.25), n_steps=16, method=method,
                               internal_batch_size=2 * BATCH, return_convergence_delta=True, reduce_channels=False)
    assert relative_error(ours, peer) <= RTOL
    assert delta.shape == (BATCH,)
    assert float((delta - peer_delta).abs().max()) <= 1e-9 * float(peer.abs().sum())
    assert ig.n_steps == 50 and ig.method == "gausslegendre"  # the call's options did not stick


def test_ig_scalar_and_named_baselines_match_captum(inputs):
    model = tiny_cnn()
    target = (1, 2, 0)
    for ours_baseline, peer_baseline in ((0.25, 0.25), ("zeros", 0.0), (torch.tensor(0.5), 0.5)):
        peer = captum_attr.IntegratedGradients(model).attribute(inputs, baselines=peer_baseline, target=list(target),
                                                                n_steps=12)
        ours = sf.IntegratedGradients(model, n_steps=12).attribute(inputs, target, baselines=ours_baseline)
        assert relative_error(ours, peer.sum(1)) <= RTOL


@pytest.mark.parametrize("absolute", [False, True])
def test_saliency_and_input_x_gradient_with_forward_args_match_captum(inputs, scale, absolute):
    model = ScaledModel()
    target = np.array([4, 1, 1])
    peer = captum_attr.Saliency(model).attribute(inputs, target=target.tolist(), abs=absolute,
                                                 additional_forward_args=(scale,))
    ours = sf.Saliency(model).attribute(inputs, target, additional_forward_args=(scale,), abs=absolute,
                                        reduce_channels=False)
    assert relative_error(ours, peer) <= RTOL
    peer = captum_attr.InputXGradient(model).attribute(inputs, target=target.tolist(), additional_forward_args=scale)
    ours = sf.InputXGradient(model).attribute(inputs, target, additional_forward_args=scale)
    assert relative_error(ours, peer.sum(1)) <= RTOL


def test_smoothgrad_repeats_forward_args_over_samples(inputs, scale):
    """No noise: every sample is the input, so SmoothGrad is Captum's Saliency with the same arguments."""
    model = ScaledModel()
    peer = captum_attr.Saliency(model).attribute(inputs, target=2, abs=False, additional_forward_args=(scale, 1.0))
    ours = sf.SmoothGrad(model, n_samples=4, stdev=0.0, internal_batch_size=2 * BATCH).attribute(
        inputs, np.int64(2), additional_forward_args=(scale, 1.0))
    assert relative_error(ours, peer.sum(1)) <= RTOL


def test_target_forms_agree(inputs):
    method = sf.Saliency(tiny_cnn())
    expected = method.attribute(inputs, torch.tensor([2, 2, 2]))
    for target in (2, np.int64(2), [2, 2, 2], (2, 2, 2), np.array([2, 2, 2]), torch.tensor(2), np.array(2)):
        assert torch.equal(method.attribute(inputs, target), expected), target
    with pytest.raises(TypeError, match="target"):
        method.attribute(inputs, [0.5, 1, 2])
    with pytest.raises(ValueError, match="3 images"):
        method.attribute(inputs, [0, 1])
    with pytest.raises(TypeError, match="baselines=... by keyword"):
        sf.IntegratedGradients(tiny_cnn()).attribute(inputs, torch.zeros_like(inputs))


def test_feature_vectors_for_the_gradient_family_match_captum():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 16), nn.Tanh(), nn.Linear(16, 4)).double().eval()
    x = torch.randn(5, 7, dtype=torch.float64)
    target = [0, 1, 2, 3, 0]
    cases = [
        (sf.Saliency(model), captum_attr.Saliency(model).attribute(x, target=target, abs=False)),
        (sf.InputXGradient(model), captum_attr.InputXGradient(model).attribute(x, target=target)),
        (sf.IntegratedGradients(model, n_steps=10),
         captum_attr.IntegratedGradients(model).attribute(x, target=target, n_steps=10)),
        (sf.SmoothGrad(model, n_samples=2, stdev=0.0), captum_attr.Saliency(model).attribute(x, target=target, abs=False)),
    ]
    for ours, peer in cases:
        maps = ours.attribute(x, target)
        assert maps.shape == (5, 7)
        assert relative_error(maps, peer) <= RTOL, type(ours).__name__
    maps, delta = sf.IntegratedGradients(model, n_steps=10).attribute(x, target, baselines=0.1,
                                                                      return_convergence_delta=True)
    _, peer_delta = captum_attr.IntegratedGradients(model).attribute(x, baselines=0.1, target=target, n_steps=10,
                                                                     return_convergence_delta=True)
    assert torch.allclose(delta, peer_delta, rtol=0, atol=1e-7)  # Captum rounds its weights to float32


def test_guided_ig_convergence_delta_is_captums_definition(inputs):
    model = tiny_cnn()
    method = sf.GuidedIG(model, x_steps=6, max_dist=0.0)  # max_dist 0: IG on the straight line
    maps, delta = method.attribute(inputs, 1, baselines=0.2, return_convergence_delta=True)
    with torch.no_grad():
        gap = model(inputs)[:, 1] - model(torch.full_like(inputs, 0.2))[:, 1]
    assert torch.allclose(delta, maps.flatten(1).sum(1) - gap, rtol=0, atol=1e-12)


def test_samp_aligns_per_example_forward_args_with_the_live_images(inputs, scale):
    """SAMP drops converged images from its batch; the per-example scale must follow the others."""
    model = ScaledModel()
    samp = sf.SAMP(model, pixels_per_step=7, normalize=False)
    batched = samp.attribute(inputs, [0, 1, 2], additional_forward_args=(scale, 0.5))
    for b in range(BATCH):
        alone = samp.attribute(inputs[b:b + 1], b, additional_forward_args=(scale[b:b + 1], 0.5))
        assert relative_error(batched[b:b + 1], alone) <= 1e-9


def test_baselines_are_refused_where_a_method_has_none(inputs):
    model = tiny_cnn()
    with pytest.raises(TypeError, match="deletion_reference"):
        sf.SAMP(model).attribute(inputs, baselines=0.0)
    with pytest.raises(TypeError, match="no baseline"):
        sf.Saliency(model).attribute(inputs, baselines=0.0)
    with pytest.raises(TypeError, match="convergence delta"):
        sf.Saliency(model).attribute(inputs, return_convergence_delta=True)
    with pytest.raises(TypeError, match="unexpected keyword argument.*n_stepz"):
        sf.IntegratedGradients(model).attribute(inputs, n_stepz=3)


def test_a_single_image_asks_for_a_batch_dimension(inputs):
    model = tiny_cnn()
    for name, method in all_methods(model).items():
        with pytest.raises(ValueError, match="unsqueeze"):
            method.attribute(inputs[0])


# ------------------------------------------------------------------ model outputs


@pytest.mark.parametrize("kind, selector", [("tuple", 0), ("dict", "logits"), ("object", "logits"),
                                            ("dict", lambda out: out["logits"])])
def test_output_selector_gives_the_plain_models_maps(inputs, kind, selector):
    plain, wrapped = all_methods(tiny_cnn()), all_methods(Wrapped(kind))
    for name in plain:
        expected = plain[name].attribute(inputs, [0, 1, 2])
        got = wrapped[name].attribute(inputs, [0, 1, 2], output=selector)
        assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12), name
        predicted = wrapped[name].attribute(inputs, output=selector)  # target None: the prediction
        assert torch.allclose(predicted, plain[name].attribute(inputs), rtol=1e-12, atol=1e-12), name
    constructed = sf.IntegratedGradients(Wrapped(kind), n_steps=8, output=selector).attribute(inputs, 1)
    assert torch.allclose(constructed, plain["ig"].attribute(inputs, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["tuple", "dict", "object"])
def test_unselected_structured_output_names_the_output_argument(inputs, kind):
    for name, method in all_methods(Wrapped(kind)).items():
        with pytest.raises(TypeError, match="output="):
            method.attribute(inputs)
    labels = torch.tensor([0, 1, 2])
    maps = torch.rand(BATCH, HEIGHT, WIDTH, dtype=torch.float64)
    for metric in (lambda m, **o: sf.metrics.deletion_insertion(m, inputs, maps, **o),
                   lambda m, **o: sf.metrics.masked_accuracy(m, inputs, maps, labels, **o),
                   lambda m, **o: sf.metrics.completeness_error(m, inputs, maps, **o)):
        with pytest.raises(TypeError, match="output="):
            metric(Wrapped(kind))
    with pytest.raises(ValueError, match="does not select"):
        sf.Saliency(Wrapped(kind)).attribute(inputs, output="nothing" if kind != "tuple" else 5)


def test_metrics_take_the_output_selector(inputs):
    plain, wrapped = tiny_cnn(), Wrapped("dict")
    maps = sf.Saliency(plain).attribute(inputs)
    labels = torch.tensor([0, 1, 2])
    ours = sf.metrics.deletion_insertion(wrapped, inputs, maps, output="logits", pixels_per_step=16)
    expected = sf.metrics.deletion_insertion(plain, inputs, maps, pixels_per_step=16)
    assert torch.equal(ours.deletion_auc, expected.deletion_auc) and torch.equal(ours.insertion_auc, expected.insertion_auc)
    assert torch.equal(sf.metrics.masked_accuracy(wrapped, inputs, maps, labels, output="logits").correct,
                       sf.metrics.masked_accuracy(plain, inputs, maps, labels).correct)
    assert torch.equal(sf.metrics.completeness_error(wrapped, inputs, maps, output="logits"),
                       sf.metrics.completeness_error(plain, inputs, maps))


def test_attribute_dataset_takes_the_output_selector(tmp_path, inputs):
    images = inputs.float()
    plain, wrapped = tiny_cnn().float(), Wrapped("object").float()
    sf.attribute_dataset(plain, images, "saliency", tmp_path / "plain", progress=False)
    sf.attribute_dataset(wrapped, images, "saliency", tmp_path / "wrapped", output="logits", progress=False)
    assert torch.equal(sf.load_attributions(tmp_path / "plain"), sf.load_attributions(tmp_path / "wrapped"))
    with pytest.raises(TypeError, match="output="):
        sf.attribute_dataset(wrapped, images, "saliency", tmp_path / "none", progress=False)


@pytest.mark.parametrize("rows", [-1, 2])
def test_a_model_returning_the_wrong_number_of_rows_is_refused(inputs, rows):
    for name, method in all_methods(FewerRows(rows)).items():
        for target in (None, 1):
            with pytest.raises(ValueError, match="one row of logits per input"):
                method.attribute(inputs, target)


# ------------------------------------------------------------------ graphs and modes


def test_inputs_that_require_grad_are_accepted_and_outputs_stay_off_the_graph(inputs):
    model = tiny_cnn()
    leaf = inputs.clone().requires_grad_(True)
    computed = leaf * 1.0  # has a grad_fn
    for name, method in all_methods(model).items():
        expected = method.attribute(inputs, 1)
        for given in (leaf, computed):
            maps = method.attribute(given, 1)
            assert not maps.requires_grad and maps.grad_fn is None, name
            assert torch.allclose(maps, expected, rtol=1e-12, atol=1e-12), name
    maps, delta = sf.GuidedIG(model, x_steps=4).attribute(computed, 1, return_convergence_delta=True)
    assert maps.grad_fn is None and delta.grad_fn is None
    assert leaf.grad is None


def test_inference_mode_is_refused_with_a_clear_message(inputs):
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="inference_mode"):
            sf.Saliency(tiny_cnn()).attribute(inputs)
    with torch.inference_mode():
        frozen = inputs.clone()
    assert torch.equal(sf.Saliency(tiny_cnn()).attribute(frozen), sf.Saliency(tiny_cnn()).attribute(inputs))


def test_a_bound_model_keeps_the_users_layer_names_and_attributes():
    model = tiny_cnn()
    bound = sf.BoundModel(model, None, None, BATCH)
    assert [name for name, _ in bound.named_modules()] == [name for name, _ in model.named_modules()]
    assert bound.get_submodule("conv2") is model.conv2 and bound.fc is model.fc
    assert set(bound.parameters()) == set(model.parameters())
    from saliency_fast.methods.gradcam import resolve_layer
    assert resolve_layer(bound, "conv2") is model.conv2


def test_deletion_insertion_takes_a_single_path_name(inputs):
    model = tiny_cnn()
    maps = sf.Saliency(model).attribute(inputs)
    result = sf.metrics.deletion_insertion(model, inputs, maps, paths="deletion", pixels_per_step=16)
    assert result.deletion_auc is not None and result.insertion_auc is None


class DigitsWithExtras(nn.Module):
    """The shipped digits CNN behind a Hugging Face-style output and an extra forward argument."""

    def __init__(self):
        super().__init__()
        self.net = sf.models.digits_cnn().double()

    def forward(self, x, scale):
        return {"hidden": None, "logits": self.net(x) * scale.view(-1, 1)}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("make", [
    lambda m: sf.LRP(m), lambda m: sf.DeepLift(m), lambda m: sf.RISE(m, n_masks=16),
    lambda m: sf.LIME(m, n_samples=12), lambda m: sf.XRAI(m, steps=3), lambda m: sf.BlurIG(m, steps=3),
], ids=["lrp", "deeplift", "rise", "lime", "xrai", "blurig"])
def test_new_baselines_route_every_model_call_through_the_call_contract(make):
    """A unit per-example scale and the dict output give the plain model's maps exactly: every
    model call (XRAI's inner IG included) goes through the bound model."""
    pytest.importorskip("skimage")
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    wrapped = DigitsWithExtras()
    got = make(wrapped).attribute(x, [3, 5], additional_forward_args=(torch.ones(2, dtype=torch.float64),),
                                  output="logits")
    assert torch.equal(got, make(wrapped.net).attribute(x, [3, 5]))
