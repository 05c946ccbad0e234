"""RISE and LIME: seeded, batch-independent perturbation methods.

RISE has no package peer (Captum and PAIR do not implement it): it is checked against an
independent, straightforward transcription of the authors' code (github.com/eclique/RISE,
``generate_masks`` and ``explain``: scikit-image ``resize`` per mask, one image at a time), in
float64 on the same random draws. LIME is checked against Captum's ``Lime`` given the same feature
mask and the same on/off samples (Captum fits in float32: agreement to float32), and in float64
against a transcription of the same steps (NumPy, scikit-learn's Lasso).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import saliency_fast as sf
from saliency_fast.methods.rise import rise_masks

from .test_baselines import relative_error

skimage_transform = pytest.importorskip("skimage.transform")


@pytest.fixture(scope="module")
def digits():
    model = sf.models.digits_cnn().double()
    images = sf.data.load_digits("test")[:2][0][:4].double()
    return model, images, model(images).argmax(1)


def rgb_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten(),
                         nn.Linear(36, 5)).double().eval()


# ---------------------------------------------------------------- RISE


def transcribed_masks(grid: np.ndarray, shifts: np.ndarray, height: int, width: int) -> np.ndarray:
    """Petsiuk et al.'s ``generate_masks`` with the grid and shifts given (in float64)."""
    s = grid.shape[1]
    cell_size = np.ceil(np.array((height, width)) / s)
    up_size = (s + 1) * cell_size
    masks = np.empty((len(grid), height, width))
    for i in range(len(grid)):
        x, y = shifts[i]
        masks[i] = skimage_transform.resize(grid[i].astype(np.float64), up_size, order=1, mode="reflect",
                                            anti_aliasing=False)[x : x + height, y : y + width]
    return masks


def transcribed_explain(model, image: torch.Tensor, masks: np.ndarray, p1: float) -> np.ndarray:
    """Their ``explain`` for one (C, H, W) image: the softmax of every masked image, then
    sal = pᵀ · masks / N / p1, for all classes."""
    n, height, width = masks.shape
    stack = torch.from_numpy(masks)[:, None] * image[None]
    with torch.no_grad():
        probabilities = torch.softmax(model(stack), dim=1).numpy()
    return (probabilities.T @ masks.reshape(n, -1)).reshape(-1, height, width) / n / p1


@pytest.mark.parametrize("size", [(32, 32), (30, 23), (7, 9)])
def test_rise_masks_equal_the_authors_generate_masks(size):
    rise = sf.RISE(nn.Identity(), n_masks=30, grid_size=8, p=0.5, seed=3)
    grid, shifts = rise.draws(*size)
    ours = rise_masks(grid, shifts, *size)
    np.testing.assert_allclose(ours.numpy(), transcribed_masks(grid.numpy(), shifts.numpy(), *size), rtol=0, atol=1e-14)
    torch.testing.assert_close(rise.masks_for(*size), ours)


def test_rise_equals_the_authors_explain(digits):
    model, images, target = digits
    rise = sf.RISE(model, n_masks=60, internal_batch_size=50)  # grid 8, p = 0.1: the defaults but N
    masks = rise.masks_for(32, 32).numpy()
    ours = rise.attribute(images, target)
    for i in range(len(images)):
        reference = transcribed_explain(model, images[i], masks, 0.1)[int(target[i])]
        assert relative_error(ours[i], reference) <= 1e-12


