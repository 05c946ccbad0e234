"""Figures people read: a grid of images and their attribution maps, with colour bars.

- Signed maps (any negative value) use a diverging colormap centred at 0: red supports the
  explained class, blue opposes it, white is no effect. Each map is divided by its own
  max |a|, so the colour bar reads −max … 0 … +max of that image.
- Unsigned maps (|gradient|, min–max normalised maps) use a perceptually uniform sequential
  colormap from 0 to the image's max.
- Overlays keep the image (grey or RGB, slightly dimmed so that colours on white strokes stay
  visible) and draw the map on top with an opacity that grows with |a|: pixels without
  attribution leave the image as it is.
- Pixels are drawn as squares (nearest neighbour), never blurred.
"""
from __future__ import annotations

import os
from types import ModuleType
from typing import Mapping, Optional, Sequence

import numpy as np
from torch import Tensor

from ._common import minmax_normalize

SIGNED_CMAP = "RdBu_r"  # diverging: blue (opposes) – white (0) – red (supports)
UNSIGNED_CMAP = "viridis"  # perceptually uniform sequential
OVERLAY_ALPHA = 0.85  # opacity of the strongest attribution in an overlay
OVERLAY_DIM = 0.6  # the image under an overlay is shown at this brightness, so white strokes do not drown the colours


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a screen
    import matplotlib.pyplot as plt

    return plt


def _as_display(image: Tensor) -> np.ndarray:
    """(C, H, W) → what matplotlib shows: grey for one channel, RGB for three; values in [0, 1]
    are shown as they are, others min–max scaled."""
    image = image.detach().float().cpu()
    if float(image.min()) < 0 or float(image.max()) > 1:
        image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-12)
    return image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()


def is_signed(maps: Tensor) -> bool:
    """A batch of maps is shown as signed when any value is negative."""
    return bool((maps < 0).any())


def scaled(maps: Tensor, signed: bool) -> Tensor:
    """Each map divided by its own max |a| (signed: [−1, 1]) or its max (unsigned: [0, 1]); all-zero maps stay 0."""
    maps = maps.detach().float().cpu()
    if maps.dim() == 4:
        maps = maps.sum(dim=1)
    flat = maps.flatten(1)
    peak = flat.abs().amax(dim=1) if signed else flat.amax(dim=1)
    return (flat / peak.clamp_min(1e-30).unsqueeze(1)).view_as(maps)


def overlay_rgba(values: np.ndarray, signed: bool) -> np.ndarray:
    """(H, W, 4) colours of a scaled map for drawing over an image: the map's colormap, with an
    opacity growing from 0 (no attribution: the image shows through) to ``OVERLAY_ALPHA``."""
    import matplotlib

    cmap = matplotlib.colormaps[SIGNED_CMAP if signed else UNSIGNED_CMAP]
    low = -1.0 if signed else 0.0
    rgba = cmap((np.asarray(values, dtype=np.float64) - low) / (1.0 - low))
    rgba[..., 3] = OVERLAY_ALPHA * np.clip(np.abs(values), 0, 1)
    return rgba


def heatmap_grid(
    images: Tensor,
    maps: Mapping[str, Tensor],
    path: str,
    overlay: bool = True,
    titles: Optional[Sequence[str]] = None,
    signed: Optional[Mapping[str, bool]] = None,
    title: Optional[str] = None,
    note: Optional[str] = None,
) -> str:
    """One row per image: the image, then each method's map (and its overlay on the image).

    ``maps``: method name → (B, H, W) or (B, C, H, W) attributions (raw values: scaling is done
    here). ``signed``: method name → True/False to override the automatic choice (any negative
    value → signed). ``titles``: one label per row; ``title`` / ``note``: the figure's heading
    and a line of small print under it. Every map column has a colour bar.
    """
    plt = _pyplot()
    from matplotlib import cm, colors

    names = list(maps)
    kinds = {name: (signed or {}).get(name, is_signed(maps[name])) for name in names}
    shown = {name: scaled(maps[name], kinds[name]) for name in names}
    per_method = 2 if overlay else 1
    columns, rows = 1 + len(names) * per_method, images.shape[0]
    figure, axes = plt.subplots(rows + 1, columns, figsize=(1.55 * columns, 1.55 * rows + 0.9),
                                gridspec_kw={"height_ratios": [1] * rows + [0.12]}, squeeze=False)
    for r in range(rows):
        picture = _as_display(images[r])
        grey = {"cmap": "gray", "vmin": 0, "vmax": 1} if picture.ndim == 2 else {}
        axes[r][0].imshow(picture, interpolation="nearest", **grey)
        axes[r][0].set_ylabel(titles[r] if titles else "", fontsize=8)
        column = 1
        for name in names:
            cmap = SIGNED_CMAP if kinds[name] else UNSIGNED_CMAP
            low = -1.0 if kinds[name] else 0.0
            values = shown[name][r].numpy()
            axes[r][column].imshow(values, cmap=cmap, vmin=low, vmax=1.0, interpolation="nearest")
            column += 1
            if overlay:
                rgba = overlay_rgba(values, kinds[name])
                axes[r][column].imshow(picture * OVERLAY_DIM, interpolation="nearest", **grey)
                axes[r][column].imshow(rgba, interpolation="nearest")
                column += 1
    headers = ["image"] + [label for name in names
                           for label in ([name, f"{name} on image"] if overlay else [name])]
    for column, header in enumerate(headers):
        axes[0][column].set_title(header, fontsize=8)
    for axis in axes[:rows].flat:
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_visible(False)
    for axis in axes[rows]:
        axis.axis("off")
    column = 1
    for name in names:
        bar_axis = axes[rows][column]
        bar_axis.axis("on")
        mappable = cm.ScalarMappable(colors.Normalize(-1.0 if kinds[name] else 0.0, 1.0),
                                     SIGNED_CMAP if kinds[name] else UNSIGNED_CMAP)
        bar = figure.colorbar(mappable, cax=bar_axis, orientation="horizontal")
        if kinds[name]:
            bar.set_ticks([-1, 0, 1], labels=["−max\nopposes", "0", "+max\nsupports"])
        else:
            bar.set_ticks([0, 1], labels=["0", "max"])
        bar.ax.tick_params(labelsize=6, length=2)
        if overlay:
            axes[rows][column + 1].axis("off")
        column += per_method
    if title:
        figure.suptitle(title, fontsize=10)
    if note:
        figure.text(0.5, 0.005, note, ha="center", va="bottom", fontsize=7, wrap=True)
    figure.tight_layout(rect=(0, 0.035 if note else 0, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=130)
    plt.close(figure)
    return path


def normalized(maps: Tensor) -> Tensor:
    """Per-image min–max to [0, 1] (signed maps keep their order but lose where 0 is; a constant
    map becomes all zeros): ``minmax_normalize``."""
    return minmax_normalize(maps)
