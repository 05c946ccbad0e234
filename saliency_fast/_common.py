"""Shared plumbing for every attribution method and metric: input validation, target
resolution, scoring and input gradients, and the model "attribution mode" context.

Every public entry point validates its arguments here so that bad input raises a clear
Python exception that names the argument, instead of failing deep inside a kernel.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Iterator, Optional, Union

import torch
from torch import Tensor, nn

Target = Union[None, int, Tensor]
SCORES = ("logit", "probability", "log_probability")


def check_images(inputs: Tensor, name: str = "inputs") -> Tensor:
    """Validate a (B, C, H, W) floating batch of finite values."""
    if not isinstance(inputs, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(inputs).__name__}")
    if inputs.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got shape {tuple(inputs.shape)}")
    if inputs.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (B = 0); pass at least one image")
    if not inputs.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor (float32 or float64), got {inputs.dtype}")
    if inputs.is_meta:
        raise ValueError(f"{name} is on the meta device (a shape without values); pass a tensor with data")
    check_finite(inputs, name)
    return inputs


def check_autograd_available(what: str) -> None:
    """Gradient-based attribution needs autograd, which torch.inference_mode() switches off."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(f"{what} needs gradients but runs inside torch.inference_mode(); call it outside that "
                           "block (torch.no_grad() around it is fine)")


def warn_if_not_finite(result: Tensor, what: str, stacklevel: int = 3) -> Tensor:
    """Warn (naming the images) when finite inputs gave NaN/Inf results: the model's output or its
    gradient is not finite there, and such maps or scores must not pass for real ones."""
    finite = torch.isfinite(result.reshape(result.shape[0], -1)).all(dim=1) if result.dim() else torch.isfinite(result)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite.reshape(-1)).reshape(-1).tolist()
        listed = ", ".join(map(str, bad[:10])) + (", …" if len(bad) > 10 else "")
        warnings.warn(f"{what} of image(s) {listed} contain NaN or Inf although the inputs are finite: the model's "
                      "output (or its gradient) is not finite there", RuntimeWarning, stacklevel=stacklevel)
    return result


def check_finite(tensor: Tensor, name: str) -> None:
    """Raise if ``tensor`` holds NaN or Inf (one reduction; called once per call, not per step)."""
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or Inf values; clean the input before attributing")


def check_same_device(reference: Tensor, **tensors: Optional[Tensor]) -> None:
    for name, tensor in tensors.items():
        if tensor is not None and tensor.device != reference.device:
            raise ValueError(
                f"{name} is on {tensor.device} but inputs are on {reference.device}; move them to one device"
            )


def check_score(score: str) -> str:
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    return score


def model_device(model: nn.Module) -> Optional[torch.device]:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return None


def check_model_device(model: nn.Module, inputs: Tensor) -> None:
    device = model_device(model)
    if device is not None and device != inputs.device:
        raise ValueError(
            f"the model is on {device} but inputs are on {inputs.device}; call model.to(inputs.device) "
            "or move the inputs"
        )
    dtypes = {param.dtype for param in model.parameters() if param.is_floating_point()}
    if len(dtypes) == 1 and inputs.is_floating_point() and inputs.dtype not in dtypes:
        (dtype,) = dtypes
        raise TypeError(f"inputs are {inputs.dtype} but the model's parameters are {dtype}; convert one of them "
                        f"(inputs.to({dtype}) or model.to({inputs.dtype}))")


def score_outputs(logits: Tensor, target: Tensor, score: str = "logit") -> Tensor:
    """The per-image score f_c of the target class: raw logit, softmax probability or log-probability."""
    if logits.dim() != 2:
        raise ValueError(f"the model must return logits of shape (B, classes), got shape {tuple(logits.shape)}")
    if score == "probability":
        logits = torch.softmax(logits, dim=1)
    elif score == "log_probability":
        logits = torch.log_softmax(logits, dim=1)
    return logits.gather(1, target.view(-1, 1)).squeeze(1)


def resolve_target(model: Callable[[Tensor], Tensor], inputs: Tensor, target: Target) -> Tensor:
    """Return the target class per image as an int64 (B,) tensor on the inputs' device.

    ``None`` explains the predicted class (argmax of the model's output), not the label.
    """
    with torch.no_grad():  # a given target needs only the class count: one image suffices
        logits = model(inputs if target is None else inputs[:1])
    return target_from_logits(target, logits, inputs.shape[0], inputs.device)


def target_from_logits(target: Target, logits: Tensor, batch: Optional[int] = None, device=None) -> Tensor:
    """The (B,) int64 target given the model's (B or 1, classes) logits: None → argmax, an int
    or a tensor of class indices → validated against the class count."""
    if logits.dim() != 2:
        raise ValueError(f"the model must return logits of shape (B, classes), got shape {tuple(logits.shape)}")
    batch = logits.shape[0] if batch is None else batch
    device = logits.device if device is None else device
    classes = logits.shape[1]
    if target is None:
        return logits.detach().argmax(dim=1)
    if isinstance(target, int) and not isinstance(target, bool):
        target = torch.full((batch,), target, dtype=torch.long, device=device)
    elif isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
        target = target.to(device=device, dtype=torch.long).reshape(-1)
        if target.numel() == 1:
            target = target.expand(batch).clone()
        if target.numel() != batch:
            raise ValueError(f"target has {target.numel()} entries but the batch has {batch} images")
    else:
        raise TypeError(f"target must be None, an int or a tensor of class indices, got {type(target).__name__}")
    if bool(((target < 0) | (target >= classes)).any()):
        raise ValueError(f"target holds a class index outside [0, {classes - 1}] (the model has {classes} outputs)")
    return target


def input_gradient(
    model: Callable[[Tensor], Tensor], inputs: Tensor, target: Tensor, score: str = "logit"
) -> tuple[Tensor, Tensor]:
    """One forward + backward: returns (d score / d inputs, score) for every image.

    Images are independent (the model is in eval mode), so the gradient of the summed
    score equals each image's own gradient.
    """
    with torch.enable_grad():
        x = inputs.detach().requires_grad_(True)
        scores = score_outputs(model(x), target, score)
        (grad,) = torch.autograd.grad(scores.sum(), x)
    return grad, scores.detach()


@contextlib.contextmanager
def attribution_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients while attributing; restore both afterwards.

    Only the input gradient is needed, so parameters are frozen: the backward pass then
    skips the weight gradients (about a third of its cost for conv nets).
    """
    was_training = {module: module.training for module in model.modules()}
    requires_grad = {param: param.requires_grad for param in model.parameters()}
    model.eval()
    for param in requires_grad:
        param.requires_grad_(False)
    try:
        yield model
    finally:
        for module, mode in was_training.items():
            module.training = mode
        for param, flag in requires_grad.items():
            param.requires_grad_(flag)


def reduce_channels(attribution: Tensor, reduce: bool = True) -> Tensor:
    """(B, C, H, W) → (B, H, W) by summing over channels, the layout every method returns by default."""
    return attribution.sum(dim=1) if reduce else attribution


def minmax_normalize(maps: Tensor, eps: float = 0.0) -> Tensor:
    """Per-image min–max to [0, 1]; a constant map becomes all zeros (never NaN)."""
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(dim=1, keepdim=True).values
    high = flat.max(dim=1, keepdim=True).values
    span = (high - low).clamp_min(torch.finfo(maps.dtype).tiny) + eps
    return ((flat - low) / span).reshape(maps.shape)
