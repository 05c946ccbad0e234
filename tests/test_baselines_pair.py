"""XRAI and Blur IG against PAIR ``saliency`` in float64 (images in HWC there), plus batch
independence, the gaussian matrices against SciPy, and clear errors.

PAIR's IntegratedGradients (XRAI's base attribution) accumulates its gradients in float32
(``np.zeros_like(x, dtype=np.float32)``); the XRAI check swaps that module's ``zeros_like`` for
one that keeps the input's dtype, so that both sides run in float64.
"""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from torch import nn

import saliency_fast as sf
from saliency_fast.methods.blur_ig import gaussian_filter_matrices
from saliency_fast.methods.xrai import felzenszwalb_masks

from .test_baselines import relative_error

core = pytest.importorskip("saliency.core")
pytest.importorskip("skimage")
RTOL = 1e-10


@pytest.fixture(scope="module")
def digits():
    model = sf.models.digits_cnn().double()
    images = sf.data.load_digits("test")[0][:3].double()
    return model, images, model(images).argmax(1)


def rgb_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Softplus(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 6 * 5, 5)).double().eval()


def call_model_function(model):
    """PAIR's interface: HWC numpy batches in, the target logit's input gradient out."""

    def call(x_batch, call_model_args=None, expected_keys=None):
        x = torch.tensor(x_batch).permute(0, 3, 1, 2).requires_grad_(True)
        (grad,) = torch.autograd.grad(model(x)[:, call_model_args].sum(), x)
        return {core.base.INPUT_OUTPUT_GRADIENTS: grad.permute(0, 2, 3, 1).numpy()}

    return call


def hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


# ---------------------------------------------------------------- Blur IG


def pair_blur_ig(model, images, target, **options):
    """PAIR's BlurIG at its default batch_size=1: with larger batches it weights every step of a
    batch by the last step's σ spacing, which is wrong for the uneven sqrt spacing."""
    call = call_model_function(model)
    masks = [core.BlurIG().GetMask(hwc(images[i]), call, call_model_args=int(target[i]), **options)
             for i in range(len(images))]
    return torch.from_numpy(np.stack(masks)).permute(0, 3, 1, 2)


def test_blur_ig_matches_pair_on_the_digits_cnn(digits):
    model, images, target = digits
    peer = pair_blur_ig(model, images, target, steps=20)
    method = sf.BlurIG(model, steps=20, internal_batch_size=7)  # passes that split the steps unevenly
    assert relative_error(method.attribute(images, target, reduce_channels=False), peer) <= RTOL
    assert relative_error(method.attribute(images), peer.sum(1)) <= RTOL


@pytest.mark.parametrize("options", [{"steps": 9, "max_sigma": 3.0, "sqrt": True},
                                     {"steps": 6, "max_sigma": 12.0, "grad_step": 0.05}])
def test_blur_ig_matches_pair_on_rgb_non_square_images(options):
    model = rgb_model()
    images = torch.rand(2, 3, 12, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = torch.tensor([1, 4])
    peer = pair_blur_ig(model, images, target, **options)
    assert relative_error(sf.BlurIG(model, **options).attribute(images, target, reduce_channels=False), peer) <= RTOL


def test_gaussian_matrices_equal_scipy_constant_mode():
    ndimage = pytest.importorskip("scipy.ndimage")
    signal = np.random.default_rng(0).random(17)
    sigmas = torch.tensor([0.0, 0.3, 1.0, 2.5, 50.0], dtype=torch.float64)
    for sigma, matrix in zip(sigmas.tolist(), gaussian_filter_matrices(sigmas, 17)):
        expected = signal if sigma == 0 else ndimage.gaussian_filter1d(signal, sigma, mode="constant")
        np.testing.assert_allclose(matrix.numpy() @ signal, expected, rtol=1e-13, atol=1e-15)


def test_blur_ig_bad_arguments_are_named(digits):
    model, images, _ = digits
    for kwargs, name in (({"steps": 0}, "steps"), ({"max_sigma": 0}, "max_sigma"), ({"grad_step": -1.0}, "grad_step"),
                         ({"internal_batch_size": 0}, "internal_batch_size")):
        with pytest.raises(ValueError, match=name):
            sf.BlurIG(model, **kwargs)
    with pytest.raises(ValueError, match="target"):
        sf.BlurIG(model, steps=2).attribute(images, 10)


# ---------------------------------------------------------------- XRAI


@pytest.fixture
def float64_pair_ig(monkeypatch):
    ig_module = pytest.importorskip("saliency.core.integrated_gradients")
    shim = types.SimpleNamespace(**{name: getattr(np, name) for name in dir(np) if not name.startswith("__")})
    shim.zeros_like = lambda a, dtype=None, **kwargs: np.zeros_like(a, **kwargs)
    monkeypatch.setattr(ig_module, "np", shim)


def pair_xrai(model, images, target, steps):
    call = call_model_function(model)
    parameters = core.XRAIParameters(steps=steps)
    return np.stack([core.XRAI().GetMask(hwc(images[i]), call, call_model_args=int(target[i]), batch_size=steps,
                                         extra_parameters=parameters) for i in range(len(images))])


def test_xrai_matches_pair_on_the_digits_cnn(digits, float64_pair_ig):
    model, images, target = digits
    peer = pair_xrai(model, images, target, steps=12)
    ours = sf.XRAI(model, steps=12).attribute(images, target)
    assert ours.shape == images[:, 0].shape
    assert relative_error(ours, peer) <= RTOL


def test_xrai_matches_pair_on_rgb_images(float64_pair_ig):
    model = rgb_model(1)
    images = torch.rand(2, 3, 12, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    images[1, :, 3:9, 2:7] += 1.0  # a bright block: segments that differ between the images
    target = torch.tensor([2, 0])
    peer = pair_xrai(model, images, target, steps=5)
    assert relative_error(sf.XRAI(model, steps=5).attribute(images, target), peer) <= RTOL


def test_xrai_segments_equal_pairs(digits):
    xrai_module = pytest.importorskip("saliency.core.xrai")
    _, images, _ = digits
    ours = felzenszwalb_masks(hwc(images[0]))
    theirs = np.stack(xrai_module._get_segments_felzenszwalb(hwc(images[0])))
    assert ours.dtype == bool and np.array_equal(ours, theirs)


def test_xrai_is_independent_of_batch_mates(digits):
    model, images, target = digits
    images, target = images[:2], target[:2]
    xrai = sf.XRAI(model, steps=4, internal_batch_size=3)
    together = xrai.attribute(images, target)
    alone = torch.cat([xrai.attribute(images[i : i + 1], target[i : i + 1]) for i in range(len(images))])
    torch.testing.assert_close(together, alone, rtol=1e-12, atol=1e-15)


def test_xrai_bad_arguments_are_named(digits):
    model, images, _ = digits
    with pytest.raises(ValueError, match="steps"):
        sf.XRAI(model, steps=0)
    with pytest.raises(ValueError, match="min_pixel_diff"):
        sf.XRAI(model, min_pixel_diff=0)
    xrai = sf.XRAI(model, steps=2)
    with pytest.raises(ValueError, match="internal_batch_size"):
        xrai.internal_batch_size = 0
    bad = images.clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="inputs contains NaN or Inf"):
        xrai.attribute(bad)


def test_xrai_of_a_constant_image_is_finite(digits):
    model, images, _ = digits
    flat = torch.full_like(images[:1], 0.5)
    regions = sf.XRAI(model, steps=3).attribute(flat, 0)
    assert regions.shape == (1, 32, 32) and bool(torch.isfinite(regions).all())
