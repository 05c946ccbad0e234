"""Explanation supervision (res.md): the objectives RES-G and RES-L (Gao et al., KDD 2022), GRADIA
and HAICS, and RES-L's learnable mask transformation Φ (:class:`MaskProjector`).

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

The losses are in :mod:`.res_losses`, the evaluation (IoU, precision, recall, F1 of the maps) in
:mod:`.res_eval`, the overlay figure in :mod:`.res_figures`.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_choice, check_nonnegative
from ..methods.gradcam import gradcam_maps, resolve_layer
from .objectives import MethodOutput, TrainingMethod, unwrap
from .res_losses import (align_loss, cell_weights, gaussian_target, gradia_loss, haics_loss, masked_mean,
                         normalize_cam, signed_target)

Layer = Union[str, nn.Module, None]
Pair = Tuple[int, int]
Geometry = Tuple[Pair, Pair, Pair]  # (kernel, stride, padding) of Φ, each (height, width)


# -- Φ of RES-L -----------------------------------------------------------------------------------
def projector_geometry(input_size: Sequence[int], map_size: Sequence[int]) -> Geometry:
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
    return cast(Geometry, (tuple(kernel), tuple(stride), tuple(padding)))


class MaskProjector(nn.Module):
    """Φ_w of RES-L: Conv2d(1 → 1) from the full-resolution positive mask to the map, min-max normalised.

    Its size depends on the input and map resolutions, which the trainer only sees at the first
    batch, after it has built the optimiser. So the parameters exist from the start as empty
    tensors and are filled in place (same Parameter objects) at the first batch, with
    Conv2d's default initialisation; optimisers that create their per-parameter state at the
    first step (SGD, Adam, AdamW, ...) then train Φ jointly with the model.

    Φ lives outside the DDP-wrapped model; under DDP the trainer averages its gradients across
    processes (:meth:`RES.parameters`), once, as it does for every objective's own parameters.
    """

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(0))
        self.bias = nn.Parameter(torch.empty(0))
        self.geometry: Optional[Geometry] = None

    @property
    def built(self) -> bool:
        return self.geometry is not None

    def build(self, input_size: Sequence[int], map_size: Sequence[int]) -> Geometry:
        geometry = projector_geometry(input_size, map_size)
        reference = nn.Conv2d(1, 1, geometry[0], stride=geometry[1], padding=geometry[2])
        self.weight.data = reference.weight.data.to(self.weight.device, self.weight.dtype)
        self.bias.data = cast(Tensor, reference.bias).data.to(self.bias.device, self.bias.dtype)
        self.geometry = geometry
        return geometry

    def forward(self, positive_full: Tensor, map_size: Sequence[int]) -> Tensor:
        geometry = self.geometry if self.geometry is not None else self.build(positive_full.shape[-2:], map_size)
        _, stride, padding = geometry
        out = F.conv2d(positive_full.unsqueeze(1).to(self.weight.dtype), self.weight, self.bias, stride=stride,
                       padding=padding).squeeze(1)
        if tuple(out.shape[-2:]) != tuple(map_size):
            raise ValueError(f"RES-L's Φ was built for maps of another size: it gives {tuple(out.shape[-2:])}, "
                             f"the maps are {tuple(map_size)}; train with one input size")
        return normalize_cam(out)

    def state(self) -> Dict[str, Any]:
        return {"weight": self.weight.detach().clone(), "bias": self.bias.detach().clone(),
                "geometry": [list(part) for part in self.geometry] if self.geometry is not None else None}

    def load(self, state: Dict[str, Any]) -> None:
        self.weight.data = state["weight"].to(self.weight.device, self.weight.dtype)
        self.bias.data = state["bias"].to(self.bias.device, self.bias.dtype)
        geometry = state["geometry"]
        self.geometry = cast(Geometry, tuple(tuple(part) for part in geometry)) if geometry is not None else None


# -- the training objectives ----------------------------------------------------------------------
def check_explanation_batch(batch: Sequence[Any], name: str) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor], Tensor]:
    """(x, y, positive, negative, has_mask) of an explanation-supervision batch, the masks as
    (B, H, W) and ``has_mask`` as one bool per image; a ValueError naming ``name`` otherwise."""
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

    def __init__(self, layer: Layer = None, weight: float = 1.0) -> None:
        if layer is not None and not isinstance(layer, (str, nn.Module)):
            raise TypeError(f"layer must be a submodule, its dotted name, or None, got {type(layer).__name__}")
        self.layer = layer
        self.weight = check_nonnegative(weight, "weight")

    def config(self) -> Dict[str, Any]:
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

    def loss(self, model: nn.Module, batch: Sequence[Any], epoch: int) -> MethodOutput:
        x, y, positive, negative, has_mask = check_explanation_batch(batch, type(self).__name__)
        maps, logits = self.maps(model, x, y)
        if maps.dtype in (torch.float16, torch.bfloat16):
            maps = maps.float()  # the explanation losses in float32 under autocast
        target = signed_target(positive, negative, (maps.shape[-2], maps.shape[-1])).to(maps.dtype)
        ce = F.cross_entropy(logits, y)
        exp, terms = self.explanation_loss(maps, target, has_mask, positive, negative)
        terms = {"ce": ce.detach(), "exp": exp.detach(), **{k: v.detach() for k, v in terms.items()}}
        return MethodOutput(ce + self.weight * exp, logits, terms)


class GRADIA(ExplanationSupervision):
    """GRADIA (Gao et al., 2022): L_exp = mean |M − relu(F)|."""

    name = "gradia"

    def explanation_loss(self, maps: Tensor, target: Tensor, has_mask: Tensor, positive: Tensor,
                         negative: Optional[Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        return gradia_loss(maps, target, has_mask), {}


class HAICS(ExplanationSupervision):
    """HAICS (Shen et al., 2021): L_exp = BCE(M, relu(F)) on annotated cells (see :func:`haics_loss`)."""

    name = "haics"
    FORMS = ("masked", "released")

    def __init__(self, layer: Layer = None, weight: float = 1.0, form: str = "masked") -> None:
        super().__init__(layer, weight)
        self.form = check_choice(form, "form", self.FORMS)

    def explanation_loss(self, maps: Tensor, target: Tensor, has_mask: Tensor, positive: Tensor,
                         negative: Optional[Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
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
                 reg: float = 0.0) -> None:
        super().__init__(layer, weight)
        self.variant = check_choice(str(variant).upper(), "variant", self.VARIANTS)
        self.eta = check_nonnegative(eta, "eta")
        self.reg = check_nonnegative(reg, "reg")
        if self.reg and self.variant != "L":
            raise ValueError("reg (the pull of Φ towards relu(F)) applies to variant='L' only")
        self._projector = MaskProjector() if self.variant == "L" else None

    @property
    def name(self) -> str:  # type: ignore[override]  # per instance (res-g, res-l), read-only
        return f"res-{self.variant.lower()}"

    @property
    def projector(self) -> Optional[MaskProjector]:
        return self._projector

    def parameters(self) -> List[nn.Parameter]:
        return list(self._projector.parameters()) if self._projector is not None else []

    def to(self, device: torch.device) -> RES:
        if self._projector is not None:
            self._projector.to(device)
        return self

    def state_dict(self) -> Dict[str, Any]:
        return {"projector": self._projector.state()} if self._projector is not None else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if self._projector is None:
            super().load_state_dict(state)
            return
        if "projector" not in state:
            raise ValueError(f"a RES-L checkpoint holds the state of Φ under 'projector'; got keys {sorted(state)}")
        self._projector.load(state["projector"])

    def explanation_target(self, target: Tensor, positive: Tensor, negative: Optional[Tensor]) -> Tensor:
        if self._projector is None:  # variant G
            return gaussian_target(target)
        positive_only = positive.to(torch.bool)
        if negative is not None:
            positive_only = positive_only & ~negative.to(torch.bool)
        return self._projector(positive_only, target.shape[-2:]).to(target.dtype)

    def explanation_loss(self, maps: Tensor, target: Tensor, has_mask: Tensor, positive: Tensor,
                         negative: Optional[Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        align, threshold = align_loss(maps, target, has_mask)
        mapped = self.explanation_target(target, positive, negative)
        cells = cell_weights(target, has_mask)
        fit_term = masked_mean((maps - mapped).abs(), cells)
        loss = F.relu(align - self.eta) + fit_term
        terms = {"align": align, "threshold": threshold, "fit": fit_term}
        if self.reg:
            terms["reg"] = masked_mean((mapped - target.clamp_min(0)) ** 2, cells)
            loss = loss + self.reg * terms["reg"]
        return loss, terms


__all__ = ["RES", "GRADIA", "HAICS", "ExplanationSupervision", "MaskProjector", "projector_geometry",
           "check_explanation_batch"]