def test_rise_rgb_logit_score_against_the_transcription():
    model = rgb_model()
    images = torch.rand(2, 3, 13, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rise = sf.RISE(model, n_masks=25, grid_size=4, p=0.5, score="logit")
    masks = torch.from_numpy(transcribed_masks(*[t.numpy() for t in rise.draws(13, 11)], 13, 11))
    ours = rise.attribute(images, torch.tensor([1, 3]))
    for i, c in enumerate((1, 3)):
        with torch.no_grad():
            scores = model(masks[:, None] * images[i])[:, c]
        reference = torch.einsum("n,nhw->hw", scores, masks) / 25 / 0.5
        assert relative_error(ours[i], reference) <= 1e-12


def test_rise_p_is_the_keep_probability():
    grid, _ = sf.RISE(nn.Identity()).draws(32, 32)  # 400 masks × 64 cells, p = 0.1
    assert grid.shape == (400, 8, 8) and abs(float(grid.double().mean()) - 0.1) < 0.01


def test_rise_is_seeded_batch_independent_and_leaves_the_global_rng_alone(digits):
    model, images, target = digits
    state = torch.get_rng_state()
    together = sf.RISE(model, n_masks=40, seed=5).attribute(images, target)
    assert torch.equal(torch.get_rng_state(), state)
    for i in range(len(images)):
        alone = sf.RISE(model, n_masks=40, seed=5, internal_batch_size=7).attribute(images[i : i + 1], target[i : i + 1])
        torch.testing.assert_close(alone, together[i : i + 1], rtol=1e-12, atol=1e-15)
    assert not torch.allclose(sf.RISE(model, n_masks=40, seed=6).attribute(images, target), together)


def test_rise_bad_arguments_are_named(digits):
    model, images, _ = digits
    for kwargs, name in (({"n_masks": 0}, "n_masks"), ({"grid_size": 0}, "grid_size"), ({"p": 0.0}, "p must"),
                         ({"p": 1.5}, "p must"), ({"score": "softmax"}, "score"), ({"internal_batch_size": 0}, "internal_batch_size"), ({"batch_size": 0}, "batch_size")):
        with pytest.raises(ValueError, match=name):
            sf.RISE(model, **kwargs)
    with pytest.raises(TypeError, match="seed"):
        sf.RISE(model, seed=1.5)
    with pytest.raises(ValueError, match="target"):
        sf.RISE(model, n_masks=2).attribute(images, -1)


# ---------------------------------------------------------------- LIME


def captum_lime(model, image, target, labels, patterns, n_samples):
    captum_attr = pytest.importorskip("captum.attr")

    def perturb(original_inp, **kwargs):  # Captum's generator interface: our samples, in order
        for row in patterns:
            yield row[None].long()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return captum_attr.Lime(model, perturb_func=perturb).attribute(
            image[None], target=target, feature_mask=labels[None, None], n_samples=n_samples,
            perturbations_per_eval=n_samples)[0, 0]


def transcribed_lime(model, image, target, labels, patterns, kernel_width=1.0, alpha=0.01):
    """LIME's steps for one image in NumPy/float64: perturb, score, cosine kernel, Lasso."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    shown = patterns[:, labels]  # (S, H, W)
    perturbed = shown[:, None] * image.numpy()[None]
    with torch.no_grad():
        scores = model(torch.from_numpy(perturbed))[:, target].numpy()
    flat, original = perturbed.reshape(len(patterns), -1), image.numpy().reshape(-1)
    cosine = flat @ original / np.maximum(np.linalg.norm(flat, axis=1) * np.linalg.norm(original), 1e-8)
    weights = np.exp(-((1 - cosine) ** 2) / (2 * kernel_width**2))
    lasso = linear_model.Lasso(alpha=alpha).fit(patterns, scores, sample_weight=weights)
    return lasso.coef_[labels]


def test_lime_matches_captum_given_the_same_mask_and_samples(digits):
    model, images, target = digits
    lime = sf.LIME(model)
    labels = lime.feature_masks(images)
    ours = lime.attribute(images, target)
    assert ours.shape == (len(images), 32, 32)
    for i in range(len(images)):
        patterns = lime.samples(int(labels[i].max()) + 1)
        peer = captum_lime(model, images[i], int(target[i]), labels[i], patterns, 100)
        assert relative_error(ours[i], peer) <= 1e-5  # Captum casts samples, scores and weights to float32


def test_lime_equals_its_transcription_in_float64(digits):
    model, images, target = digits
    lime = sf.LIME(model, n_samples=40, kernel_width=0.5, alpha=0.02, internal_batch_size=30)
    ours = lime.attribute(images, target)
    labels = lime.feature_masks(images).numpy()
    for i in range(len(images)):
        patterns = lime.samples(int(labels[i].max()) + 1).numpy()
        reference = transcribed_lime(model, images[i], int(target[i]), labels[i], patterns, 0.5, 0.02)
        assert relative_error(ours[i], torch.from_numpy(reference)) <= 1e-9


def test_lime_with_a_given_feature_mask_on_rgb_images():
    model = rgb_model(2)
    images = torch.rand(3, 3, 12, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    blocks = (torch.arange(12)[:, None] // 4) * 5 + torch.arange(10)[None, :] // 2  # 3 × 5 blocks, labels 0 … 14
    lime = sf.LIME(model, n_samples=50)
    ours = lime.attribute(images, 2, feature_mask=blocks)
    patterns = lime.samples(15)
    for i in range(3):
        peer = captum_lime(model, images[i], 2, blocks, patterns, 50)
        assert relative_error(ours[i], peer) <= 1e-5
    relabelled = lime.attribute(images, 2, feature_mask=(blocks * 3 + 7).expand(3, 12, 10))
    torch.testing.assert_close(relabelled, ours, rtol=1e-12, atol=1e-15)  # labels need not be 0 … F − 1


@pytest.mark.parametrize("segmentation", ["slic", "quickshift"])
def test_lime_is_seeded_and_batch_independent(digits, segmentation):
    model, images, target = digits
    state = torch.get_rng_state()
    together = sf.LIME(model, n_samples=30, segmentation=segmentation, seed=4).attribute(images, target)
    assert torch.equal(torch.get_rng_state(), state)
    for i in range(len(images)):
        alone = sf.LIME(model, n_samples=30, segmentation=segmentation, seed=4, internal_batch_size=9).attribute(
            images[i : i + 1], target[i : i + 1])
        torch.testing.assert_close(alone, together[i : i + 1], rtol=1e-12, atol=1e-15)


def test_lime_bad_arguments_are_named(digits):
    model, images, _ = digits
    for kwargs, name in (({"n_samples": 0}, "n_samples"), ({"segmentation": "watershed"}, "segmentation"),
                         ({"kernel_width": 0.0}, "kernel_width"), ({"alpha": -1.0}, "alpha"),
                         ({"score": "prob"}, "score"), ({"internal_batch_size": 0}, "internal_batch_size"), ({"batch_size": 0}, "batch_size")):
        with pytest.raises(ValueError, match=name):
            sf.LIME(model, **kwargs)
    lime = sf.LIME(model, n_samples=4)
    with pytest.raises(ValueError, match="feature_mask must have shape"):
        lime.attribute(images, feature_mask=torch.zeros(5, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="feature_mask must be an integer tensor"):
        lime.attribute(images, feature_mask=torch.zeros(32, 32))


def test_lime_warns_when_the_segmentation_finds_a_single_superpixel():
    """Pixel noise is one SLIC superpixel: the constant map must not pass silently."""
    pytest.importorskip("skimage")
    noise = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, 4)).double()
    with pytest.warns(RuntimeWarning, match="found one superpixel in image"):
        sf.LIME(model, n_samples=8).attribute(noise, 0)
