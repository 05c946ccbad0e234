"""RISE (Petsiuk et al., BMVC 2018): saliency as the score-weighted average of random masks.

The masks are the authors' (github.com/eclique/RISE, ``generate_masks``): an s × s grid of
cells, each kept with probability ``p`` (``grid = rand(N, s, s) < p1`` there: p is the *keep*
probability), upsampled bilinearly to (s + 1) · ceil(H / s) pixels a side (scikit-image
``resize``, order 1, mode "reflect": mirror boundaries) and cropped at a random shift of less
than one cell. The map of class c is Σ_n f_c(x ⊙ M_n) M_n / (N · p), as their ``explain``.

The masks are drawn once per image size from a CPU generator seeded with ``seed`` and shared by
every image, so an image's map depends only on itself and the seed, not on its batch mates nor
on the device. The masked images of the whole batch go through the model in passes of bounded
size; only the target class's score is kept.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from .._validation import check_positive_int
from .._common import check_score, score_outputs
from ._base import AttributionMethod, DeprecatedBatchSize, pass_size
from .gradients import repeats_per_pass


def mirror_bilinear_matrix(cells: int, size: int) -> Tensor:
    """(size, cells) float64 matrix of scikit-image's order-1 resize from ``cells`` to ``size``
    samples along one axis, mode "reflect" (mirror about the edge samples: d c b | a b c d | c b a)."""
    scale = cells / size
    coordinate = (torch.arange(size, dtype=torch.float64) + 0.5) * scale - 0.5
    low = torch.floor(coordinate)
    fraction = coordinate - low

    def mirror(index: Tensor) -> Tensor:
        if cells == 1:
            return torch.zeros_like(index)
        period = 2 * (cells - 1)
        index = torch.remainder(index, period)
        return torch.where(index >= cells, period - index, index)

    matrix = torch.zeros(size, cells, dtype=torch.float64)
    rows = torch.arange(size)
    matrix.index_put_((rows, mirror(low).long()), 1.0 - fraction, accumulate=True)
    matrix.index_put_((rows, mirror(low + 1).long()), fraction, accumulate=True)
    return matrix


def rise_masks(grid: Tensor, shifts: Tensor, height: int, width: int) -> Tensor:
    """(N, H, W) float64 masks from (N, s, s) binary ``grid`` cells and (N, 2) crop ``shifts``."""
    cells = grid.shape[1]
    cell_h, cell_w = math.ceil(height / cells), math.ceil(width / cells)
    rows = mirror_bilinear_matrix(cells, (cells + 1) * cell_h)
    columns = mirror_bilinear_matrix(cells, (cells + 1) * cell_w)
    row_index = shifts[:, :1] + torch.arange(height)  # (N, H): the crop's rows of the upsampled mask
    column_index = shifts[:, 1:] + torch.arange(width)
    return torch.einsum("nhi,nij,nwj->nhw", rows[row_index], grid.to(torch.float64), columns[column_index])


class RISE(AttributionMethod):
    """RISE: Randomized Input Sampling for Explanation (Petsiuk et al., BMVC 2018), with the
    SAMP paper's settings as defaults: 400 masks, an 8 × 8 grid, keep probability p = 0.1.

    Args:
        n_masks: number of random masks N.
        grid_size: cells s per side of the mask grid.
        p: probability that a cell is kept (shown); hidden pixels become 0.
        seed: seeds the masks (a private CPU generator; the global RNG is untouched).
        score: the model output weighting each mask: "probability" (softmax, as the authors'
            code, which appends a Softmax to the model), "logit" or "log_probability".
        internal_batch_size: masked images per forward pass (default: as IntegratedGradients'
            passes; also a per-call option). ``batch_size`` is its deprecated alias.

    No gradients: the model is only evaluated. ``masks_for(height, width)`` returns the masks.
    """

    needs_gradients = False  # model calls only: runs under torch.inference_mode() too
    streams_passes = True
    call_options = ("internal_batch_size",)
    batch_size = DeprecatedBatchSize()

    def __init__(
        self,
        model: nn.Module,
        n_masks: int = 400,
        grid_size: int = 8,
        p: float = 0.1,
        seed: int = 0,
        score: str = "probability",
        batch_size: Optional[int] = None,
        internal_batch_size: Optional[int] = None,
    ) -> None:
        super().__init__(model)
        self.n_masks = check_positive_int(n_masks, "n_masks")
        self.grid_size = check_positive_int(grid_size, "grid_size")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
            raise ValueError(f"p must be a number in (0, 1] (the probability a cell is kept), got {p!r}")
        self.p = float(p)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.seed = int(seed)
        self.score = check_score(score)
        self.internal_batch_size = pass_size(internal_batch_size, batch_size, "RISE")
        self._cache: dict = {}

    def draws(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """The seeded random draws: (N, s, s) kept cells and (N, 2) crop shifts (row, column)."""
        generator = torch.Generator().manual_seed(self.seed)
        s = self.grid_size
        grid = torch.rand(self.n_masks, s, s, generator=generator, dtype=torch.float64) < self.p
        shift_rows = torch.randint(0, math.ceil(height / s), (self.n_masks, 1), generator=generator)
        shift_columns = torch.randint(0, math.ceil(width / s), (self.n_masks, 1), generator=generator)
        return grid, torch.cat([shift_rows, shift_columns], dim=1)

    def masks_for(self, height: int, width: int, dtype: torch.dtype = torch.float64,
                  device: Union[str, torch.device, None] = None) -> Tensor:
        """The (N, H, W) masks for images of this size (cached per size, dtype and device)."""
        key = (height, width, dtype, str(device))
        if key not in self._cache:
            grid, shifts = self.draws(height, width)
            self._cache[key] = rise_masks(grid, shifts, height, width).to(dtype=dtype, device=device)
        return self._cache[key]

    def _forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        batch, channels, height, width = inputs.shape
        masks = self.masks_for(height, width, inputs.dtype, inputs.device)
        per_pass = repeats_per_pass(self.internal_batch_size, inputs, self.n_masks)
        scores = torch.empty(self.n_masks, batch, dtype=inputs.dtype, device=inputs.device)
        targets = target.repeat(per_pass)
        with torch.no_grad():
            for start in range(0, self.n_masks, per_pass):
                chunk = masks[start : start + per_pass]
                count = chunk.shape[0]
                masked = chunk[:, None, None] * inputs  # (count, B, C, H, W)
                logits = self._forward(masked.view(count * batch, channels, height, width))
                scores[start : start + count] = score_outputs(logits, targets[: count * batch], self.score).view(count, batch)
        saliency = scores.t() @ masks.view(self.n_masks, -1)
        return (saliency / (self.n_masks * self.p)).view(batch, height, width)
