"""The class-activation-map family at a chosen layer: Grad-CAM (Selvaraju et al. 2017, as
Captum's LayerGradCam), Grad-CAM++ (Chattopadhay et al. 2018, as pytorch-grad-cam) and CAM
(Zhou et al. 2016, as TorchCAM).

All three weight the K maps A_k of one layer's (B, K, h, w) output and sum them:
Grad-CAM with w_k = the spatial mean of ∂logit_c/∂A_k, Grad-CAM++ with the second-order
closed-form weights of its paper (Eq. 19), CAM with the final linear layer's weights of class c
(for networks that end in global average pooling + linear). One forward pass with a hook captures
A and, for the gradient methods, one backward pass gives its gradient.

Any architecture: ``layer=None`` finds the layer (see :func:`find_cam_layer`) and logs which, and
``reshape_transform`` maps a token layer's output to (B, K, h, w) (ready: :func:`vit_reshape_transform`
for ViT-style (B, 1 + N, D) tokens). ``gradcam_maps`` is the reusable Grad-CAM core (the RES trainer
calls it inside its training graph).
"""
from __future__ import annotations

import difflib
import logging
import math
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .._common import Target, model_device, target_from_logits
from ._base import AttributionMethod, UnsupportedArchitecture

Layer = Union[str, nn.Module]
ReshapeTransform = Callable[[Tensor], Tensor]
ReshapeOption = Union[None, str, ReshapeTransform]  # a transform, or its name in RESHAPE_TRANSFORMS
Record = Tuple[str, nn.Module, Tensor]  # (a submodule's dotted name, the submodule, its output)
logger = logging.getLogger(__name__)


def resolve_layer(model: nn.Module, layer: Layer) -> nn.Module:
    """The submodule ``layer`` names (a dotted name such as "layer4" or "features.3") or is.

    A name that is not found but is the unique dotted suffix of one (e.g. "layer4" for
    "model.layer4" inside :class:`saliency_fast.models.Normalized`) names that submodule.
    """
    if isinstance(layer, nn.Module):
        if not any(module is layer for module in model.modules()):
            raise ValueError("layer is a module that is not part of the model; pass one of model's submodules")
        return layer
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a submodule of the model or its dotted name, got {type(layer).__name__}")
    names = [name for name, _ in model.named_modules() if name]
    if layer in names:
        return model.get_submodule(layer)
    suffixed = [name for name in names if name.endswith("." + layer)]
    if len(suffixed) == 1:
        return model.get_submodule(suffixed[0])
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5) or suffixed[:5] or names[:10]
    raise ValueError(f"layer {layer!r} is not a submodule of the model; close names: {', '.join(close) or '(none)'}")


def layer_name(model: nn.Module, layer: nn.Module) -> str:
    """The dotted name of submodule ``layer`` in ``model``."""
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError("layer is a module that is not part of the model; pass one of model's submodules")


# ==============================================================================================
# token layers
# ==============================================================================================
class ViTReshape:
    """ViT-style tokens (B, prefix_tokens + N, D) → a (B, D, √N, √N) map: the first
    ``prefix_tokens`` tokens (the class token; also register tokens where a model has them) are
    dropped and the N patch tokens laid out row by row, as pytorch-grad-cam's vit_reshape_transform.
    """

    def __init__(self, prefix_tokens: int = 1) -> None:
        if isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int) or prefix_tokens < 0:
            raise ValueError(f"prefix_tokens must be an int >= 0, got {prefix_tokens!r}")
        self.prefix_tokens = prefix_tokens

    def __call__(self, tokens: Tensor) -> Tensor:
        if not isinstance(tokens, Tensor) or tokens.dim() != 3:
            shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"ViT tokens must have shape (B, {self.prefix_tokens} + N, D), got {shape}")
        batch, count, width = tokens.shape
        patches = count - self.prefix_tokens
        side = math.isqrt(max(patches, 0))
        if patches <= 0 or side * side != patches:
            raise ValueError(f"ViT tokens (B, {count}, {width}) minus {self.prefix_tokens} prefix token(s) leave "
                             f"{patches} patch tokens, not a square grid; pass ViTReshape(prefix_tokens=...) that fits")
        return tokens[:, self.prefix_tokens :, :].transpose(1, 2).reshape(batch, width, side, side)

    def __repr__(self) -> str:
        return f"ViTReshape(prefix_tokens={self.prefix_tokens})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ViTReshape) and other.prefix_tokens == self.prefix_tokens

    def __hash__(self) -> int:
        return hash(("ViTReshape", self.prefix_tokens))


