"""SAMP and SAMP++ (Zhang et al., ICLR 2024): attribution along the Salient Manipulation Path.

The algorithm is specified in shared/specs/samp.md. Each step is one forward + backward of
the model (images that have converged leave the batch) followed by one native ``samp_step``
op that does everything else: momentum, projection, k-th selection, IC scaling and the
in-place update of the path state.

float16/bfloat16 inputs: the model runs in the inputs' dtype, while the path (point, momentum,
attribution) is kept in float32, so that many small partial steps do not round away; the maps
are float32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from .. import ops
from .._common import (
    PATHS,
    BoundModel,
    Selector,
    Target,
    check_score,
    input_gradient,
    minmax_normalize,
    relative_completeness_error,
    score_outputs,
    warn_if_not_finite,
)
from ..ops import ATOL, RTOL, pixels_active
from .._validation import check_choice
from ..references import SMALL_IMAGE_SIDE, Reference, make_reference
from ._base import AttributionMethod

PATH_DTYPES = {torch.float16: torch.float32, torch.bfloat16: torch.float32,
               torch.float32: torch.float32, torch.float64: torch.float64}
TIES = ("include", "exact")
REDUCTIONS = ("sum", "norm")


class StepLimitExceeded(RuntimeError):
    """A path needed more than ``max_steps`` model calls (raise max_steps or pixels_per_step)."""


@dataclass
class PathResult:
    """One manipulation path. ``attribution`` is signed so that it sums to about
    f_c(x) − f_c(reference) (completeness); ``steps`` counts each image's steps."""

    attribution: Tensor  # (B, H, W)
    steps: Tensor  # (B,) int64
    model_calls: int  # forward+backward calls (batched); equals max(steps) on CPU
    reference: Tensor  # (B, C, H, W)
    input_score: Optional[Tensor]  # (B,) f_c(x); None from attribute(), which skips scoring
    reference_score: Optional[Tensor]  # (B,) f_c(reference)

    @property
    def completeness_error(self) -> Tensor:
        """|Σ A − (f_c(x) − f_c(r))| / |f_c(x) − f_c(r)| per image (0 where both sides are 0)."""
        if self.input_score is None or self.reference_score is None:
            raise TypeError("completeness_error needs the path's scores; run attribute_paths(..., scores=True)")
        return relative_completeness_error(self.attribution, self.input_score - self.reference_score)


@dataclass
class SAMPResult:
    attribution: Tensor  # (B, H, W) the final map (reduced, normalised as configured)
    raw: Tensor  # (B, H, W) the reduced map before the final min–max
    paths: Dict[str, PathResult]  # name → PathResult
    target: Tensor  # (B,) the explained class

    @property
    def model_calls(self) -> int:
        return sum(path.model_calls for path in self.paths.values())


class _CudaCalls:
    """The CUDA calls _HostCounts makes (its tests substitute a recorder)."""

    device = staticmethod(torch.cuda.device)
    current_stream = staticmethod(torch.cuda.current_stream)
    Event = staticmethod(torch.cuda.Event)

    @staticmethod
    def pinned_like(tensor: Tensor) -> Tensor:
        return torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)


class _HostCounts:
    """The host's view of each image's active-pixel count, used to drop converged images.

    On CPU it is the count tensor itself (no copy). On CUDA it is a pinned copy taken without
    blocking and read one step later, so the loop never waits for the device; an image that
    has just converged costs at most two extra (no-op) batched model calls.

    Everything CUDA runs under a guard of ``count``'s device: the non-blocking copy runs on that
    device's current stream, so the event that says it has landed is recorded there too (an
    event on the current device's stream would not wait for it when the inputs live on another
    GPU), and no CUDA context is created on the current device. ``cuda`` is the torch.cuda-like
    namespace used (``device``, ``current_stream``, ``Event``, ``pinned_like``).
    """

    def __init__(self, count: Tensor, cuda: Any = _CudaCalls) -> None:
        self.count = count
        self.on_cpu = count.device.type == "cpu"
        if self.on_cpu:
            self.count_view = count.numpy()  # shares memory: no copy or tensor op per step
        else:
            self.cuda = cuda
            with cuda.device(count.device):  # pinning and events on count's device
                self.buffers = [cuda.pinned_like(count) for _ in range(2)]
                self.events = [cuda.Event(), cuda.Event()]
            self.latest: Optional[int] = None
            self.snapshot()
            self.snapshot()

    def snapshot(self) -> None:
        """Start copying the current counts to the host (no-op on CPU)."""
        if self.on_cpu:
            return
        slot = 0 if self.latest is None else 1 - self.latest
        with self.cuda.device(self.count.device):
            self.buffers[slot].copy_(self.count, non_blocking=True)
            self.events[slot].record(self.cuda.current_stream(self.count.device))
        self.latest = slot

    def live(self) -> np.ndarray:
        """Indices of images that may still have pixels to move."""
        if self.on_cpu:
            return self.count_view.nonzero()[0]  # the method: np.flatnonzero costs 4× more
        assert self.latest is not None  # __init__ took two snapshots
        older = 1 - self.latest  # taken a step ago: normally finished already
        self.events[older].synchronize()
        return np.flatnonzero(self.buffers[older].numpy())


