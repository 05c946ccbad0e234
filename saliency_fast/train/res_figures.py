"""The figure of explanation supervision: images, their masks and the predicted-class Grad-CAM."""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from .res import Layer
from .res_eval import explanation_maps


def save_overlay_figure(model: nn.Module, x: Tensor, positive: Tensor, negative: Optional[Tensor], path: str,
                        layer: Layer = None, labels: Optional[Tensor] = None) -> str:
    """A figure with one row per image: the image, its masks (positive − negative), and the
    predicted-class Grad-CAM upsampled to the image, alone and overlaid."""
    from ..viz import heatmap_grid

    device = next(model.parameters()).device
    maps, logits = explanation_maps(model, x.to(device), layer)
    maps = F.interpolate(maps.unsqueeze(1).float(), size=tuple(x.shape[-2:]), mode="bilinear",
                         align_corners=False).squeeze(1).cpu()
    signed = positive.float().reshape(maps.shape).cpu()
    if negative is not None:
        signed = signed - negative.float().reshape(maps.shape).cpu()
    predicted = logits.argmax(dim=1).cpu().tolist()
    titles = [f"pred {p}" + (f" / true {int(t)}" if labels is not None else "")
              for p, t in zip(predicted, labels.tolist() if labels is not None else predicted)]
    return heatmap_grid(x.cpu(), {"mask (+/-)": signed, "Grad-CAM": maps}, path, overlay=True, titles=titles)


__all__ = ["save_overlay_figure"]