vit_reshape_transform = ViTReshape(prefix_tokens=1)
RESHAPE_TRANSFORMS = {"vit": vit_reshape_transform}


def resolve_reshape_transform(value: ReshapeOption) -> Optional[ReshapeTransform]:
    """None, a callable (B, ...) → (B, K, h, w), or a name from ``RESHAPE_TRANSFORMS`` ("vit")."""
    if value is None or callable(value):
        return value
    if isinstance(value, str) and value in RESHAPE_TRANSFORMS:
        return RESHAPE_TRANSFORMS[value]
    raise ValueError(f"reshape_transform must be None, a callable or one of {sorted(RESHAPE_TRANSFORMS)}, got {value!r}")


def _spatial(output: Any, reshape_transform: Optional[ReshapeTransform]) -> Tensor:
    """The layer output as a (B, K, h, w) map (after ``reshape_transform``); raise if it is not one."""
    mapped = reshape_transform(output) if reshape_transform is not None and isinstance(output, Tensor) else output
    if not isinstance(mapped, Tensor) or mapped.dim() != 4:
        shape = tuple(mapped.shape) if isinstance(mapped, Tensor) else type(mapped).__name__
        hint = "" if reshape_transform is not None else (
            "; for a token layer (ViT, Swin) pass reshape_transform (e.g. 'vit')")
        raise ValueError(f"layer must output a (B, K, h, w) tensor for the CAM methods, got {shape}{hint}")
    return mapped


# ==============================================================================================
# capturing a layer
# ==============================================================================================
class _ActivationCapture:
    """Forward hook that records a layer's output as a tensor autograd can reach.

    When nothing upstream requires grad (frozen parameters, plain inputs), the output is
    made a leaf that requires grad, so the backward pass stops at the layer. The model
    continues with a clone, so in-place operations after the layer (ReLU(inplace=True))
    cannot change the recorded activations (Captum clones for the same reason).
    """

    def __init__(self, module: nn.Module, reshape_transform: Optional[ReshapeTransform] = None) -> None:
        self.activation: Tensor | None = None
        self.calls = 0
        self.reshape_transform = reshape_transform
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: Any) -> Tensor:
        _spatial(output, self.reshape_transform)  # fail early, naming the shape
        self.calls += 1
        activation = output if output.requires_grad else output.detach().requires_grad_(True)
        self.activation = activation
        return activation.clone()


def _forward_capturing(model: Callable[..., Any], inputs: Tensor, module: nn.Module,
                       reshape_transform: Optional[ReshapeTransform]) -> Tuple[Tensor, Tensor]:
    """One forward pass: (the layer's raw output, the logits)."""
    capture = _ActivationCapture(module, reshape_transform)
    try:
        with torch.enable_grad():
            logits = model(inputs)
    finally:
        capture.handle.remove()
    if capture.calls != 1:
        raise ValueError(f"layer ran {capture.calls} times in one forward pass; pick a layer the model calls exactly once")
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"the model must return logits of shape (B, classes), got {shape}")
    assert capture.activation is not None  # the hook ran once (checked above), recording it
    return capture.activation, logits


def layer_gradients(
    model: nn.Module,
    inputs: Tensor,
    target: Target,
    layer: Layer,
    reshape_transform: Optional[ReshapeTransform] = None,
    create_graph: bool = False,
) -> Tuple[Tensor, Tensor, Tensor]:
    """(A, ∂(Σ_b logit_{b, c_b})/∂A, logits) with A the layer's output as (B, K, h, w), from one
    forward and one backward pass. Images are independent in eval mode, so each image's slice of
    the gradient is its own. The logits' graph is retained."""
    module = resolve_layer(model, layer)
    raw, logits = _forward_capturing(model, inputs, module, reshape_transform)
    target = target_from_logits(target, logits)
    with torch.enable_grad():
        score = logits.gather(1, target.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, raw, retain_graph=True, create_graph=create_graph)
    # a reshape transform is a re-indexing, so it maps the gradient exactly as the activation
    return _spatial(raw, reshape_transform), _spatial(grad, reshape_transform), logits


