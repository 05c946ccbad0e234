"""Explanation supervision (res.md): RES-G and RES-L (Gao et al., KDD 2022), GRADIA and HAICS.

One training step, for the whole batch:

1. ONE train-mode forward with a hook on ``layer`` gives the logits and the activations A;
   the channel weights w_k (spatial mean of ∂logit_y/∂A_k, true label y) come from an
   ``autograd.grad`` without ``create_graph`` (constants), cam = Σ_k w_k A_k, and
   M = (cam − min) / (max(cam − min) + 1e-6) per image, no ReLU, min/max inside the graph
   (as the released script: it subtracts the minimum, then divides by the maximum of the
   shifted map). The explanation loss therefore reaches the network only through A, never the
   classifier weights.
2. Targets at the map's resolution: F = nearest(P) − nearest(N) (each mask sampled at
   (i·H/h, j·W/w), torch's "nearest").
3. L = CE + weight · L_exp on the images that carry masks (``has_mask``); a batch may mix
   annotated and unannotated images, and one without any annotated image gives L_exp = 0.

The released script computes M with one extra forward per image (batch of one, train-mode
BatchNorm statistics of that single image); here the maps come from the training forward
itself, so BatchNorm normalises with the whole batch's statistics — the maps can differ from
the script's on models with BatchNorm. The released script also flips only the images, not
their masks, under augmentation; :mod:`saliency_fast.data.annotated` flips both.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..methods.gradcam import gradcam_maps, resolve_layer
from .objectives import MethodOutput, TrainingMethod, check_choice, check_nonnegative, evaluating, unwrap

Layer = Union[str, nn.Module, None]

NORMALIZE_EPS = 1e-6      # M = (cam − min) / (max + 1e-6)
THRESHOLD_OFFSET = 1e-4   # negative candidates of the threshold search are M + 1e-4
TANH_SLOPE = 5.0          # L_align compares tanh(5 · (M − a)) with F
# 3×3 Gaussian of cv2.GaussianBlur((3, 3), sigma=0): [1, 2, 1]/4 outer [1, 2, 1]/4
GAUSSIAN_3X3 = ((1.0, 2.0, 1.0), (2.0, 4.0, 2.0), (1.0, 2.0, 1.0))


# -- the pieces of res.md, each a pure function of tensors --------------------------------------
def normalize_cam(cam: Tensor) -> Tensor:
    """M = (cam − min) / (max(cam − min) + 1e-6) per image of (B, h, w); differentiable."""
    flat = cam.flatten(1)
    shifted = flat - flat.amin(dim=1, keepdim=True)
    return (shifted / (shifted.amax(dim=1, keepdim=True) + NORMALIZE_EPS)).view_as(cam)


def downsample_mask(mask: Tensor, size: Tuple[int, int]) -> Tensor:
    """(B, H, W) 0/1 mask → (B, h, w) float, the pixel at (floor(i·H/h), floor(j·W/w)) (INTER_NEAREST)."""
    mask = mask.to(torch.float32).unsqueeze(1)
    if tuple(mask.shape[-2:]) != tuple(size):
        mask = F.interpolate(mask, size=tuple(size), mode="nearest")
    return mask.squeeze(1)


def signed_target(positive: Tensor, negative: Optional[Tensor], size: Tuple[int, int]) -> Tensor:
    """F_small = nearest(P) − nearest(N) at the map's resolution, values in {−1, 0, 1}."""
    target = downsample_mask(positive, size)
    if negative is not None:
        target = target - downsample_mask(negative, size)
    return target