class SAMP(AttributionMethod):
    """Salient Manipulation Path attribution; ``SAMP.plus(model)`` is SAMP++ (IC + momentum).

    Args (samp.md): ``pixels_per_step`` s (int, or a fraction of H·W; default 10 for images up
    to 64×64, else 16·W), ``n_frag`` (IC: each step's L1 ≤ D / n_frag; None = off),
    ``momentum`` (weight of the new gradient; None = off), ``paths``, the two references
    ("zeros", "blur" or tensors), ``score`` ("logit", "probability", "log_probability"),
    ``reduction`` ("sum" or "norm"), ``normalize`` (final per-image min–max), ``ties``
    ("include" or "exact"), ``tie_tolerance`` (with ties "include": pixels whose projection
    lies within it of the k-th value move too; 0.0 = the paper's top-k, 1e-6 reproduces the
    published benchmark code), ``max_steps`` (per path; exceeding it raises).

    Inputs may be float16/bfloat16 (the model runs in that dtype; the path is kept in float32 and
    the maps are float32), float32 or float64.

    ``attribute(inputs, target=None, additional_forward_args=None, *, output=None)`` returns the
    (B, H, W) maps (positive = supports the target class), with ``AttributionMethod``'s call
    contract; SAMP takes no ``baselines`` (its path ends are ``deletion_reference`` and
    ``insertion_reference``). ``attribute_paths`` also returns each path's map, steps and scores;
    ``attribute_with_completeness`` the maps and each image's completeness error, averaged over
    the paths (each path's attribution sums to about f_c(x) − f_c(reference)).
    """

    def __init__(
        self,
        model: Union[nn.Module, Callable[[Tensor], Tensor]],
        pixels_per_step: Union[int, float, None] = None,
        n_frag: Optional[int] = None,
        momentum: Optional[float] = None,
        paths: Sequence[str] = PATHS,
        deletion_reference: Reference = "zeros",
        insertion_reference: Reference = "blur",
        blur_kernel: Optional[int] = None,
        blur_sigma: float = 5.0,
        score: str = "logit",
        reduction: str = "sum",
        normalize: bool = True,
        ties: str = "include",
        max_steps: Optional[int] = None,
        tie_tolerance: float = 0.0,
    ) -> None:
        super().__init__(model)
        self.pixels_per_step = _check_pixels_per_step(pixels_per_step)
        if n_frag is not None and (isinstance(n_frag, bool) or not isinstance(n_frag, int) or n_frag < 1):
            raise ValueError(f"n_frag must be a positive int or None, got {n_frag!r}")
        if momentum is not None and not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1] (the weight of the new gradient) or None, got {momentum!r}")
        paths = (paths,) if isinstance(paths, str) else tuple(paths)
        if not paths or any(path not in PATHS for path in paths) or len(set(paths)) != len(paths):
            raise ValueError(f"paths must be a non-empty subset of {PATHS}, got {paths!r}")
        check_choice(ties, "ties", TIES)
        if isinstance(tie_tolerance, bool) or not isinstance(tie_tolerance, (int, float)) \
                or not 0.0 <= tie_tolerance < math.inf:
            raise ValueError(f"tie_tolerance must be a finite number >= 0, got {tie_tolerance!r}")
        if tie_tolerance > 0 and ties == "exact":
            raise ValueError("tie_tolerance > 0 moves extra pixels; it cannot be combined with ties='exact'")
        check_choice(reduction, "reduction", REDUCTIONS)
        if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
            raise ValueError(f"max_steps must be a positive int or None, got {max_steps!r}")
        self.n_frag = n_frag
        self.momentum = momentum
        self.paths = paths
        self.references = {"deletion": deletion_reference, "insertion": insertion_reference}
        self.blur_kernel = blur_kernel
        self.blur_sigma = blur_sigma
        self.score = check_score(score)
        self.reduction = reduction
        self.normalize = normalize
        self.ties = ties
        self.tie_tolerance = float(tie_tolerance)
        self.max_steps = max_steps

    @classmethod
    def plus(cls, model: Union[nn.Module, Callable[[Tensor], Tensor]], **overrides: Any) -> "SAMP":
        """SAMP++ = SAMP + IC (n_frag = 50) + MS (momentum = 0.5)."""
        return cls(model, **{"n_frag": 50, "momentum": 0.5, **overrides})

    # -- public API ---------------------------------------------------------------------
    def attribute_paths(self, inputs: Tensor, target: Target = None, scores: bool = True, *,
                        additional_forward_args: Any = None, output: Selector = None) -> SAMPResult:
        """The map plus the raw per-path maps, steps, model calls and (with ``scores``) the
        scores of the inputs and references, which completeness checks need (one extra forward)."""
        with self._calling(inputs, target, None, additional_forward_args, output) as (call, inputs, target, _):
            result = call._attribute_paths(inputs, target, scores)
        warn_if_not_finite(result.raw, f"{type(self).__name__} maps")
        return result

    # -- internals ----------------------------------------------------------------------
    def _check_inputs(self, inputs: Tensor) -> Tensor:
        inputs = super()._check_inputs(inputs)
        if inputs.dtype not in PATH_DTYPES:
            raise TypeError(f"inputs must be float16, bfloat16, float32 or float64 for SAMP, got {inputs.dtype}")
        return inputs

    def _no_baselines_message(self) -> str:
        return ("SAMP takes no baselines argument: its paths run to deletion_reference and from "
                "insertion_reference (constructor options: 'zeros', 'blur' or a tensor)")

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        return self._attribute_paths(inputs, target, scores=False).attribution

    # SAMP's _attribute takes no keywords, so _take_call_options leaves none to pass here
    def _attribute_with_completeness(self, inputs: Tensor, target: Tensor  # type: ignore[override]
                                     ) -> tuple[Tensor, Tensor]:
        result = self._attribute_paths(inputs, target, scores=True)
        errors = torch.stack([path.completeness_error for path in result.paths.values()])
        return result.attribution, errors.mean(dim=0)

    def _attribute_paths(self, inputs: Tensor, target: Tensor, scores: bool) -> SAMPResult:
        """On validated inputs and a resolved (B,) target, with ``self.model`` bound (see _base)."""
        model_dtype = inputs.dtype
        inputs = inputs.to(PATH_DTYPES[model_dtype]).contiguous()
        results = {}
        for name in self.paths:
            reference = make_reference(
                self.references[name], inputs, f"{name}_reference", self.blur_kernel, self.blur_sigma
            )
            results[name] = self._run_path(inputs, reference, target, name == "insertion", scores, model_dtype)
        maps = [results[name].attribution for name in self.paths]
        if self.reduction == "norm":
            maps = [minmax_normalize(m) for m in maps]
        raw = torch.stack(maps).sum(0)
        final = minmax_normalize(raw) if self.normalize else raw
        return SAMPResult(attribution=final, raw=raw, paths=results, target=target)

    def _run_path(self, inputs: Tensor, reference: Tensor, target: Tensor, insertion: bool, scores: bool,
                  model_dtype: torch.dtype) -> PathResult:
        start, end = (reference, inputs) if insertion else (inputs, reference)
        k = resolve_pixels_per_step(self.pixels_per_step, inputs.shape[-2], inputs.shape[-1])
        state = _PathState(start, end, self.n_frag, k, insertion, self.ties == "exact", self.tie_tolerance)
        max_steps = self.max_steps or default_max_steps(inputs.shape[-2] * inputs.shape[-1], k, self.n_frag)
        counts = _HostCounts(state.active_count)
        model, score = self.model, self.score
        cast = model_dtype != state.point.dtype  # half models: the path is kept in float32
        batch = inputs.shape[0]
        rows, batch_target = torch.arange(batch, device=inputs.device), target
        calls = 0
        momentum = 1.0  # the first step uses the gradient itself
        later_momentum = 1.0 if self.momentum is None else float(self.momentum)
        # The loop runs between model calls, which evict the interpreter's working set, so it
        # keeps to a few calls: the live images are re-gathered only when the set shrinks.
        while True:
            live = counts.live()
            if live.size != rows.shape[0]:
                if live.size == 0:
                    break
                rows = torch.from_numpy(live).to(inputs.device)
                batch_target = target.index_select(0, rows)
                if isinstance(self.model, BoundModel):  # per-example forward arguments follow the live images
                    model = self.model.for_rows(rows)
            if calls >= max_steps:
                raise StepLimitExceeded(
                    f"SAMP exceeded max_steps={max_steps} on the {'insertion' if insertion else 'deletion'} "
                    f"path with {live.size} image(s) unfinished; raise max_steps or pixels_per_step"
                )
            point = state.point if live.size == batch else state.point.index_select(0, rows)
            grad, _ = input_gradient(model, point.to(model_dtype) if cast else point, batch_target, score)
            state.step(grad, rows, momentum)
            counts.snapshot()
            calls += 1
            momentum = later_momentum
        sign = 1.0 if insertion else -1.0
        input_score = reference_score = None
        if scores:
            with torch.no_grad():
                ends = torch.cat([inputs, reference]).to(model_dtype)
                end_scores = score_outputs(self.model(ends), target.repeat(2), self.score)
            input_score, reference_score = end_scores.to(inputs.dtype).chunk(2)
        return PathResult(
            attribution=sign * state.attribution,
            steps=state.step_count,
            model_calls=calls,
            reference=reference,
            input_score=input_score,
            reference_score=reference_score,
        )