def gradcam_maps(
    model: nn.Module,
    inputs: Tensor,
    target: Target,
    layer: Layer,
    create_graph: bool = False,
    detach_weights: bool = True,
    relu: bool = True,
    reshape_transform: Optional[ReshapeTransform] = None,
) -> tuple[Tensor, Tensor]:
    """Grad-CAM maps at the layer's resolution (B, h, w) and the logits, from ONE forward pass.

    The model's mode and parameters are left as they are (the trainer calls this in train
    mode). The logits' graph is retained, so a caller can add a loss on them and on the maps
    and backpropagate once. With ``detach_weights`` (default) the channel weights w_k are
    constants, and the maps reach the network only through the activations A, as in RES.
    ``create_graph=True`` keeps the graph of ∂logit/∂A (needed with ``detach_weights=False``
    for gradients through the weights). ``target`` None explains the predicted class.
    """
    activation, grad, logits = layer_gradients(model, inputs, target, layer, reshape_transform, create_graph)
    with torch.enable_grad():
        weights = grad.mean(dim=(2, 3), keepdim=True)
        if detach_weights:
            weights = weights.detach()
        cam = (weights * activation).sum(dim=1)
        if relu:
            cam = F.relu(cam)
    return cam, logits


def gradcam_plus_plus_weights(activation: Tensor, grad: Tensor, eps: float = 1e-6) -> Tensor:
    """Grad-CAM++'s channel weights (B, K) (Chattopadhay et al. 2018, Eq. 19 with the exponential
    score, whose higher derivatives are powers of the first), as pytorch-grad-cam computes them:

        α_kij = g² / (2 g² + (Σ_ab A_kab) g³ + eps),  α = 0 where g = 0,
        w_k = Σ_ij α_kij · relu(g_kij),       g = ∂logit_c/∂A_kij.
    """
    grad_2 = grad * grad
    grad_3 = grad_2 * grad
    sum_activation = activation.sum(dim=(2, 3), keepdim=True)
    alpha = grad_2 / (2 * grad_2 + sum_activation * grad_3 + eps)
    alpha = torch.where(grad != 0, alpha, torch.zeros_like(alpha))
    return (alpha * F.relu(grad)).sum(dim=(2, 3))


# ==============================================================================================
# finding the layer
# ==============================================================================================
def _holds_convolution(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules())


def _is_map(tensor: Tensor, batch: int) -> bool:
    return isinstance(tensor, Tensor) and tensor.dim() == 4 and tensor.shape[0] == batch and tensor.shape[2] * tensor.shape[3] > 1


def _maps_under(transform: ReshapeTransform, output: Tensor, batch: int) -> bool:
    try:
        return _is_map(transform(output), batch)
    except Exception:  # the transform does not apply to this output: not a candidate
        return False


def _run_recording(model: nn.Module, inputs: Tensor) -> Tuple[List[Record], Tensor]:
    """Forward ``inputs`` (made to require grad, so every layer's output is in the graph), recording
    each submodule's tensor output in the order the modules finish; modules called more than
    once are left out (their output is ambiguous)."""
    records: List[Record] = []
    calls: Counter[str] = Counter()
    handles: List[RemovableHandle] = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(module: nn.Module, args: Any, output: Any, name: str = name) -> None:
            calls[name] += 1
            if isinstance(output, Tensor) and output.requires_grad:
                records.append((name, module, output))

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.enable_grad():
            logits = model(inputs.detach().requires_grad_(True))
    finally:
        for handle in handles:
            handle.remove()
    return [r for r in records if calls[r[0]] == 1], logits


