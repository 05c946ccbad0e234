"""Figures people would rather look at than read: heatmap grids with overlays."""
from __future__ import annotations

import os
from typing import Mapping, Optional

import torch
from torch import Tensor


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a screen
    import matplotlib.pyplot as plt

    return plt


def _as_display(image: Tensor):
    """(C, H, W) → an array matplotlib shows: grey for one channel, min–max RGB for three."""
    image = image.detach().float().cpu()
    image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-12)
    return image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()


def heatmap_grid(images: Tensor, maps: Mapping[str, Tensor], path: str, overlay: bool = True,
                 titles: Optional[list] = None, cmap: str = "jet") -> str:
    """One row per image: the image, then each method's map (and its overlay on the image)."""
    plt = _pyplot()
    columns = 1 + len(maps) * (2 if overlay else 1)
    rows = images.shape[0]
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.6 * rows), squeeze=False)
    for r in range(rows):
        shown = _as_display(images[r])
        axes[r][0].imshow(shown, cmap="gray" if shown.ndim == 2 else None)
        axes[r][0].set_title(titles[r] if titles else "image", fontsize=7)
        column = 1
        for name, batch in maps.items():
            heat = batch[r].detach().float().cpu()
            axes[r][column].imshow(heat.numpy(), cmap=cmap)
            axes[r][column].set_title(name, fontsize=7)
            column += 1
            if overlay:
                axes[r][column].imshow(shown, cmap="gray" if shown.ndim == 2 else None)
                axes[r][column].imshow(heat.numpy(), cmap=cmap, alpha=0.5)
                axes[r][column].set_title(f"{name} overlay", fontsize=7)
                column += 1
    for axis in axes.flat:
        axis.axis("off")
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def normalized(maps: Tensor) -> Tensor:
    """Per-image min–max for display (signed maps keep their order)."""
    flat = maps.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(torch.finfo(flat.dtype).tiny)).view_as(maps)
