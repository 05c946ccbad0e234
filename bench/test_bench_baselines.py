"""The six newer baselines against their peer implementations (pytest-benchmark), on the shipped
DigitsCNN and test digits (1×32×32, float32, predicted class):

    .venv/bin/python -m pytest bench/test_bench_baselines.py --benchmark-only

Each group times ours and the peer back to back in interleaved pairs (bench/interleaved.py), so
that load drift on a shared machine cancels; extra_info holds the median and range of our time /
the peer's (below 1: ours is faster), in wall time and in CPU time (``time.process_time``). Both sides do the same work at the same settings:

- LRP (ε = 1e-9) vs Captum ``LRP``, 64 digits (Captum on the digits CNN with ``torch.flatten`` in
  place of ``nn.Flatten``, for which it has no rule).
- DeepLift (zero baseline) vs Captum ``DeepLift``, 64 digits.
- RISE (400 masks, 8×8, p = 0.1) vs the authors' ``explain`` (github.com/eclique/RISE: per
  image, masked copies in batches of 100, softmax, masksᵀ · scores); both reuse masks
  made beforehand (the authors' ``generate_masks`` runs once, as our cache does), 8 digits.
- LIME (100 samples) vs Captum ``Lime`` (``perturbations_per_eval`` = 100: all samples of an image
  in one model call), 8 digits, both given the same SLIC feature masks (segmentation excluded).
- XRAI (PAIR defaults: IG 100 steps × 2 baselines, Felzenszwalb at 6 scales) vs PAIR ``XRAI``
  (``batch_size`` = 100: one model call per IG path), 2 digits; both segment every image.
- Blur IG (PAIR defaults: 100 steps, max σ 50) vs PAIR ``BlurIG`` (``batch_size`` = 100), 4 digits.

Each pair but DeepLift's and LIME's (random samples) also checks that both give the same maps.
"""
import statistics
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import saliency_fast as sf

from .digits import digits_work
from .interleaved import interleaved_ratios, record_ratios, timed_rounds

captum_attr = pytest.importorskip("captum.attr")
pair = pytest.importorskip("saliency.core")
pytest.importorskip("skimage")

ROUNDS = 3


class FunctionalFlatten(nn.Module):
    """The digits CNN with ``torch.flatten`` for its ``nn.Flatten`` (Captum's LRP has no rule for it)."""

    def __init__(self, model):
        super().__init__()
        self.features, self.linear = model.features, model.classifier[1]

    def forward(self, x):
        return self.linear(torch.flatten(self.features(x), 1))


@pytest.fixture(scope="module", name="work")
def work_fixture():
    return digits_work(64)


def pair_call_model_function(model):
    def call(x_batch, call_model_args=None, expected_keys=None):
        x = torch.from_numpy(np.ascontiguousarray(x_batch)).permute(0, 3, 1, 2).float().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(x)[:, call_model_args].sum(), x)
        return {pair.base.INPUT_OUTPUT_GRADIENTS: grad.permute(0, 2, 3, 1).numpy()}

    return call


def rise_explain(model, images, target, masks, p1, gpu_batch=100):
    """Petsiuk et al.'s ``explain`` per image (their class's loop, torch): the target's row."""
    n, height, width = masks.shape
    maps = []
    with torch.no_grad():
        for image, c in zip(images, target.tolist()):
            stack = masks[:, None] * image
            p = torch.cat([torch.softmax(model(stack[i : i + gpu_batch]), dim=1) for i in range(0, n, gpu_batch)])
            maps.append((p.t() @ masks.view(n, -1))[c].view(height, width) / n / p1)
    return torch.stack(maps)


def compare(benchmark, ours, theirs, label):
    """Interleaved pairs: wall-time ratios (bench/interleaved.py), and the same pairs' CPU-time
    ratios (``time.process_time``, all threads): on a machine shared with other jobs the wall
    time mostly measures the others' load, the CPU time the work each side does."""

    def timed(function, seconds):
        def call():
            start = time.process_time()
            function()
            seconds.append(time.process_time() - start)
        return call

    ours_cpu, theirs_cpu = [], []
    ratios = interleaved_ratios(benchmark, timed(ours, ours_cpu), timed(theirs, theirs_cpu), rounds=ROUNDS)
    record_ratios(benchmark, label, ratios)
    cpu_ratios = timed_rounds(benchmark, [a / b for a, b in zip(ours_cpu, theirs_cpu)])
    benchmark.extra_info[f"median CPU-time ratio {label}"] = round(statistics.median(cpu_ratios), 3)
    benchmark.extra_info["CPU-time ratio range"] = f"{cpu_ratios[0]:.3f}–{cpu_ratios[-1]:.3f}"


