"""The CAM family: Grad-CAM++ against pytorch-grad-cam and an independent transcription of its
formula, CAM against TorchCAM, ``layer=None`` (the layer found and logged), token layers with
``reshape_transform`` and the errors for architectures a method does not fit. Float64, tiny models
(the torchvision/timm models at 224² are in test_models_scale.py).
"""
from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import saliency_fast as sf
from saliency_fast._common import minmax_normalize
from saliency_fast.methods.gradcam import find_cam_layer, gradcam_maps, layer_name

BATCH, CHANNELS, SIDE, CLASSES = 2, 3, 12, 5


def relative_error(ours, peer) -> float:
    peer = torch.as_tensor(np.asarray(peer) if not isinstance(peer, torch.Tensor) else peer).detach().double()
    return float((ours.detach().double() - peer).abs().max() / peer.abs().max().clamp_min(1e-300))


def gap_cnn(seed: int = 0) -> nn.Sequential:
    """conv → ReLU → conv → ReLU → global average pool → linear: the architecture CAM is defined for."""
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(CHANNELS, 6, 3, padding=1), act1=nn.ReLU(inplace=True),
        conv2=nn.Conv2d(6, 8, 3, stride=2, padding=1), act2=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(8, CLASSES),
    )).double().eval()


class TinyViT(nn.Module):
    """A ViT in miniature, laid out as timm's: patch_embed.proj (conv), a class token, blocks of
    norm1 → attention → norm2 → MLP with residuals, a final norm, the head on the class token."""

    def __init__(self, width: int = 8, patch: int = 4, depth: int = 2, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(CHANNELS, width, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width))
        self.pos_embed = nn.Parameter(0.1 * torch.randn(1, 1 + (SIDE // patch) ** 2, width))
        self.blocks = nn.ModuleList(_Block(width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, CLASSES)

    def forward(self, x):
        tokens = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens)[:, 0])


class _Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x):
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


@pytest.fixture
def inputs():
    torch.manual_seed(1)
    return torch.rand(BATCH, CHANNELS, SIDE, SIDE, dtype=torch.float64)


def layer_and_gradient(model: nn.Sequential, split: int, inputs, target):
    """A = model[:split](x) and ∂logit_target/∂A by splitting the Sequential: no hooks involved."""
    activation = model[:split](inputs).detach().requires_grad_(True)
    logits = model[split:](activation)
    (grad,) = torch.autograd.grad(logits.gather(1, target.view(-1, 1)).sum(), activation)
    return activation.detach().numpy(), grad.numpy()


def gradcam_plus_plus_transcribed(activation: np.ndarray, grad: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Chattopadhay et al. Eq. 19 written out pixel by pixel, with pytorch-grad-cam's eps and its
    zero-gradient rule: α = g² / (2g² + Σ_ab A_ab · g³ + eps), w_k = Σ_ij α_ij relu(g_ij)."""
    batch, channels, height, width = activation.shape
    cam = np.zeros((batch, height, width))
    for b in range(batch):
        for k in range(channels):
            total = activation[b, k].sum()
            weight = 0.0
            for i in range(height):
                for j in range(width):
                    g = grad[b, k, i, j]
                    if g != 0:
                        weight += g ** 2 / (2 * g ** 2 + total * g ** 3 + eps) * max(g, 0.0)
            cam[b] += weight * activation[b, k]
    return np.maximum(cam, 0.0)


@pytest.mark.parametrize("split", [2, 4])  # after the in-place ReLU act1, after act2
def test_gradcam_plus_plus_equals_the_transcribed_formula(inputs, split):
    model = gap_cnn()
    target = torch.tensor([1, 3])
    layer = list(model.named_children())[split - 1][0]
    ours = sf.GradCAMPlusPlus(model, layer, upsample=False).attribute(inputs, target)
    expected = gradcam_plus_plus_transcribed(*layer_and_gradient(model, split, inputs, target))
    assert relative_error(ours, expected) <= 1e-12


def test_gradcam_plus_plus_equals_pytorch_grad_cam(inputs):
    grad_cam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = gap_cnn()
    target = torch.tensor([1, 3])
    peer = grad_cam.GradCAMPlusPlus(model, [model.act2])
    peer(inputs, [ClassifierOutputTarget(int(t)) for t in target])  # fills its activations and gradients
    activation = peer.activations_and_grads.activations[0].numpy()
    grad = peer.activations_and_grads.gradients[0].numpy()
    peer_map = np.maximum(peer.get_cam_image(inputs, model.act2, None, activation, grad), 0)
    assert peer_map.dtype == np.float64
    ours = sf.GradCAMPlusPlus(model, "act2", upsample=False).attribute(inputs, target)
    assert relative_error(ours, peer_map) <= 1e-12
    # its returned map: min–max scaled per image and resized (cv2, float32) to the input size
    scaled = peer(inputs, [ClassifierOutputTarget(int(t)) for t in target])
    upsampled = sf.GradCAMPlusPlus(model, "act2").attribute(inputs, target)
    np.testing.assert_allclose(minmax_normalize(upsampled).numpy(), scaled, atol=1e-5)


def test_cam_equals_torchcam(inputs):
    torchcam = pytest.importorskip("torchcam.methods")
    model = gap_cnn()
    target = [4, 0]
    with torchcam.CAM(model, "act2", "fc", input_shape=(CHANNELS, SIDE, SIDE)) as extractor:
        with torch.no_grad():
            model(inputs)
        (peer,) = extractor(target, normalized=False)
    ours = sf.CAM(model, "act2", upsample=False).attribute(inputs, torch.tensor(target))
    assert relative_error(ours, peer) <= 1e-12
    assert torch.equal(sf.CAM(model, upsample=False).attribute(inputs, torch.tensor(target)), ours)  # layer=None finds it
    assert torch.equal(sf.CAM(model, "act2", relu=True, upsample=False).attribute(inputs, torch.tensor(target)),
                       ours.clamp_min(0))


def test_cam_is_gradcam_for_a_gap_linear_head(inputs):
    """With global average pooling into a linear head, ∂logit_c/∂A_kij = W[c, k] / (h·w): Grad-CAM's
    weights are the CAM weights divided by h·w, so the maps agree up to that factor."""
    model = gap_cnn()
    cam = sf.CAM(model, "act2", upsample=False).attribute(inputs, 2)
    gradcam = sf.GradCAM(model, "act2", relu=False, upsample=False).attribute(inputs, 2)
    assert relative_error(gradcam * cam.shape[1] * cam.shape[2], cam) <= 1e-12


def test_layer_none_finds_the_last_conv_stage_and_logs_it(inputs, caplog):
    model = gap_cnn()
    with caplog.at_level(logging.WARNING, logger="saliency_fast"):
        method = sf.GradCAMPlusPlus(model)
        maps = method.attribute(inputs, 1)
    assert method.layer is model.act2  # the last module of the conv stage whose output is a map
    assert "layer=None → using layer 'act2'" in caplog.text
    assert torch.equal(maps, sf.GradCAMPlusPlus(model, "act2").attribute(inputs, 1))
    digits = sf.models.DigitsCNN().double().eval()  # a declared GRADCAM_LAYER wins
    assert find_cam_layer(digits, torch.rand(1, 1, 32, 32, dtype=torch.float64)) == ("features.4", None)


def test_vit_tokens_with_layer_none(inputs, caplog):
    model = TinyViT().double().eval()
    with caplog.at_level(logging.WARNING, logger="saliency_fast"):
        method = sf.GradCAM(model)
        maps = method.attribute(inputs, 2)
    # the last block's output reaches the class token only through its own row: norm1 of the last block
    assert layer_name(model, method.layer) == "blocks.1.norm1"
    assert method.reshape_transform == sf.vit_reshape_transform
    assert "reshape_transform=ViTReshape(prefix_tokens=1)" in caplog.text
    assert maps.shape == (BATCH, SIDE, SIDE) and bool((maps > 0).any())
    # the same map by hand: the tokens of norm1 and their gradient, laid out as a 3×3 grid
    tokens = {}
    handle = model.blocks[1].norm1.register_forward_hook(lambda m, a, out: tokens.setdefault("out", out))
    x = inputs.clone().requires_grad_(True)
    logits = model(x)
    handle.remove()
    (grad,) = torch.autograd.grad(logits[:, 2].sum(), tokens["out"])
    activation, grad = tokens["out"][:, 1:].detach(), grad[:, 1:]
    cam = torch.relu((grad.mean(1, keepdim=True) * activation).sum(2)).reshape(BATCH, 1, 3, 3)
    expected = torch.nn.functional.interpolate(cam, size=(SIDE, SIDE), mode="bilinear", align_corners=False)[:, 0]
    assert relative_error(maps, expected) <= 1e-12


def test_vit_reshape_layout_matches_pytorch_grad_cam():
    tokens = torch.arange(2 * 10 * 3, dtype=torch.float64).reshape(2, 10, 3)
    # pytorch-grad-cam's vit_reshape_transform, transcribed: tokens[:, 1:].reshape(B, h, w, D) → (B, D, h, w)
    expected = tokens[:, 1:, :].reshape(2, 3, 3, 3).transpose(2, 3).transpose(1, 2)
    assert torch.equal(sf.vit_reshape_transform(tokens), expected)
    assert torch.equal(sf.ViTReshape(prefix_tokens=0)(tokens[:, 1:]), expected)
    with pytest.raises(ValueError, match="not a square grid.*prefix_tokens"):
        sf.vit_reshape_transform(tokens[:, :8])
    with pytest.raises(ValueError, match=r"ViT tokens must have shape"):
        sf.vit_reshape_transform(torch.zeros(2, 3, 4, 4))


def test_token_layer_without_reshape_transform_says_what_to_pass(inputs):
    model = TinyViT().double().eval()
    with pytest.raises(ValueError, match="reshape_transform"):
        sf.GradCAM(model, "blocks.1.norm1").attribute(inputs)
    explicit = sf.GradCAM(model, "blocks.1.norm1", reshape_transform="vit").attribute(inputs, 1)
    assert torch.equal(explicit, sf.GradCAM(model).attribute(inputs, 1))
    with pytest.raises(ValueError, match="reshape_transform must be"):
        sf.GradCAM(model, reshape_transform="swin")


def test_gradcam_maps_accepts_a_reshape_transform(inputs):
    model = TinyViT().double().eval()
    cam, logits = gradcam_maps(model, inputs, None, "blocks.1.norm1", reshape_transform=sf.vit_reshape_transform)
    assert cam.shape == (BATCH, 3, 3) and logits.shape == (BATCH, CLASSES)


def test_no_suitable_layer_is_a_clear_error(inputs):
    model = sf.models.LinearModel((CHANNELS, SIDE, SIDE), CLASSES).double()
    with pytest.raises(ValueError, match="found no layer for the CAM methods.*pass layer="):
        sf.GradCAM(model).attribute(inputs)
    dead = gap_cnn()
    nn.init.zeros_(dead.fc.weight)  # every gradient is zero: no layer the logit depends on
    with pytest.raises(ValueError, match="zero gradient at every candidate layer"):
        sf.GradCAM(dead).attribute(inputs)


def test_cam_refuses_architectures_without_gap_and_linear(inputs):
    torch.manual_seed(0)
    pooled_2x2 = nn.Sequential(nn.Conv2d(CHANNELS, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                               nn.Linear(16, CLASSES)).double().eval()
    with pytest.raises(ValueError, match="global average is the input of the final linear layer"):
        sf.CAM(pooled_2x2).attribute(inputs)
    with pytest.raises(ValueError, match="global average of the layer's output"):
        sf.CAM(pooled_2x2, "1").attribute(inputs)
    no_linear = nn.Sequential(nn.Conv2d(CHANNELS, CLASSES, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).double()
    with pytest.raises(ValueError, match="needs a final nn.Linear"):
        sf.CAM(no_linear)
    model = gap_cnn()
    with pytest.raises(ValueError, match="fc must name an nn.Linear"):
        sf.CAM(model, fc="conv2")
    scaled = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    with pytest.raises(ValueError, match="output of fc is not the model's logits"):
        sf.CAM(scaled).attribute(inputs)


@pytest.mark.parametrize("method", [sf.CAM, sf.GradCAM, sf.GradCAMPlusPlus])
def test_maps_are_batch_independent(inputs, method):
    model = gap_cnn()
    together = method(model, "act2").attribute(inputs, 3)
    alone = torch.cat([method(model, "act2").attribute(inputs[i : i + 1], 3) for i in range(BATCH)])
    assert relative_error(together, alone) <= 1e-12
