"""Benchmarks of one RES-G training step (pytest-benchmark).

    .venv/bin/python -m pytest bench/test_bench_res.py --benchmark-only --benchmark-group-by=group

Group ``res_step`` — batch 20 of annotated digits with decoys (positive and negative masks),
28×28 inputs, DigitsCNN with Grad-CAM at ``features.5`` (7×7 maps, the size of ResNet-50's
layer4 maps at 224×224 in the released experiments), Adam; every step = loss, backward,
optimiser step:

- ``plain``: cross-entropy only (the lower bound: one forward and one backward of the batch).
- ``sf_res_g``: sf.train.RES("G"): Grad-CAM of the whole batch from the training forward, the
  vectorised threshold.
- ``released_res_g``: the released script's approach on the same model, batch and masks: one
  extra forward + backward per image (batch of one) for its Grad-CAM, a channel loop for the
  cam, and the O(n²) Python threshold search (BF_solver), transcribed.
- ``released_gradcam_fast_threshold``: the same with sf's vectorised threshold, to separate the
  cost of the per-image Grad-CAM passes from that of the threshold loop.

The model has no BatchNorm, so both RES-G steps compute the same loss; a check asserts it.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from saliency_fast.data.annotated import annotated_digits
from saliency_fast.models import DigitsCNN
from saliency_fast.train import Plain, RES
from saliency_fast.train.res_losses import explanation_threshold, gaussian_target, signed_target

BATCH, SIDE, LAYER = 20, 28, "features.5"
ROUNDS = 3


@pytest.fixture(scope="module")
def batch():
    data = annotated_digits("train", n_images=BATCH, decoy=True, size=SIDE, digit_size=20, seed=0)
    return data.images, data.labels, data.positive, data.negative, data.has_mask


def fresh_model():
    torch.manual_seed(0)
    return DigitsCNN(image_size=SIDE)


# --- the released script's approach, transcribed ---------------------------------------------------
def released_gradcam(model, image, label):
    """Grad-CAM of one image: its own forward (batch of one), backward to the layer, channel loop."""
    layer = model.get_submodule(LAYER)
    saved = {}

    def keep(module, args, output):
        saved["activation"] = output
        output.register_hook(lambda grad: saved.__setitem__("grad", grad))

    handle = layer.register_forward_hook(keep)
    try:
        output = model(image.unsqueeze(0))
    finally:
        handle.remove()
    one_hot = torch.zeros_like(output)
    one_hot[0, label] = 1
    model.zero_grad()
    (one_hot * output).sum().backward(retain_graph=True)
    weights = saved["grad"].mean(dim=(2, 3))[0]
    target = saved["activation"][0]
    cam = torch.zeros(target.shape[1:])
    for index, weight in enumerate(weights):
        cam = cam + weight * target[index]
    cam = cam - cam.min()
    return cam / (cam.max() + 1e-6)


def released_threshold(maps, labels):
    """BF_solver of the released script: two nested Python loops over the annotated cells."""
    epsilon = 1e-4
    with torch.no_grad():
        x, y = maps.flatten(), labels.flatten()
        negatives = (y < 0).nonzero(as_tuple=True)[0]
        positives = (y > 0).nonzero(as_tuple=True)[0]
        best, best_score = 0, 0.0
        for candidates, offset in ((negatives, epsilon), (positives, 0.0)):
            for index in candidates:
                v = x[index] + offset
                score = 0.0
                for other in negatives:
                    score += (v > x[other]).float() / len(negatives)
                for other in positives:
                    score += (v <= x[other]).float() / len(positives)
                if score > best_score:
                    best, best_score = v, score
    return torch.tensor([float(best)])


def released_res_g_loss(model, x, y, positive, negative, has_mask, eta=0.1, threshold=released_threshold):
    outputs = model(x)
    maps, labels = [], []
    for image, label, pos, neg, annotated in zip(x, y, positive, negative, has_mask):
        if annotated:
            maps.append(released_gradcam(model, image, int(label)))
            labels.append((pos, neg))
    maps = torch.stack(maps)
    size = tuple(maps.shape[-2:])
    target = signed_target(torch.stack([p for p, _ in labels]), torch.stack([n for _, n in labels]), size)
    a = threshold(maps, target)
    error = (torch.tanh(5 * (maps - a)) - target).abs()
    effective = (target != 0).float()
    align = (error * effective).sum() / effective.sum()
    blurred = gaussian_target(target)
    return F.cross_entropy(outputs, y) + F.relu(align - eta) + (maps - blurred).abs().mean()


# --- steps ---------------------------------------------------------------------------------------------
def train_step(model, optimizer, loss_of):
    model.train()
    loss = loss_of()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def test_released_and_sf_losses_agree(batch):
    model = fresh_model()
    ours = RES("G", layer=LAYER).loss(model, batch, 0).loss
    theirs = released_res_g_loss(model, *batch)
    assert math.isclose(float(ours.detach()), float(theirs.detach()), rel_tol=1e-5)


@pytest.mark.benchmark(group="res_step")
def test_plain_step(benchmark, batch):
    model = fresh_model()
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    method = Plain()
    benchmark.pedantic(train_step, args=(model, optimizer, lambda: method.loss(model, batch, 0).loss),
                       rounds=ROUNDS * 10, iterations=1, warmup_rounds=2)


@pytest.mark.benchmark(group="res_step")
def test_sf_res_g_step(benchmark, batch):
    model = fresh_model()
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    method = RES("G", layer=LAYER)
    benchmark.pedantic(train_step, args=(model, optimizer, lambda: method.loss(model, batch, 0).loss),
                       rounds=ROUNDS * 10, iterations=1, warmup_rounds=2)


@pytest.mark.benchmark(group="res_step")
def test_released_res_g_step(benchmark, batch):
    model = fresh_model()
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    benchmark.pedantic(train_step, args=(model, optimizer, lambda: released_res_g_loss(model, *batch)),
                       rounds=2, iterations=1, warmup_rounds=0)


@pytest.mark.benchmark(group="res_step")
def test_released_gradcam_fast_threshold_step(benchmark, batch):
    model = fresh_model()
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    benchmark.pedantic(train_step, args=(model, optimizer,
                                         lambda: released_res_g_loss(model, *batch, threshold=explanation_threshold)),
                       rounds=ROUNDS * 3, iterations=1, warmup_rounds=1)