def explanation_threshold(maps: Tensor, target: Tensor) -> Tensor:
    """The RES threshold a (a 0-dim tensor, no gradient) for maps M and signed targets F.

    Candidates, in this order: M + 1e-4 of every negative cell (F < 0), then M of every
    positive cell (F > 0), each in flat order. score(v) = #{neg: v > M}/|neg| +
    #{pos: v ≤ M}/|pos| (a term is dropped when its set is empty); a is the first candidate
    with the largest score, 0 if that score is ≤ 0 (no annotated cell).

    The released script loops over candidates × cells in Python (O(n²)). Here both counts come
    from binary searches in the sorted negative and positive values, O(n log n), without a
    device synchronisation: cells that are not candidates get the score −1 and never win.
    """
    with torch.no_grad():
        values = maps.detach().reshape(-1)
        signs = target.detach().reshape(-1).to(values.device)
        negative, positive = signs < 0, signs > 0
        infinity = torch.full_like(values, math.inf)
        sorted_negative = torch.where(negative, values, infinity).sort().values
        sorted_positive = torch.where(positive, values, infinity).sort().values
        n_negative = negative.sum().to(values.dtype)
        n_positive = positive.sum().to(values.dtype)
        candidates = torch.cat([values + THRESHOLD_OFFSET, values])
        valid = torch.cat([negative, positive])
        # #{neg: M < v} and #{pos: M < v}: the left insertion points (+inf padding never counts)
        below_negative = torch.searchsorted(sorted_negative, candidates, side="left").to(values.dtype)
        below_positive = torch.searchsorted(sorted_positive, candidates, side="left").to(values.dtype)
        zero = torch.zeros((), dtype=values.dtype, device=values.device)
        score = (torch.where(n_negative > 0, below_negative / n_negative.clamp_min(1), zero)
                 + torch.where(n_positive > 0, (n_positive - below_positive) / n_positive.clamp_min(1), zero))
        score = torch.where(valid, score, torch.full_like(score, -1.0))
        if score.numel() == 0:
            return zero
        best = score.argmax()  # the first index among equal maxima
        return torch.where(score[best] > 0, candidates[best], zero)


def _cell_weights(target: Tensor, has_mask: Tensor) -> Tensor:
    """(B, h, w) float weights: 1 on every cell of an annotated image, 0 elsewhere."""
    return has_mask.to(target.dtype).view(-1, 1, 1).expand_as(target)


def _masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Σ w·v / Σ w, 0 when Σ w = 0 (never NaN; unselected NaN/Inf values cannot leak in)."""
    total = torch.where(weights > 0, values * weights, torch.zeros_like(values)).sum()
    return total / weights.sum().clamp_min(1)


def align_loss(maps: Tensor, target: Tensor, has_mask: Tensor) -> Tuple[Tensor, Tensor]:
    """(L_align, a): Σ_{F≠0} |tanh(5·(M − a)) − F| / #{F ≠ 0} over the annotated images, 0 if none."""
    annotated = _cell_weights(target, has_mask) * (target != 0).to(target.dtype)
    threshold = explanation_threshold(maps, torch.where(annotated > 0, target, torch.zeros_like(target)))
    error = (torch.tanh(TANH_SLOPE * (maps - threshold)) - target).abs()
    return _masked_mean(error, annotated), threshold


def gaussian_target(target: Tensor) -> Tensor:
    """G = blur3×3(relu(F)) / (max + 1e-6) per image, border reflect-101 (cv2's default); a constant."""
    with torch.no_grad():
        positive = target.clamp_min(0).unsqueeze(1)
        kernel = torch.tensor(GAUSSIAN_3X3, dtype=positive.dtype, device=positive.device).div_(16.0)
        mode = "reflect" if min(positive.shape[-2:]) > 1 else "replicate"  # reflect needs 2+ cells a side
        blurred = F.conv2d(F.pad(positive, (1, 1, 1, 1), mode=mode), kernel.view(1, 1, 3, 3)).squeeze(1)
        return blurred / (blurred.flatten(1).amax(dim=1).view(-1, 1, 1) + NORMALIZE_EPS)


def gradia_loss(maps: Tensor, target: Tensor, has_mask: Tensor) -> Tensor:
    """GRADIA: mean |M − relu(F)| over every cell of the annotated images."""
    return _masked_mean((maps - target.clamp_min(0)).abs(), _cell_weights(target, has_mask))


def _bce(maps: Tensor, labels: Tensor) -> Tensor:
    # binary_cross_entropy clamps each log at −100, so M = 0 or 1 gives a finite loss; autocast
    # refuses it on CUDA ("unsafe to autocast"), so it runs outside autocast in the maps' dtype
    with torch.autocast(maps.device.type, enabled=False):
        return F.binary_cross_entropy(maps.clamp(0, 1), labels.to(maps.dtype), reduction="none")


def haics_loss(maps: Tensor, target: Tensor, has_mask: Tensor, form: str = "masked") -> Tensor:
    """HAICS: BCE(M, relu(F)).

    ``form="masked"``: the mean over annotated cells (F ≠ 0) of the annotated images.
    ``form="released"``: the released script's form, the mean BCE over all cells of the
    annotated images times the fraction of those cells that are annotated.
    """
    weights = _cell_weights(target, has_mask)
    annotated = weights * (target != 0).to(target.dtype)
    bce = _bce(maps, target.clamp_min(0))
    if form == "masked":
        return _masked_mean(bce, annotated)
    fraction = annotated.sum() / weights.sum().clamp_min(1)
    return _masked_mean(bce, weights) * fraction