def find_cam_layer(
    model: nn.Module,
    inputs: Tensor,
    target: Target = None,
    reshape_transform: ReshapeOption = None,
) -> Tuple[str, Optional[ReshapeTransform]]:
    """The layer a CAM method explains when ``layer=None``, and the reshape transform it needs.

    ``model.GRADCAM_LAYER`` if the model declares one. Otherwise one forward and one backward
    pass on ``inputs`` (one image is enough) find the LAST layer, in execution order, whose output
    the target's logit depends on and which is
      - without ``reshape_transform``: a spatial map (B, K, h, w), h·w > 1, output by a convolution,
        a module holding one, or a module after the first one (for torchvision's ResNet: ``layer4``,
        the layer the Grad-CAM papers and Captum's examples use);
      - for a vision transformer (token outputs (B, 1 + N, D) after the last convolution, N a square):
        a token layer of the residual width D, with :data:`vit_reshape_transform` (for timm's ViT:
        ``blocks.11.norm1``; the last block's output itself does not reach the class token);
      - with ``reshape_transform``: any layer whose output it maps to such a map.
    Raises a ValueError naming what to pass when no layer qualifies.
    """
    transform = resolve_reshape_transform(reshape_transform)
    declared = getattr(model, "GRADCAM_LAYER", None)
    if isinstance(declared, str):
        return declared, transform
    records, logits = _run_recording(model, inputs)
    batch = inputs.shape[0]
    if transform is None:
        convolutional = [i for i, r in enumerate(records) if _is_map(r[2], batch) and _holds_convolution(r[1])]
        first_conv, last_conv = (convolutional[0], convolutional[-1]) if convolutional else (len(records), -1)
        # the maps from the first convolution on (activations and normalisations after a conv count)
        candidates = [r for r in records[first_conv:] if _is_map(r[2], batch)]
        tokens = [r for r in records[last_conv + 1 :] if r[2].dim() == 3 and _maps_under(vit_reshape_transform, r[2], batch)]
        if tokens:  # a vision transformer: its token stream has the most common token shape
            stream = Counter(tuple(r[2].shape) for r in tokens).most_common(1)[0][0]
            candidates, transform = [r for r in tokens if tuple(r[2].shape) == stream], vit_reshape_transform
    else:
        candidates = [r for r in records if _maps_under(transform, r[2], batch)]
    if candidates:
        target = target_from_logits(target, logits)
        score = logits.gather(1, target.view(-1, 1)).sum()
        grads = torch.autograd.grad(score, [r[2] for r in candidates], allow_unused=True)
        for (name, _, _), grad in zip(reversed(candidates), reversed(grads)):
            mapped = None if grad is None else (transform(grad) if transform is not None else grad)
            if mapped is not None and bool((mapped != 0).any()):
                return name, transform
    if candidates:
        raise UnsupportedArchitecture(
            f"found no layer for the CAM methods: the target's logit has zero gradient at every candidate layer "
            f"({candidates[0][0]} … {candidates[-1][0]}), e.g. a zero-initialised classifier head; pass layer= explicitly")
    raise UnsupportedArchitecture(
        "found no layer for the CAM methods: no layer that the target's logit depends on outputs a spatial map "
        "(B, K, h, w) of a convolution, or ViT-style tokens (B, 1 + N, D); pass layer='<dotted name>' "
        "(see model.named_modules()) and, for a token layer, reshape_transform (e.g. 'vit' or your own callable)")


