"""Grad-CAM (Selvaraju et al. 2017) at a chosen layer, as Captum's LayerGradCam.

cam = Σ_k w_k A_k with w_k the spatial mean of ∂logit_c/∂A_k, A the layer's output. One
forward pass with a hook captures A and one backward pass gives its gradient.
``gradcam_maps`` is the reusable core (the RES trainer calls it inside its training graph);
``GradCAM`` is the attribution method (ReLU, bilinear upsampling to the input size).
"""
from __future__ import annotations

import difflib
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._common import Target, target_from_logits
from ._base import AttributionMethod

Layer = Union[str, nn.Module]


def resolve_layer(model: nn.Module, layer: Layer) -> nn.Module:
    """The submodule ``layer`` names (a dotted name such as "layer4" or "features.3") or is."""
    if isinstance(layer, nn.Module):
        if not any(module is layer for module in model.modules()):
            raise ValueError("layer is a module that is not part of the model; pass one of model's submodules")
        return layer
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a submodule of the model or its dotted name, got {type(layer).__name__}")
    names = [name for name, _ in model.named_modules() if name]
    if layer in names:
        return model.get_submodule(layer)
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5) or names[:10]
    raise ValueError(f"layer {layer!r} is not a submodule of the model; close names: {', '.join(close) or '(none)'}")


class _ActivationCapture:
    """Forward hook that records a layer's (B, K, h, w) output as a tensor autograd can reach.

    When nothing upstream requires grad (frozen parameters, plain inputs), the output is
    made a leaf that requires grad, so the backward pass stops at the layer. The model
    continues with a clone, so in-place operations after the layer (ReLU(inplace=True))
    cannot change the recorded activations (Captum clones for the same reason).
    """

    def __init__(self, module: nn.Module):
        self.activation: Tensor | None = None
        self.calls = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args, output):
        if not isinstance(output, Tensor) or output.dim() != 4:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(f"layer must output a (B, K, h, w) tensor for Grad-CAM, got {shape}")
        self.calls += 1
        activation = output if output.requires_grad else output.detach().requires_grad_(True)
        self.activation = activation
        return activation.clone()


def gradcam_maps(
    model: nn.Module,
    inputs: Tensor,
    target: Target,
    layer: Layer,
    create_graph: bool = False,
    detach_weights: bool = True,
    relu: bool = True,
) -> tuple[Tensor, Tensor]:
    """Grad-CAM maps at the layer's resolution (B, h, w) and the logits, from ONE forward pass.

    The model's mode and parameters are left as they are (the trainer calls this in train
    mode). The logits' graph is retained, so a caller can add a loss on them and on the maps
    and backpropagate once. With ``detach_weights`` (default) the channel weights w_k are
    constants, and the maps reach the network only through the activations A, as in RES.
    ``create_graph=True`` keeps the graph of ∂logit/∂A (needed with ``detach_weights=False``
    for gradients through the weights). ``target`` None explains the predicted class.
    """
    module = resolve_layer(model, layer)
    capture = _ActivationCapture(module)
    try:
        with torch.enable_grad():
            logits = model(inputs)
    finally:
        capture.handle.remove()
    if capture.calls != 1:
        raise ValueError(f"layer ran {capture.calls} times in one forward pass; pick a layer the model calls exactly once")
    if logits.dim() != 2:
        raise ValueError(f"the model must return logits of shape (B, classes), got shape {tuple(logits.shape)}")
    activation = capture.activation
    target = target_from_logits(target, logits)
    with torch.enable_grad():
        score = logits.gather(1, target.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, activation, retain_graph=True, create_graph=create_graph)
        weights = grad.mean(dim=(2, 3), keepdim=True)
        if detach_weights:
            weights = weights.detach()
        cam = (weights * activation).sum(dim=1)
        if relu:
            cam = F.relu(cam)
    return cam, logits


class GradCAM(AttributionMethod):
    """Grad-CAM maps (B, H, W), as Captum's LayerGradCam followed by LayerAttribution.interpolate.

    Args:
        layer: a submodule of the model or its dotted name (e.g. "layer4"); its output must
            be (B, K, h, w).
        relu: keep only positive evidence (the paper's form; Captum's relu_attributions=True).
        upsample: bilinear upsampling (align_corners=False) to the input's H×W; False returns
            the (B, h, w) maps at the layer's resolution.
    """

    def __init__(self, model: nn.Module, layer: Layer, relu: bool = True, upsample: bool = True):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module for Grad-CAM (layer hooks), got {type(model).__name__}")
        super().__init__(model)
        self.layer = resolve_layer(model, layer)  # fail at construction on a bad name
        self.relu = bool(relu)
        self.upsample = bool(upsample)

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        cam, _ = gradcam_maps(self.model, inputs, target, self.layer, relu=self.relu)
        cam = cam.detach()
        if self.upsample:
            cam = F.interpolate(cam.unsqueeze(1), size=inputs.shape[-2:], mode="bilinear", align_corners=False)
            cam = cam.squeeze(1)
        return cam