def projector_geometry(input_size: Tuple[int, int], map_size: Tuple[int, int]) -> Tuple[Tuple[int, int], ...]:
    """(kernel, stride, padding) per axis of Φ: stride = H/h, kernel = 2·stride, padding = stride/2.

    For ResNet-50 (224 → 7): kernel 64, stride 32, padding 16, as the released script. An odd
    stride s takes padding ⌈s/2⌉ and stride 1 kernel 3, padding 1 — the choices for which the
    output is exactly h×w.
    """
    kernel, stride, padding = [], [], []
    for side, cells in zip(input_size, map_size):
        if cells < 1 or side % cells != 0:
            raise ValueError(
                f"RES-L needs the input size {tuple(input_size)} to be a whole multiple of the explanation "
                f"map's size {tuple(map_size)} (Φ maps the full-resolution mask onto the map with one strided "
                "convolution); resize the inputs or pick another layer"
            )
        step = side // cells
        stride.append(step)
        kernel.append(3 if step == 1 else 2 * step)
        padding.append(1 if step == 1 else (step + 1) // 2)
    return tuple(kernel), tuple(stride), tuple(padding)


class MaskProjector(nn.Module):
    """Φ_w of RES-L: Conv2d(1 → 1) from the full-resolution positive mask to the map, min-max normalised.

    Its size depends on the input and map resolutions, which the trainer only sees at the first
    batch, after it has built the optimiser. So the parameters exist from the start as empty
    tensors and are filled in place (same Parameter objects) at the first batch, with
    Conv2d's default initialisation; optimisers that create their per-parameter state at the
    first step (SGD, Adam, AdamW, ...) then train Φ jointly with the model.
    """

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(0))
        self.bias = nn.Parameter(torch.empty(0))
        self.geometry: Optional[Tuple[Tuple[int, int], ...]] = None
        self._hooks = []

    @property
    def built(self) -> bool:
        return self.geometry is not None

    def build(self, input_size: Tuple[int, int], map_size: Tuple[int, int]) -> None:
        geometry = projector_geometry(input_size, map_size)
        reference = nn.Conv2d(1, 1, geometry[0], stride=geometry[1], padding=geometry[2])
        self.weight.data = reference.weight.data.to(self.weight.device, self.weight.dtype)
        self.bias.data = reference.bias.data.to(self.bias.device, self.bias.dtype)
        self.geometry = geometry
        self._average_gradients_across_processes()

    def _average_gradients_across_processes(self) -> None:
        """Φ lives outside the DDP-wrapped model, so its gradients are averaged here."""
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1) or self._hooks:
            return

        def average(parameter: Tensor) -> None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad.div_(dist.get_world_size())

        self._hooks = [p.register_post_accumulate_grad_hook(average) for p in (self.weight, self.bias)]

    def forward(self, positive_full: Tensor, map_size: Tuple[int, int]) -> Tensor:
        if not self.built:
            self.build(tuple(positive_full.shape[-2:]), tuple(map_size))
        _, stride, padding = self.geometry
        out = F.conv2d(positive_full.unsqueeze(1).to(self.weight.dtype), self.weight, self.bias, stride=stride,
                       padding=padding).squeeze(1)
        if tuple(out.shape[-2:]) != tuple(map_size):
            raise ValueError(f"RES-L's Φ was built for maps of another size: it gives {tuple(out.shape[-2:])}, "
                             f"the maps are {tuple(map_size)}; train with one input size")
        return normalize_cam(out)

    def state(self) -> Dict[str, object]:
        return {"weight": self.weight.detach().clone(), "bias": self.bias.detach().clone(),
                "geometry": [list(part) for part in self.geometry] if self.built else None}

    def load(self, state: Dict[str, object]) -> None:
        self.weight.data = state["weight"].to(self.weight.device, self.weight.dtype)
        self.bias.data = state["bias"].to(self.bias.device, self.bias.dtype)
        geometry = state["geometry"]
        self.geometry = tuple(tuple(part) for part in geometry) if geometry is not None else None
        if self.built:
            self._average_gradients_across_processes()