# ==============================================================================================
# the methods
# ==============================================================================================
class _LayerCAM(AttributionMethod):
    """Shared by the CAM methods: the layer (given, or found at the first call), the reshape
    transform, ReLU and upsampling to the input size (bilinear, align_corners=False)."""

    learned_attributes = ("layer", "reshape_transform")  # layer=None: found once, at the first call

    method_name = "CAM"
    model: nn.Module  # checked by __init__ (layer hooks need a module); a BoundModel during a call

    def __init__(self, model: nn.Module, layer: Optional[Layer] = None, relu: bool = True, upsample: bool = True,
                 reshape_transform: ReshapeOption = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module for {self.method_name} (layer hooks), got {type(model).__name__}")
        super().__init__(model)
        # a name is resolved now, to fail at construction on a bad one
        self.layer: Optional[nn.Module] = None if layer is None else resolve_layer(model, layer)
        self.reshape_transform = resolve_reshape_transform(reshape_transform)
        self.relu = bool(relu)
        self.upsample = bool(upsample)

    @classmethod
    def resolved_options(cls, model: nn.Module, options: Dict[str, Any], example: Optional[Tensor] = None
                         ) -> Dict[str, Any]:
        """``options`` with ``layer`` as the full dotted name in ``model`` of the layer the method
        explains: the given layer (a module or a name, "layer4" → "model.layer4" in a wrapper),
        else ``model.GRADCAM_LAYER``, else (given one (C, H, W) ``example``) the layer
        :func:`find_cam_layer` picks on it, with the reshape transform it needs ("vit" for
        :data:`vit_reshape_transform`). Without an example an undeclared layer stays None."""
        resolved = dict(options)
        layer = resolved.get("layer")
        declared = getattr(model, "GRADCAM_LAYER", None)
        if layer is None and isinstance(declared, str):
            layer = declared
        if layer is not None:
            resolved["layer"] = layer_name(model, resolve_layer(model, layer))
            return resolved
        if example is None:
            return resolved
        probe = cls(model, **{**resolved, "upsample": False})
        device = model_device(model) or example.device
        probe.attribute(example[None].to(device))  # finds (and logs) the layer as the method itself would
        assert probe.layer is not None  # the call found it (or raised)
        resolved["layer"] = layer_name(model, probe.layer)
        if probe.reshape_transform is not None and resolved.get("reshape_transform") is None:
            found = probe.reshape_transform
            resolved["reshape_transform"] = "vit" if found == vit_reshape_transform else found
        return resolved

    def _ensure_layer(self, inputs: Tensor, target: Tensor) -> None:
        if self.layer is not None:
            return
        name, transform = self._find_layer(inputs[:1], target[:1])
        self.layer, self.reshape_transform = self.model.get_submodule(name), transform
        how = "" if transform is None else f" with reshape_transform={transform!r}"
        logger.warning("%s: layer=None → using layer %r%s", self.method_name, name, how)

    def _find_layer(self, inputs: Tensor, target: Tensor) -> Tuple[str, Optional[ReshapeTransform]]:
        return find_cam_layer(self.model, inputs, target, self.reshape_transform)

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        self._ensure_layer(inputs, target)
        cam = self._layer_map(inputs, target).detach()
        if self.relu:
            cam = F.relu(cam)
        if self.upsample:
            cam = F.interpolate(cam.unsqueeze(1), size=inputs.shape[-2:], mode="bilinear", align_corners=False)
            cam = cam.squeeze(1)
        return cam

    def _layer_map(self, inputs: Tensor, target: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class GradCAM(_LayerCAM):
    """Grad-CAM maps (B, H, W), as Captum's LayerGradCam followed by LayerAttribution.interpolate.

    Args:
        layer: a submodule of the model or its dotted name (e.g. "layer4"); its output must be
            (B, K, h, w), or map to that under ``reshape_transform``. None: found at the first call
            by :func:`find_cam_layer` (logged).
        relu: keep only positive evidence (the paper's form; Captum's relu_attributions=True).
        upsample: bilinear upsampling (align_corners=False) to the input's H×W; False returns
            the (B, h, w) maps at the layer's resolution.
        reshape_transform: for token layers, a callable mapping the layer's output to (B, K, h, w),
            or "vit" (:data:`vit_reshape_transform`: ViT-style (B, 1 + N, D) tokens).
    """

    method_name = "GradCAM"

    def _layer_map(self, inputs: Tensor, target: Tensor) -> Tensor:
        assert self.layer is not None  # _attribute ran _ensure_layer
        cam, _ = gradcam_maps(self.model, inputs, target, self.layer, relu=False, reshape_transform=self.reshape_transform)
        return cam


class GradCAMPlusPlus(_LayerCAM):
    """Grad-CAM++ maps (B, H, W) (Chattopadhay et al. 2018), equal to pytorch-grad-cam's
    GradCAMPlusPlus before its per-image min–max scaling: relu(Σ_k w_k A_k) with the weights of
    :func:`gradcam_plus_plus_weights`. Arguments as :class:`GradCAM`."""

    method_name = "GradCAMPlusPlus"

    def _layer_map(self, inputs: Tensor, target: Tensor) -> Tensor:
        assert self.layer is not None  # _attribute ran _ensure_layer
        activation, grad, _ = layer_gradients(self.model, inputs, target, self.layer, self.reshape_transform)
        weights = gradcam_plus_plus_weights(activation.detach(), grad)
        return (weights[:, :, None, None] * activation.detach()).sum(dim=1)


class CAM(_LayerCAM):
    """Class activation maps (Zhou et al. 2016) for networks that end in global average pooling of
    a (B, K, h, w) feature map followed by a linear layer: Σ_k W[c, k] A_k, with W the linear
    layer's weight — TorchCAM's CAM (normalized=False). No gradient is needed.

    Args:
        layer: the feature map that is globally averaged into ``fc`` (dotted name or module). None:
            the last layer whose (B, K, h, w) output averages to ``fc``'s input (``layer4`` for
            torchvision's ResNet), found at the first call and logged.
        fc: the final linear layer (dotted name or module); None: the model's last nn.Linear.
            Its output must be the model's logits.
        relu: clamp negative evidence to 0 (default False: the paper's map is signed).
        upsample, reshape_transform: as :class:`GradCAM`.
    Raises a ValueError at the first call when the model does not average ``layer`` into ``fc``.
    """

    method_name = "CAM"

    def __init__(self, model: nn.Module, layer: Optional[Layer] = None, fc: Optional[Layer] = None,
                 relu: bool = False, upsample: bool = True, reshape_transform: ReshapeOption = None) -> None:
        super().__init__(model, layer, relu, upsample, reshape_transform)
        if fc is None:
            linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise UnsupportedArchitecture("CAM needs a final nn.Linear layer after global average pooling; the model has none "
                                 "(use GradCAM for other architectures)")
            self.fc: nn.Linear = linears[-1]
        else:
            named = resolve_layer(model, fc)
            if not isinstance(named, nn.Linear):
                raise ValueError(f"fc must name an nn.Linear layer, got {type(named).__name__}")
            self.fc = named

    def _find_layer(self, inputs: Tensor, target: Tensor) -> Tuple[str, Optional[ReshapeTransform]]:
        pooled, logits, records = self._run_pooled(inputs, record=True)
        batch = inputs.shape[0]
        for name, _, output in reversed(records):
            mapped = output if self.reshape_transform is None else (
                self.reshape_transform(output) if _maps_under(self.reshape_transform, output, batch) else None)
            if mapped is not None and _is_map(mapped, batch) and mapped.shape[1] == pooled.shape[1] \
                    and self._averages_to(mapped, pooled):
                return name, self.reshape_transform
        raise UnsupportedArchitecture(f"CAM needs a (B, K, h, w) feature map whose global average is the input of the final linear "
                         f"layer ({type(self.fc).__name__} with {self.fc.in_features} inputs); this model has none. "
                         "Use GradCAM or GradCAMPlusPlus for other architectures, or pass layer= and fc=")

    def _run_pooled(self, inputs: Tensor, record: bool = False) -> Tuple[Tensor, Tensor, List[Record]]:
        """Forward with a hook on ``fc``: (fc's input, the logits, the recorded layer outputs)."""
        seen: List[Tuple[Tensor, Tensor]] = []
        handle = self.fc.register_forward_hook(lambda module, args, output: seen.append((args[0], output)))
        try:
            records: List[Record]
            if record:
                records, logits = _run_recording(self.model, inputs)
            else:
                records, logits = [], self.model(inputs)
        finally:
            handle.remove()
        self._check_fc(seen, logits)
        return seen[0][0].detach(), logits, records

    def _check_fc(self, seen: List[Tuple[Tensor, Tensor]], logits: Tensor) -> None:
        if len(seen) != 1:
            raise ValueError(f"CAM: the linear layer fc ran {len(seen)} times in one forward pass; pass fc= the final one")
        pooled, output = seen[0]
        if pooled.dim() != 2:
            raise UnsupportedArchitecture(f"CAM: fc's input has shape {tuple(pooled.shape)}, not (B, K): the model does not "
                             "globally pool before it; use GradCAM for this architecture")
        if output is logits:  # the model returns fc's output itself: nothing to compare
            return
        if output.shape != logits.shape or not torch.allclose(output.detach(), logits.detach(), equal_nan=True):
            raise UnsupportedArchitecture("CAM: the output of fc is not the model's logits (the model transforms them after fc); "
                             "pass fc= the layer that produces the logits, or use GradCAM")

    @staticmethod
    def _averages_to(feature_map: Tensor, pooled: Tensor) -> bool:
        mean = feature_map.detach().mean(dim=(2, 3))
        scale = pooled.abs().max().clamp_min(torch.finfo(pooled.dtype).tiny)
        tolerance = min(1e3 * torch.finfo(pooled.dtype).eps, 1e-2)  # rounding of the pool's own mean
        return bool(((mean - pooled).abs().max() / scale) <= tolerance)

    def _layer_map(self, inputs: Tensor, target: Tensor) -> Tensor:
        module = self.layer
        assert module is not None  # _attribute ran _ensure_layer
        capture = _ActivationCapture(module, self.reshape_transform)
        try:
            with torch.no_grad():
                pooled, logits, _ = self._run_pooled(inputs)
        finally:
            capture.handle.remove()
        if capture.calls != 1:
            raise ValueError(f"layer ran {capture.calls} times in one forward pass; pick a layer the model calls exactly once")
        assert capture.activation is not None  # the hook ran once (checked above), recording it
        activation = _spatial(capture.activation.detach(), self.reshape_transform)
        if activation.shape[1] != self.fc.in_features or not self._averages_to(activation, pooled):
            raise UnsupportedArchitecture(f"CAM: the global average of the layer's output {tuple(activation.shape)} is not the input "
                             f"of fc ({self.fc.in_features} features); pass the layer that is pooled into fc, "
                             "or use GradCAM")
        weight = self.fc.weight.detach()[target]  # (B, K)
        return torch.einsum("bk,bkhw->bhw", weight.to(activation.dtype), activation)