def assert_close_maps(ours, theirs, rtol=1e-4):
    ours, theirs = torch.as_tensor(ours).double(), torch.as_tensor(theirs).double()
    assert float((ours - theirs).abs().max() / theirs.abs().max()) <= rtol


def test_lrp_vs_captum(benchmark, work):
    benchmark.group = "LRP / Captum LRP, interleaved pairs: 64 digits, DigitsCNN"
    model, images, target = work
    ours, peer = sf.LRP(model), captum_attr.LRP(FunctionalFlatten(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_close_maps(ours.attribute(images, target, reduce_channels=False), peer.attribute(images, target=target))
        compare(benchmark, lambda: ours.attribute(images, target), lambda: peer.attribute(images, target=target),
                "ours / Captum")


def test_deeplift_vs_captum(benchmark, work):
    benchmark.group = "DeepLift / Captum DeepLift, interleaved pairs: 64 digits, DigitsCNN"
    model, images, target = work
    ours, peer = sf.DeepLift(model), captum_attr.DeepLift(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # No map check: Captum 0.9's DeepLift is wrong where ReLU feeds MaxPool (captum #1104), as here.
        compare(benchmark, lambda: ours.attribute(images, target), lambda: peer.attribute(images, target=target),
                "ours / Captum")


def test_rise_vs_authors_explain(benchmark, work):
    benchmark.group = "RISE / the authors' explain, interleaved pairs: 8 digits, 400 masks, DigitsCNN"
    model, images, target = work
    images, target = images[:8], target[:8]
    rise = sf.RISE(model)
    masks = rise.masks_for(32, 32, images.dtype)
    assert_close_maps(rise.attribute(images, target), rise_explain(model, images, target, masks, rise.p))
    compare(benchmark, lambda: rise.attribute(images, target), lambda: rise_explain(model, images, target, masks, rise.p),
            "ours / authors'")


def test_lime_vs_captum(benchmark, work):
    benchmark.group = "LIME / Captum Lime, interleaved pairs: 8 digits, 100 samples, DigitsCNN"
    model, images, target = work
    images, target = images[:8], target[:8]
    lime = sf.LIME(model)
    labels = lime.feature_masks(images)
    peer = captum_attr.Lime(model)

    def theirs():
        return torch.cat([peer.attribute(images[i : i + 1], target=int(target[i]), feature_mask=labels[i][None, None],
                                         n_samples=100, perturbations_per_eval=100) for i in range(len(images))])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compare(benchmark, lambda: lime.attribute(images, target, feature_mask=labels), theirs, "ours / Captum")


def test_xrai_vs_pair(benchmark, work):
    benchmark.group = "XRAI / PAIR XRAI, interleaved pairs: 2 digits, DigitsCNN"
    model, images, target = work
    images, target = images[:2], target[:2]
    xrai, call = sf.XRAI(model), pair_call_model_function(model)

    def theirs():
        return np.stack([pair.XRAI().GetMask(images[i].permute(1, 2, 0).numpy(), call, call_model_args=int(target[i]),
                                             batch_size=100) for i in range(len(images))])

    assert_close_maps(xrai.attribute(images, target), theirs(), rtol=1e-3)  # PAIR's IG sums in float32
    compare(benchmark, lambda: xrai.attribute(images, target), theirs, "ours / PAIR")


def test_blur_ig_vs_pair(benchmark, work):
    benchmark.group = "Blur IG / PAIR BlurIG, interleaved pairs: 4 digits, DigitsCNN"
    model, images, target = work
    images, target = images[:4], target[:4]
    blur_ig, call = sf.BlurIG(model), pair_call_model_function(model)

    def theirs():
        return np.stack([pair.BlurIG().GetMask(images[i].permute(1, 2, 0).numpy().astype(np.float64), call,
                                               call_model_args=int(target[i]), batch_size=100)
                         for i in range(len(images))])

    assert_close_maps(blur_ig.attribute(images, target, reduce_channels=False).permute(0, 2, 3, 1), theirs(), rtol=1e-3)
    compare(benchmark, lambda: blur_ig.attribute(images, target), theirs, "ours / PAIR")