# -- the training methods -------------------------------------------------------------------------
def _check_batch(batch: Sequence, name: str) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor], Tensor]:
    if len(batch) != 5:
        raise ValueError(f"{name} needs batches (x, y, positive_mask, negative_mask, has_mask), got {len(batch)} "
                         "items; use saliency_fast.data.annotated_digits_loaders or res_format_loaders")
    x, y, positive, negative, has_mask = batch
    size = tuple(x.shape[-2:])
    for mask, label in ((positive, "positive_mask"), (negative, "negative_mask")):
        if mask is None and label == "negative_mask":
            continue
        if mask.dim() == 4 and mask.shape[1] == 1:
            mask = mask[:, 0]
        if mask.dim() != 3 or mask.shape[0] != x.shape[0] or tuple(mask.shape[-2:]) != size:
            raise ValueError(f"{label} must be (B, H, W) = ({x.shape[0]}, {size[0]}, {size[1]}) like the images, "
                             f"got {tuple(mask.shape)}")
    positive = positive.reshape(x.shape[0], *size)
    negative = negative.reshape(x.shape[0], *size) if negative is not None else None
    has_mask = has_mask.reshape(-1).to(device=x.device, dtype=torch.bool)
    if has_mask.numel() != x.shape[0]:
        raise ValueError(f"has_mask must hold one flag per image ({x.shape[0]}), got {has_mask.numel()}")
    return x, y, positive, negative, has_mask


