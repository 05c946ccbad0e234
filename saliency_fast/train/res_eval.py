"""Evaluation of explanation supervision (res.md, "Evaluation"): accuracy, and IoU / precision /
recall / F1 of the predicted-class Grad-CAM maps against the human masks."""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .._common import Target
from ..methods.gradcam import gradcam_maps
from .objectives import evaluating, unwrap
from .res import Layer, check_explanation_batch
from .res_losses import normalize_cam


def explanation_maps(model: nn.Module, x: Tensor, layer: Layer = None,
                     target: Target = None) -> Tuple[Tensor, Tensor]:
    """Evaluation maps (B, h, w): Grad-CAM (no ReLU) of the predicted class (or ``target``) in eval
    mode, min-max normalised; and the logits. Both detached."""
    layer = layer if layer is not None else getattr(unwrap(model), "GRADCAM_LAYER", None)
    if layer is None:
        raise ValueError("pass layer=... (the module or dotted name Grad-CAM explains)")
    with evaluating(model):
        cam, logits = gradcam_maps(model, x, target, layer, relu=False)
    return normalize_cam(cam).detach(), logits.detach()


def evaluate_explanations(model: nn.Module, loader: Iterable[Any], layer: Layer = None,
                          device: Optional[Union[str, torch.device]] = None,
                          threshold: float = 0.5) -> Dict[str, float]:
    """Accuracy over the loader, and IoU / precision / recall / F1 (res.md's protocol, via
    :func:`saliency_fast.metrics.localization`) averaged over the images that carry a non-empty
    positive mask: predicted-class maps upsampled bilinearly to the mask size, min-max, ≥ 0.5;
    only negatively annotated pixels count as false positives.
    """
    from ..metrics import localization

    device = torch.device(device) if device is not None else next(model.parameters()).device
    sums = {"iou": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    correct = images = annotated = 0
    for batch in loader:
        x, y, positive, negative, has_mask = check_explanation_batch(
            [item.to(device) if isinstance(item, Tensor) else item for item in batch], "evaluate_explanations")
        maps, logits = explanation_maps(model, x, layer)
        correct += int((logits.argmax(dim=1) == y).sum())
        images += x.shape[0]
        keep = has_mask & positive.flatten(1).any(dim=1)
        if not bool(keep.any()):
            continue
        scores = localization(maps[keep].double(), positive[keep].bool(),
                              negative[keep].bool() if negative is not None else torch.zeros_like(positive[keep]).bool(),
                              threshold=threshold, allow_constant=True)
        for name in sums:
            sums[name] += float(scores[name].sum())
        annotated += int(keep.sum())
    if images == 0:
        raise ValueError("the evaluation loader is empty")
    result = {"accuracy": correct / images, "annotated": annotated}
    result.update({name: (value / annotated if annotated else float("nan")) for name, value in sums.items()})
    return result


__all__ = ["explanation_maps", "evaluate_explanations"]
