"""Benchmarks at ImageNet size: ResNet-18, a batch of 8 images of 3×224×224 (random weights; the
architecture and cost of torchvision's resnet18, built here so the group runs without torchvision).

    .venv/bin/python -m pytest bench/test_bench_224.py --benchmark-only --benchmark-group-by=group

Groups (each ratio from interleaved pairs, so that load drift on a shared machine cancels):
- ``224² SAMP++ / model-only bound``: SAMP++ (momentum 0.5, ``n_frag`` = ``SAMP_FRAGMENTS``, ``pixels_per_step`` = H·W /
  ``SAMP_STEPS``, a few steps a path, to keep a round short) against the same forward + input-gradient calls replayed on the
  inputs it made: the ratio is SAMP++'s own work per step.
- ``224² Deletion/Insertion / model-only bound``: sf.metrics.deletion_insertion (both paths,
  ``PIXELS_PER_STEP``) against the same forward calls replayed.
- ``224² Grad-CAM vs Captum``, ``224² CAM vs TorchCAM``: each against its peer on the same work.
extra_info records the peak CUDA memory where the device is a GPU.
"""
import pytest
import torch
from torch import nn

import saliency_fast as sf
from saliency_fast import metrics

from .interleaved import interleaved_ratios, record_inputs, record_ratios
from saliency_fast._common import input_gradient

BATCH, SIDE = 8, 224
SAMP_STEPS = 2
SAMP_FRAGMENTS = 5  # SAMP++ makes one model call per fragment: 50 would be 50 calls a step
PIXELS_PER_STEP = SIDE * SIDE // 4  # 5 curve points a path: 80 images a path for the batch of 8
ROUNDS = 3
CAM_ROUNDS = 15  # a pair is one or two forward passes: cheap, and a ratio near 1 needs many pairs to settle


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    """torchvision.models.resnet18's layers, names and shapes (tests/test_models_scale.py checks
    that torchvision's state_dict loads into it and gives the same logits)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        for index, (inplanes, planes, stride) in enumerate(widths, start=1):
            setattr(self, f"layer{index}", nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes)))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return sf.models.Normalized(ResNet18()).to(DEVICE).eval()


@pytest.fixture(scope="module")
def work(model):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(BATCH, 3, SIDE, SIDE, generator=generator).to(DEVICE)
    with torch.no_grad():
        target = model(images).argmax(1)
    return images, target


def _peak_memory(benchmark):
    if DEVICE == "cuda":
        benchmark.extra_info["peak CUDA memory (MiB)"] = round(torch.cuda.max_memory_allocated() / 2**20)
        torch.cuda.reset_peak_memory_stats()


def _replay_gradients(model, inputs, target):
    for x in inputs:
        input_gradient(model, x, target[: x.shape[0]])


def _replay_forwards(model, inputs):
    with torch.no_grad():
        for x in inputs:
            model(x)


def test_samp_plus_vs_model_only_bound(benchmark, model, work):
    benchmark.group = "224² SAMP++ / model-only bound"
    images, target = work
    samp = sf.SAMP.plus(model, pixels_per_step=SIDE * SIDE // SAMP_STEPS, n_frag=SAMP_FRAGMENTS)
    recorded = record_inputs(model, lambda: samp.attribute(images, target), only_with_grad=True)
    ratios = interleaved_ratios(benchmark, lambda: samp.attribute(images, target),
                                lambda: _replay_gradients(model, recorded, target), ROUNDS)
    record_ratios(benchmark, "SAMP++ / bound", ratios)
    benchmark.extra_info.update(model_calls=len(recorded), batch=BATCH, side=SIDE, pixels_per_step=SIDE * SIDE // SAMP_STEPS,
                                  n_frag=SAMP_FRAGMENTS)
    _peak_memory(benchmark)


def test_deletion_insertion_vs_model_only_bound(benchmark, model, work):
    benchmark.group = "224² Deletion/Insertion / model-only bound"
    images, target = work
    maps = torch.rand(images.shape[0], SIDE, SIDE, generator=torch.Generator().manual_seed(1)).to(DEVICE)

    def candidate():
        return metrics.deletion_insertion(model, images, maps, target=target, pixels_per_step=PIXELS_PER_STEP)

    recorded = record_inputs(model, candidate)
    ratios = interleaved_ratios(benchmark, candidate, lambda: _replay_forwards(model, recorded), ROUNDS)
    record_ratios(benchmark, "Deletion/Insertion / bound", ratios)
    benchmark.extra_info.update(model_calls=len(recorded), images=sum(len(x) for x in recorded))
    _peak_memory(benchmark)


def test_gradcam_vs_captum(benchmark, model, work):
    captum = pytest.importorskip("captum.attr")
    benchmark.group = "224² Grad-CAM vs Captum"
    images, target = work
    layer = model.model.layer4
    ours = sf.GradCAM(model, layer)

    def peer():
        maps = captum.LayerGradCam(model, layer).attribute(images, target=target, relu_attributions=True)
        return captum.LayerAttribution.interpolate(maps, (SIDE, SIDE), interpolate_mode="bilinear")[:, 0]

    torch.testing.assert_close(ours.attribute(images, target), peer(), rtol=1e-4, atol=1e-6)
    ratios = interleaved_ratios(benchmark, lambda: ours.attribute(images, target), peer, CAM_ROUNDS)
    record_ratios(benchmark, "ours / Captum", ratios)
    _peak_memory(benchmark)


def test_cam_vs_torchcam(benchmark, model, work):
    torchcam = pytest.importorskip("torchcam.methods")
    benchmark.group = "224² CAM vs TorchCAM"
    images, target = work
    ours = sf.CAM(model, "layer4", upsample=False)
    extractor = torchcam.CAM(model, "model.layer4", "model.fc", input_shape=(3, SIDE, SIDE))

    def peer():
        with torch.no_grad():
            model(images)
        return extractor(target.tolist(), normalized=False)[0]

    try:
        torch.testing.assert_close(ours.attribute(images, target), peer(), rtol=1e-4, atol=1e-6)
        ratios = interleaved_ratios(benchmark, lambda: ours.attribute(images, target), peer, CAM_ROUNDS)
    finally:
        extractor.remove_hooks()
    record_ratios(benchmark, "ours / TorchCAM", ratios)