class ExplanationSupervision(TrainingMethod):
    """Base class: CE + weight · L_exp(M, F) with M the batch's Grad-CAM maps (module docstring).

    ``layer``: the module (or its dotted name in the model) whose output Grad-CAM explains;
    None takes the model's ``GRADCAM_LAYER`` attribute (``DigitsCNN``: "features.4").
    """

    name = "explanation"

    def __init__(self, layer: Layer = None, weight: float = 1.0):
        if layer is not None and not isinstance(layer, (str, nn.Module)):
            raise TypeError(f"layer must be a submodule, its dotted name, or None, got {type(layer).__name__}")
        self.layer = layer
        self.weight = check_nonnegative(weight, "weight")

    def config(self):
        config = super().config()
        if isinstance(self.layer, nn.Module):
            config["layer"] = type(self.layer).__name__
        return config

    def layer_module(self, model: nn.Module) -> nn.Module:
        net = unwrap(model)
        layer = self.layer if self.layer is not None else getattr(net, "GRADCAM_LAYER", None)
        if layer is None:
            raise ValueError(f"{type(self).__name__} needs layer=... (the module or dotted name Grad-CAM explains); "
                             f"{type(net).__name__} has no GRADCAM_LAYER attribute to default to")
        return resolve_layer(net, layer)

    def maps(self, model: nn.Module, x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
        """(M (B, h, w) differentiable through the activations, logits) from one forward of ``model``."""
        cam, logits = gradcam_maps(model, x, y, self.layer_module(model), relu=False)
        return normalize_cam(cam), logits

    def explanation_loss(self, maps: Tensor, target: Tensor, has_mask: Tensor, positive: Tensor,
                         negative: Optional[Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        """(L_exp, extra terms to log) from M, F_small and the full-resolution masks."""
        raise NotImplementedError

    def loss(self, model, batch, epoch):
        x, y, positive, negative, has_mask = _check_batch(batch, type(self).__name__)
        maps, logits = self.maps(model, x, y)
        if maps.dtype in (torch.float16, torch.bfloat16):
            maps = maps.float()  # the explanation losses in float32 under autocast
        target = signed_target(positive, negative, tuple(maps.shape[-2:])).to(maps.dtype)
        ce = F.cross_entropy(logits, y)
        exp, terms = self.explanation_loss(maps, target, has_mask, positive, negative)
        terms = {"ce": ce.detach(), "exp": exp.detach(), **{k: v.detach() for k, v in terms.items()}}
        return MethodOutput(ce + self.weight * exp, logits, terms)


class GRADIA(ExplanationSupervision):
    """GRADIA (Gao et al., 2022): L_exp = mean |M − relu(F)|."""

    name = "gradia"

    def explanation_loss(self, maps, target, has_mask, positive, negative):
        return gradia_loss(maps, target, has_mask), {}


class HAICS(ExplanationSupervision):
    """HAICS (Shen et al., 2021): L_exp = BCE(M, relu(F)) on annotated cells (see :func:`haics_loss`)."""

    name = "haics"
    FORMS = ("masked", "released")

    def __init__(self, layer: Layer = None, weight: float = 1.0, form: str = "masked"):
        super().__init__(layer, weight)
        self.form = check_choice(form, "form", self.FORMS)

    def explanation_loss(self, maps, target, has_mask, positive, negative):
        return haics_loss(maps, target, has_mask, self.form), {}


class RES(ExplanationSupervision):
    """RES (Gao et al., KDD 2022): L_exp = relu(L_align − η) + mean |M − T|.

    ``variant="G"``: T = G, a fixed 3×3 Gaussian blur of relu(F) (:func:`gaussian_target`).
    ``variant="L"``: T = Φ_w(relu(P − N) at full resolution), a learnable strided convolution
    (:class:`MaskProjector`) trained with the model by the same optimiser (it is in
    :meth:`parameters` and in the checkpoints). Pixels marked both positive and negative count as
    unannotated, as in F. ``reg`` > 0 adds reg · mean (Φ_w − relu(F))², the released script's
    optional ``--reg`` term (off there by default, and not part of res.md): nothing else ties
    Φ to the masks, so without it Φ can drift (see EXPERIMENTS.md).
    """

    VARIANTS = ("G", "L")

    def __init__(self, variant: str = "G", eta: float = 0.1, layer: Layer = None, weight: float = 1.0,
                 reg: float = 0.0):
        super().__init__(layer, weight)
        self.variant = check_choice(str(variant).upper(), "variant", self.VARIANTS)
        self.eta = check_nonnegative(eta, "eta")
        self.reg = check_nonnegative(reg, "reg")
        if self.reg and self.variant != "L":
            raise ValueError("reg (the pull of Φ towards relu(F)) applies to variant='L' only")
        self._projector = MaskProjector() if self.variant == "L" else None

    @property
    def name(self) -> str:
        return f"res-{self.variant.lower()}"

    @property
    def projector(self) -> Optional[MaskProjector]:
        return self._projector

    def parameters(self):
        return list(self._projector.parameters()) if self._projector is not None else []

    def to(self, device):
        if self._projector is not None:
            self._projector.to(device)
        return self

    def state_dict(self):
        return {"projector": self._projector.state()} if self._projector is not None else {}

    def load_state_dict(self, state):
        if self._projector is None:
            return super().load_state_dict(state)
        if "projector" not in state:
            raise ValueError(f"a RES-L checkpoint holds the state of Φ under 'projector'; got keys {sorted(state)}")
        self._projector.load(state["projector"])

    def explanation_target(self, target: Tensor, positive: Tensor, negative: Optional[Tensor]) -> Tensor:
        if self.variant == "G":
            return gaussian_target(target)
        positive_only = positive.to(torch.bool)
        if negative is not None:
            positive_only = positive_only & ~negative.to(torch.bool)
        return self._projector(positive_only, tuple(target.shape[-2:])).to(target.dtype)

    def explanation_loss(self, maps, target, has_mask, positive, negative):
        align, threshold = align_loss(maps, target, has_mask)
        mapped = self.explanation_target(target, positive, negative)
        cells = _cell_weights(target, has_mask)
        fit_term = _masked_mean((maps - mapped).abs(), cells)
        loss = F.relu(align - self.eta) + fit_term
        terms = {"align": align, "threshold": threshold, "fit": fit_term}
        if self.reg:
            terms["reg"] = _masked_mean((mapped - target.clamp_min(0)) ** 2, cells)
            loss = loss + self.reg * terms["reg"]
        return loss, terms


# -- evaluation -----------------------------------------------------------------------------------
def explanation_maps(model: nn.Module, x: Tensor, layer: Layer = None, target=None) -> Tuple[Tensor, Tensor]:
    """Evaluation maps (B, h, w): Grad-CAM (no ReLU) of the predicted class (or ``target``) in eval
    mode, min-max normalised; and the logits. Both detached."""
    layer = layer if layer is not None else getattr(unwrap(model), "GRADCAM_LAYER", None)
    if layer is None:
        raise ValueError("pass layer=... (the module or dotted name Grad-CAM explains)")
    with evaluating(model):
        cam, logits = gradcam_maps(model, x, target, layer, relu=False)
    return normalize_cam(cam).detach(), logits.detach()


def evaluate_explanations(model: nn.Module, loader, layer: Layer = None, device=None,
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
        x, y, positive, negative, has_mask = _check_batch(
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


__all__ = ["RES", "GRADIA", "HAICS", "ExplanationSupervision", "MaskProjector", "explanation_threshold",
           "align_loss", "gaussian_target", "gradia_loss", "haics_loss", "normalize_cam", "signed_target",
           "downsample_mask", "projector_geometry", "explanation_maps", "evaluate_explanations",
           "save_overlay_figure"]
