"""The contract every method gets from AttributionMethod: the target checked without an extra
forward pass, one pass-size name (``internal_batch_size``, with ``batch_size`` a deprecated
alias), the channel sum, the completeness hook, and the options a manifest records."""
import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn

import saliency_fast as sf
from saliency_fast import metrics
from saliency_fast.methods._base import AttributionMethod

CHANNELS, SIDE, CLASSES, BATCH = 3, 16, 5, 3


class Counting(nn.Module):
    """The model, counting its forward calls."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(CHANNELS, 4, 3, padding=1), act1=nn.ReLU(), conv2=nn.Conv2d(4, 6, 3, padding=1),
        act2=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(6, CLASSES),
    )).double().eval()


@pytest.fixture(name="images")
def images_fixture():
    return torch.rand(BATCH, CHANNELS, SIDE, SIDE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def every_method(model):
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    return {
        "saliency": sf.Saliency(model), "inputxgradient": sf.InputXGradient(model),
        "ig": sf.IntegratedGradients(model, n_steps=4), "smoothgrad": sf.SmoothGrad(model, n_samples=3),
        "guidedig": sf.GuidedIG(model, x_steps=3), "gradcam": sf.GradCAM(model, "conv2"),
        "gradcam++": sf.GradCAMPlusPlus(model, "conv2"), "cam": sf.CAM(model), "lrp": sf.LRP(model),
        "deeplift": sf.DeepLift(model), "rise": sf.RISE(model, n_masks=8), "lime": sf.LIME(model, n_samples=6),
        "xrai": sf.XRAI(model, steps=2), "blurig": sf.BlurIG(model, steps=3), "samp": sf.SAMP(model, pixels_per_step=64),
    }


# ---------------------------------------------------------------- the target
@pytest.mark.parametrize("make, calls", [
    (lambda m: sf.Saliency(m), 1), (lambda m: sf.InputXGradient(m), 1), (lambda m: sf.GradCAM(m, "model.conv2"), 1),
    (lambda m: sf.CAM(m, "model.act2"), 1), (lambda m: sf.LRP(m), 1),
    (lambda m: sf.IntegratedGradients(m, n_steps=4, internal_batch_size=4 * BATCH), 1),
    (lambda m: sf.IntegratedGradients(m, n_steps=4, internal_batch_size=BATCH), 4),
])
def test_a_given_target_costs_no_forward_pass_of_its_own(images, make, calls):
    model = Counting(cnn())
    method = make(model)
    maps = method.attribute(images, torch.tensor([0, 3, 4]))
    assert model.calls == calls
    model.calls = 0
    method.attribute(images)  # the predicted class: one forward pass to learn it
    assert model.calls == calls + 1
    assert maps.shape == (BATCH, SIDE, SIDE)


def test_every_method_refuses_an_out_of_range_target_before_returning(images):
    model = cnn()
    images = images[:2]
    for name, method in every_method(model).items():
        for target in (CLASSES, [0, CLASSES + 3], -1):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # LIME's one-superpixel warning on random images
                with pytest.raises(ValueError, match="target holds a class index outside"):
                    method.attribute(images, target)
        assert method.attribute(images, CLASSES - 1).shape == (2, SIDE, SIDE), name  # still usable


def test_out_of_range_target_raises_even_when_the_method_calls_no_model():
    """Inputs equal to both of SAMP's references: no path step calls the model, so the target
    is checked with a one-image forward pass before the (zero) maps are returned."""
    model = Counting(cnn())
    zeros = torch.zeros(2, CHANNELS, SIDE, SIDE, dtype=torch.float64)
    samp = sf.SAMP(model, insertion_reference="zeros")
    with pytest.raises(ValueError, match=f"target holds a class index outside \\[0, {CLASSES - 1}\\]"):
        samp.attribute(zeros, CLASSES)
    model.calls = 0
    assert torch.equal(samp.attribute(zeros, 1), torch.zeros(2, SIDE, SIDE, dtype=torch.float64))
    assert model.calls == 1  # the one-image check


def test_captum_objects_get_the_target_checked_before_captum_runs(images):
    captum_attr = pytest.importorskip("captum.attr")
    method = sf.interop.from_captum(captum_attr.Saliency(cnn()))
    with pytest.raises(ValueError, match="target holds a class index outside"):
        method.attribute(images, CLASSES)


# ---------------------------------------------------------------- one pass-size name
def test_every_method_has_a_validated_internal_batch_size(images):
    for name, method in every_method(cnn()).items():
        assert method.internal_batch_size is None, name
        method.internal_batch_size = 2
        assert method.internal_batch_size == 2
        with pytest.raises(ValueError, match="internal_batch_size must be a positive int"):
            method.internal_batch_size = 0
    streaming = {n for n, m in every_method(cnn()).items() if m.streams_passes}
    assert streaming == {"ig", "smoothgrad", "rise", "lime", "xrai", "blurig"}


@pytest.mark.parametrize("make", [
    lambda m, **o: sf.SmoothGrad(m, n_samples=5, stdev=0.2, **o), lambda m, **o: sf.RISE(m, n_masks=10, **o),
    lambda m, **o: sf.BlurIG(m, steps=5, **o), lambda m, **o: sf.XRAI(m, steps=3, **o),
])
def test_the_pass_size_changes_the_passes_not_the_maps(images, make):
    pytest.importorskip("skimage")
    model = Counting(cnn())
    images, target = images[:2], torch.tensor([0, 3])
    whole = make(model).attribute(images, target)
    model.calls = 0
    by_constructor = make(model, internal_batch_size=BATCH).attribute(images, target)
    calls = model.calls
    model.calls = 0
    by_call = make(model).attribute(images, target, internal_batch_size=BATCH)
    assert model.calls == calls > 1
    torch.testing.assert_close(by_constructor, whole, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(by_call, whole, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls, options", [(sf.SmoothGrad, {"n_samples": 4}), (sf.RISE, {"n_masks": 6}),
                                          (sf.LIME, {"n_samples": 6})])
def test_batch_size_is_a_deprecated_alias(images, cls, options):
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    model = cnn()
    with pytest.warns(DeprecationWarning, match="use internal_batch_size|pass internal_batch_size"):
        old = cls(model, batch_size=BATCH, **options)
    new = cls(model, internal_batch_size=BATCH, **options)
    assert old.internal_batch_size == BATCH
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.testing.assert_close(old.attribute(images, 1), new.attribute(images, 1), rtol=0, atol=0)
    with pytest.warns(DeprecationWarning, match="internal_batch_size"):
        assert new.batch_size == BATCH
    with pytest.warns(DeprecationWarning, match="internal_batch_size"):
        new.batch_size = 1
    assert new.internal_batch_size == 1
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="both internal_batch_size"):
        cls(model, batch_size=2, internal_batch_size=2, **options)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="batch_size must be a positive int"):
        cls(model, batch_size=0, **options)


# ---------------------------------------------------------------- the channel sum
def test_reduce_channels_is_the_base_class_channel_sum(images):
    for name, method in every_method(cnn()).items():
        if method.channel_attributions:
            full = method.attribute(images, 2, reduce_channels=False)
            assert full.shape == images.shape, name
            torch.testing.assert_close(method.attribute(images, 2), full.sum(1), rtol=1e-12, atol=1e-14)
        else:
            with pytest.raises(TypeError, match="reduce_channels=False"):
                method.attribute(images, 2, reduce_channels=False)


# ---------------------------------------------------------------- completeness
def test_completeness_hook_matches_the_metric(images):
    model = cnn()
    target = torch.tensor([0, 3, 4])
    ig = sf.IntegratedGradients(model, n_steps=16)
    maps, errors = ig.attribute_with_completeness(images, target)
    torch.testing.assert_close(maps, ig.attribute(images, target), rtol=0, atol=0)
    expected = metrics.completeness_error(model, images, maps, ig.baseline_for(images), target=target)
    torch.testing.assert_close(errors, expected, rtol=1e-12, atol=1e-12)
    half = torch.full_like(images, 0.5)  # a call's baselines= is the reference compared against
    _, errors = ig.attribute_with_completeness(images, target, baselines=half)
    maps = ig.attribute(images, target, baselines=half)
    torch.testing.assert_close(errors, metrics.completeness_error(model, images, maps, half, target=target),
                               rtol=1e-12, atol=1e-12)

    samp = sf.SAMP(model, normalize=False)
    maps, errors = samp.attribute_with_completeness(images, target)
    result = samp.attribute_paths(images, target)
    torch.testing.assert_close(maps, result.attribution, rtol=0, atol=0)
    per_path = torch.stack([p.completeness_error for p in result.paths.values()])
    torch.testing.assert_close(errors, per_path.mean(0), rtol=0, atol=0)
    for name, path in result.paths.items():
        torch.testing.assert_close(path.completeness_error, metrics.completeness_error(
            model, images, path.attribution, path.reference, target=target), rtol=1e-10, atol=1e-12)

    maps, errors = sf.Saliency(model).attribute_with_completeness(images, target)
    assert errors is None and maps.shape == (BATCH, SIDE, SIDE)


# ---------------------------------------------------------------- options a manifest records
def test_cam_methods_resolve_their_layer_for_a_manifest(images):
    inner = cnn()
    wrapped = nn.Sequential(OrderedDict(model=inner))
    for cls in (sf.GradCAM, sf.GradCAMPlusPlus, sf.CAM):
        assert cls.resolved_options(wrapped, {"layer": "conv2"})["layer"] == "model.conv2"
        assert cls.resolved_options(wrapped, {"layer": inner.conv1})["layer"] == "model.conv1"
        assert cls.resolved_options(wrapped, {}) == {}  # nothing to decide it on
        found = cls.resolved_options(wrapped, {"relu": True}, images[0])
        assert found == {"relu": True, "layer": "model.act2"} or found == {"relu": True, "layer": "model.conv2"}
        method = cls(wrapped)
        method.attribute(images[:1])
        assert found["layer"] == [n for n, m in wrapped.named_modules() if m is method.layer][0]
    assert sf.IntegratedGradients.resolved_options(inner, {"n_steps": 3}, images[0]) == {"n_steps": 3}
    assert AttributionMethod.resolved_options(inner, {}) == {}
