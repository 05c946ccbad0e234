"""The attribution methods by name: what the CLI's ``--method`` and ``attribute_dataset``'s
``method=`` accept, each method's full parameter record (what a manifest stores), and building a
method from a name and options.

What a method decides at its first call (a CAM method's layer) is settled before a run by the
method's own ``resolved_options`` hook, so the record names the layer used.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, Optional, Tuple, Type

from torch import Tensor, nn

from .._io import json_record
from ._base import AttributionMethod
from .blur_ig import BlurIG
from .deeplift import DeepLift
from .gradcam import CAM, GradCAM, GradCAMPlusPlus, resolve_layer
from .gradients import InputXGradient, IntegratedGradients, Saliency, SmoothGrad
from .guided_ig import GuidedIG
from .lime import LIME
from .lrp import LRP
from .rise import RISE
from .samp import SAMP
from .xrai import XRAI

__all__ = ["METHOD_NAMES", "make_method", "build_method", "method_parameters", "resolved_options"]

# name → (class, defaults layered under the user's options)
_METHODS: Dict[str, Tuple[Type[AttributionMethod], Dict[str, Any]]] = {
    "samp": (SAMP, {}),
    "samp++": (SAMP, {"n_frag": 50, "momentum": 0.5}),  # exactly SAMP.plus
    "ig": (IntegratedGradients, {}),
    "saliency": (Saliency, {}),
    "inputxgradient": (InputXGradient, {}),
    "smoothgrad": (SmoothGrad, {}),
    "gradcam": (GradCAM, {}),
    "guidedig": (GuidedIG, {}),
    "lrp": (LRP, {}),
    "deeplift": (DeepLift, {}),
    "rise": (RISE, {}),
    "lime": (LIME, {}),
    "xrai": (XRAI, {}),
    "blurig": (BlurIG, {}),
    "gradcam++": (GradCAMPlusPlus, {}),
    "cam": (CAM, {}),
}
METHOD_NAMES = tuple(_METHODS)


def _method_entry(name: str) -> Tuple[Type[AttributionMethod], Dict[str, Any]]:
    if not isinstance(name, str) or name.lower() not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(METHOD_NAMES)}, got {name!r}")
    return _METHODS[name.lower()]


def resolved_options(name: str, model: nn.Module, options: Dict[str, Any],
                     example: Optional[Tensor] = None) -> Dict[str, Any]:
    """``options`` with what method ``name``'s first call on ``model`` would decide filled in
    (``example``: one (C, H, W) image to decide it on), by the method's own
    :meth:`~AttributionMethod.resolved_options`: a CAM method's layer (given, declared by the
    model as ``GRADCAM_LAYER``, or found and logged) by its full dotted name."""
    cls, _ = _method_entry(name)
    return cls.resolved_options(model, options, example)


def method_parameters(name: str, model: Optional[nn.Module] = None, **options: Any) -> Dict[str, Any]:
    """Every constructor parameter of method ``name`` with the defaults filled in (JSON-safe): the
    record the manifest keeps, so that changing any option is detected on resume."""
    cls, defaults = _method_entry(name)
    options = {**defaults, **options}
    signature = inspect.signature(cls.__init__)
    accepted = [p for p in signature.parameters if p not in ("self", "model")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"method {name!r} has no option(s) {', '.join(unknown)}; it accepts: {', '.join(accepted)}")
    if model is not None:  # e.g. a CAM layer by its full dotted name
        options = cls.resolved_options(model, options)
    transform = options.get("reshape_transform")
    if callable(transform) and hasattr(transform, "__qualname__"):  # a function: its name, not its address
        options["reshape_transform"] = f"{transform.__module__}.{transform.__qualname__}"
    bound = signature.bind(None, None, **options)
    bound.apply_defaults()
    return {k: json_record(v) for k, v in bound.arguments.items() if k not in ("self", "model")}


def make_method(name: str, model: nn.Module, **options: Any) -> AttributionMethod:
    """The attribution method called ``name`` on ``model``.

    Names: samp, samp++ (SAMP.plus: n_frag=50, momentum=0.5), ig, saliency, inputxgradient,
    smoothgrad, gradcam, gradcam++ and cam (default layer: ``model.GRADCAM_LAYER``, else found at the
    first call by ``find_cam_layer`` and logged), guidedig, lrp, deeplift, rise, lime, xrai, blurig.
    ``options`` go to the method's constructor (e.g. ``make_method("ig", model, n_steps=16)``).
    """
    return build_method(name, model, options)


def build_method(name: str, model: nn.Module, options: Dict[str, Any],
                 layers_of: Optional[nn.Module] = None) -> AttributionMethod:
    """:func:`make_method` on ``model``, with layer names resolved on ``layers_of`` (default:
    ``model``): the user's model when ``model`` wraps it (``attribute_dataset`` runs the method on
    the model under AMP, channels-last or torch.compile, whose submodules are the user's)."""
    layers_of = model if layers_of is None else layers_of
    cls, defaults = _method_entry(name)
    options = {**defaults, **options}
    method_parameters(name, layers_of, **options)  # validates option names
    if "layer" in getattr(cls, "learned_attributes", ()) and options.get("layer") is not None:
        options["layer"] = resolve_layer(layers_of, options["layer"])  # a name → the module itself
    return cls(model, **options)