def pairwise_row_sums(values: Tensor) -> Tensor:
    """(B, n) → (B,) row sums added in one fixed (pairwise) order, so that the CPU and CUDA give
    the same bits: torch.sum's order differs between their kernels, and SAMP++'s IC bound D / n_frag
    must be identical for the maps to be (README, "CPU/CUDA parity")."""
    while values.shape[1] > 1:
        if values.shape[1] % 2:
            values = torch.nn.functional.pad(values, (0, 1))  # + 0 is exact
        values = values[:, 0::2] + values[:, 1::2]
    return values[:, 0]


class _PathState:
    """The tensors one path updates in place, step after step, and the step's fixed options
    (s, the direction, the tie policy), converted once for the op."""

    def __init__(self, start: Tensor, end: Tensor, n_frag: Optional[int], k: int, insertion: bool,
                 exact_ties: bool, tie_tolerance: float = 0.0) -> None:
        batch, _, height, width = start.shape
        self.point = start.clone().contiguous()
        self.end = end.contiguous()
        self.grad_avg = torch.zeros_like(self.point)
        self.attribution = start.new_zeros(batch, height, width)
        self.active = pixels_active(self.point, self.end).contiguous()
        self.active_count = self.active.flatten(1).sum(1)
        self.step_count = torch.zeros(batch, dtype=torch.long, device=start.device)
        distance = pairwise_row_sums((self.point - self.end).abs().flatten(1))
        self.bound = distance / n_frag if n_frag else torch.full_like(distance, math.inf)
        self.k, self.insertion, self.exact_ties = int(k), bool(insertion), bool(exact_ties)
        self.tie_tolerance = float(tie_tolerance)

    def step(self, grad: Tensor, rows: Tensor, momentum: float) -> None:
        """One step for the images ``rows``, whose gradient is ``grad``; ``momentum`` a float."""
        if grad.dtype != self.point.dtype or not grad.is_contiguous():  # half models, or odd layouts
            grad = grad.to(self.point.dtype).contiguous()
        ops.samp_step(
            self.point, self.end, grad, self.grad_avg, self.attribution, self.active, self.active_count,
            self.step_count, rows, self.bound, self.k, momentum, self.insertion, self.exact_ties, ATOL, RTOL,
            self.tie_tolerance,
        )


def _check_pixels_per_step(value: Any) -> Union[int, float, None]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"pixels_per_step must be an int, a fraction in (0, 1) or None, got {value!r}")
    if isinstance(value, int) and value < 1 or isinstance(value, float) and not 0.0 < value < 1.0:
        raise ValueError(f"pixels_per_step must be an int >= 1 or a fraction in (0, 1), got {value!r}")
    return value


def resolve_pixels_per_step(value: Union[int, float, None], height: int, width: int) -> int:
    """s: 10 for images up to 64×64, 16·W for larger ones (3584 at 224×224); a float is a fraction of H·W."""
    if value is None:
        return 10 if max(height, width) <= SMALL_IMAGE_SIDE else 16 * width
    if isinstance(value, float):
        return max(1, round(value * height * width))
    return min(value, height * width)  # a step past the whole image moves every pixel at once


def default_max_steps(pixels: int, k: int, n_frag: Optional[int]) -> int:
    """Generous: full moves need at most ceil(H·W/s) steps and IC adds at most n_frag partial ones."""
    return 4 * (math.ceil(pixels / k) + (n_frag or 0)) + 16
