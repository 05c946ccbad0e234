"""The base of every attribution method: a model wrapped Captum-style, ``attribute()`` → maps.

The call contract lives here, so every method gets it without code of its own:

    method.attribute(inputs, target=None, baselines=None, additional_forward_args=None, *,
                     output=None, return_convergence_delta=False, reduce_channels=True, **options)

- ``inputs``: a (B, C, H, W) batch (any (B, ...) batch for the gradient family); inputs that
  require grad or carry a graph are detached, and the maps never join the caller's graph.
- ``target``: None (the predicted class), an int / NumPy integer for every image, or one class
  per image as a list, tuple, NumPy array or tensor. A given target is checked against the
  model's class count on the method's first model call (no extra forward pass); an index out of
  range raises a ValueError naming ``target`` before any map is returned.
- ``baselines``: for path methods (``takes_baselines``), replaces the constructor's ``baseline``
  for this call: a tensor broadcastable to the inputs, a number, "zeros" or "blur".
- ``additional_forward_args``: extra positional arguments of the model, ``model(x, *args)``;
  per-example tensors (B rows) follow the images through every model call (Captum's rule).
- ``output``: which part of the model's output holds the logits (an index, a key/attribute
  name such as "logits", or a callable); overrides the constructor's ``output``.
- ``return_convergence_delta``: path methods also return Captum's delta,
  Σ attribution − (f_c(x) − f_c(x')) per image.
- ``reduce_channels``: methods with per-channel attributions (``channel_attributions``) return
  (B, H, W) maps summed over channels, or with False the attributions in the inputs' shape
  (Captum's layout); methods with one value per pixel refuse False.
- ``options``: per-call overrides of the options in ``call_options`` (e.g. IG's ``n_steps``,
  every streaming method's ``internal_batch_size``), and the keyword arguments of the method's
  ``_attribute`` (e.g. LIME's ``feature_mask``).

``attribute_with_completeness(...)`` (the same arguments but the delta) also returns each
image's completeness error |Σ A − (f_c(x) − f_c(x'))| / |f_c(x) − f_c(x')| where the method
claims completeness (``completeness_reference(inputs)`` names x'; SAMP checks each of its
paths), else None.
``internal_batch_size`` (Captum's name) is every method's images per model call: the methods that
stream their work in passes (``streams_passes``) read it; ``attribute_dataset`` lowers it after
running out of memory.

How a method plugs in: subclass ``AttributionMethod`` (``PathAttributionMethod`` if it
integrates from a baseline), call ``super().__init__(model)``, and implement only
``_attribute(self, inputs, target, **keywords)``. It receives validated, detached inputs and a
(B,) int64 target, and runs while ``self.model`` is a ``BoundModel``: calling ``self.model(x)``
applies the additional forward arguments and the output selector, checks that the model
returned one row per input and checks the target's class indices (the user's model itself is
``self.model.module``; a method whose model calls bypass ``self.model`` sets
``checks_target_on_first_call = False``). It returns the maps, or with ``channel_attributions``
the attributions in the inputs' shape (the base sums channels). The call runs on a shallow copy
of the method, with the model in attribution mode (eval, frozen parameters, both restored
afterwards). Class attributes declare the rest: ``any_input_shape`` (``_attribute`` handles
(B, ...) inputs of any rank), ``needs_gradients``, ``call_options``, ``streams_passes``,
``learned_attributes``; ``completeness_reference`` and ``resolved_options`` are the hooks for
the completeness check and for recording options (e.g. a CAM layer found) in a manifest.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import warnings
from typing import Any, Callable, Dict, Iterator, Optional, TypeVar, Union

import numpy as np
import torch
from torch import Tensor, nn

from .._common import (
    BoundModel,
    Selector,
    Target,
    TargetClassCheck,
    attribution_mode,
    check_autograd_available,
    check_batch,
    check_images,
    check_model_device,
    one_image_logits,
    relative_completeness_error,
    reduce_channels as sum_channels,
    resolve_target,
    score_outputs,
    target_tensor,
    warn_if_not_finite,
)
from .._validation import check_positive_int
from ..references import Reference, make_reference

Baselines = Union[None, Reference, int, float]
MethodT = TypeVar("MethodT", bound="AttributionMethod")


class UnsupportedArchitecture(ValueError):
    """The method cannot explain this model as built (CAM without global average pooling + linear,
    no layer a CAM method can use, LRP without a rule for a layer type): a ValueError that callers
    running every method (``saliency-fast evaluate``) may skip."""


def pass_size(internal_batch_size: Optional[int], batch_size: Optional[int], method: str) -> Optional[int]:
    """A constructor's pass size, given as ``internal_batch_size`` or as the deprecated ``batch_size``."""
    if batch_size is None:
        return internal_batch_size
    warnings.warn(f"{method}(batch_size=...) is deprecated; pass internal_batch_size=... (the same images per "
                  "model call, under Captum's name)", DeprecationWarning, stacklevel=3)
    if internal_batch_size is not None:
        raise TypeError(f"{method} got both internal_batch_size and its deprecated alias batch_size; pass "
                        "internal_batch_size only")
    return check_positive_int(batch_size, "batch_size")


class DeprecatedBatchSize:
    """``method.batch_size``: the deprecated name of ``method.internal_batch_size``."""

    def __get__(self, method: Optional["AttributionMethod"], owner: Optional[type] = None) -> Any:
        if method is None:
            return self
        warnings.warn("batch_size is deprecated; use internal_batch_size", DeprecationWarning, stacklevel=2)
        return method.internal_batch_size

    def __set__(self, method: "AttributionMethod", value: Optional[int]) -> None:
        warnings.warn("batch_size is deprecated; use internal_batch_size", DeprecationWarning, stacklevel=2)
        method.internal_batch_size = value


class AttributionMethod:
    """Wraps a classifier that maps (B, C, H, W) inputs to (B, classes) logits (or to an output
    holding them: see ``output``); ``attribute()`` returns the maps (see the module docstring)."""

    takes_baselines = False  # path methods: ``baselines=`` replaces ``self.baseline`` for a call
    has_convergence_delta = False  # path methods: ``return_convergence_delta=True`` (Captum's delta)
    any_input_shape = False  # the gradient family: (B, ...) inputs of any rank
    channel_attributions = False  # _attribute returns the inputs' shape, summed here unless reduce_channels=False
    call_options: tuple = ()  # constructor options a call may override by keyword (Captum's per-call options)
    output: Selector = None  # subclasses that do not pass ``output`` to __init__ select nothing
    learned_attributes: tuple = ()  # set by a call on its copy of the method and kept (e.g. a CAM layer found)
    streams_passes = False  # the work goes through the model in passes of ``internal_batch_size`` images
    checks_target_on_first_call = True  # False where _attribute's model calls bypass self.model
    needs_gradients = True  # False for perturbation-only methods, which then also run under inference_mode

    _internal_batch_size: Optional[int] = None

    def __init__(self, model: Union[nn.Module, Callable[..., Any]], output: Selector = None) -> None:
        if not callable(model):
            raise TypeError(f"model must be a callable nn.Module, got {type(model).__name__}")
        if output is not None and (isinstance(output, bool) or not isinstance(output, (int, str)) and not callable(output)):
            raise TypeError(f"output must be None, an int index, a str key or a callable, got {type(output).__name__}")
        # the user's model; during a call (see _calling) the call's copy holds it bound, a BoundModel
        self.model: Callable[..., Any] = model
        self.output = output

    @property
    def internal_batch_size(self) -> Optional[int]:
        """Images per model call (Captum's name) for the methods that stream their work in passes
        (``streams_passes``); None: ``DEFAULT_ELEMENTS_PER_PASS`` input elements a pass. Methods that
        evaluate the batch in one call keep it but do not need it."""
        return self._internal_batch_size

    @internal_batch_size.setter
    def internal_batch_size(self, value: Optional[int]) -> None:
        self._internal_batch_size = None if value is None else check_positive_int(value, "internal_batch_size")

    def attribute(
        self,
        inputs: Tensor,
        target: Target = None,
        baselines: Baselines = None,
        additional_forward_args: Any = None,
        *,
        output: Selector = None,
        return_convergence_delta: bool = False,
        reduce_channels: bool = True,
        **options: Any,
    ) -> Union[Tensor, tuple[Tensor, Tensor]]:
        """The maps ((B, H, W) for images, see the method), and with ``return_convergence_delta``
        (path methods) the pair (maps, delta). The arguments are in the module docstring."""
        if return_convergence_delta and not self.has_convergence_delta:
            raise TypeError(f"{type(self).__name__} has no path from a baseline, so no convergence delta; "
                            "return_convergence_delta is for IntegratedGradients and GuidedIG")
        self._check_reduce_channels(reduce_channels)
        with self._calling(inputs, target, baselines, additional_forward_args, output, options) as (
            call, inputs, target, keywords
        ):
            attributions = call._attribute(inputs, target, **keywords)
            maps = call._maps(attributions, reduce_channels)
            if not return_convergence_delta:
                return maps
            return maps, call._convergence_delta(inputs, target, attributions)

    def attribute_with_completeness(
        self,
        inputs: Tensor,
        target: Target = None,
        baselines: Baselines = None,
        additional_forward_args: Any = None,
        *,
        output: Selector = None,
        reduce_channels: bool = True,
        **options: Any,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """``attribute``'s maps and each image's (B,) completeness error
        |Σ A − (f_c(x) − f_c(x'))| / |f_c(x) − f_c(x')| (0 where both sides are 0), or None where
        the method does not claim that its attributions sum to a score difference."""
        self._check_reduce_channels(reduce_channels)
        with self._calling(inputs, target, baselines, additional_forward_args, output, options) as (
            call, inputs, target, keywords
        ):
            attributions, error = call._attribute_with_completeness(inputs, target, **keywords)
            return call._maps(attributions, reduce_channels), error

    def completeness_reference(self, inputs: Tensor) -> Optional[Tensor]:
        """The reference x' whose score gap f_c(x) − f_c(x') the attributions of ``inputs`` sum to
        (completeness), or None where the method makes no such claim (the default)."""
        return None

    @classmethod
    def resolved_options(cls, model: nn.Module, options: Dict[str, Any], example: Optional[Tensor] = None
                         ) -> Dict[str, Any]:
        """The constructor ``options`` with what a first call on ``model`` would decide filled in,
        as names a manifest can record (``example``: one (C, H, W) input to decide it on). Most
        methods decide nothing: the options come back as they are (a CAM method fills ``layer``)."""
        return dict(options)

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def _attribute_with_completeness(self, inputs: Tensor, target: Tensor, **keywords: Any
                                     ) -> tuple[Tensor, Optional[Tensor]]:
        """(attributions, completeness error or None) from ``_attribute`` and ``completeness_reference``."""
        attributions = self._attribute(inputs, target, **keywords)
        reference = self.completeness_reference(inputs)
        if reference is None:
            return attributions, None
        return attributions, relative_completeness_error(attributions, self._score_gap(inputs, reference, target))

    def _score_gap(self, inputs: Tensor, reference: Tensor, target: Tensor) -> Tensor:
        """f_c(x) − f_c(x') per image, from one model call on the inputs and the reference."""
        with torch.no_grad():
            ends = score_outputs(self.model(torch.cat([inputs, reference])), target.repeat(2))
        batch = inputs.shape[0]
        return ends[:batch] - ends[batch:]

    # -- the call contract -------------------------------------------------------------------
    def _check_reduce_channels(self, reduce_channels: bool) -> None:
        if not reduce_channels and not self.channel_attributions:
            raise TypeError(f"{type(self).__name__} gives one value per pixel, so reduce_channels=False does not "
                            "apply; it is for the methods with per-channel attributions (the gradient family, "
                            "IntegratedGradients, GuidedIG, BlurIG, LRP, DeepLift)")

    def _maps(self, attributions: Tensor, reduce_channels: bool) -> Tensor:
        """What a call returns from ``_attribute``'s result: detached, channels summed (where the
        method has per-channel attributions and the caller asks for it), with a warning naming the
        images whose maps are not finite (stacklevel 4: the warning points at the user's call)."""
        attributions = attributions.detach()
        maps = sum_channels(attributions, reduce_channels) if self.channel_attributions else attributions
        return warn_if_not_finite(maps, f"{type(self).__name__} maps", stacklevel=4)

    @contextlib.contextmanager
    def _calling(
        self: MethodT,
        inputs: Tensor,
        target: Target,
        baselines: Baselines = None,
        additional_forward_args: Any = None,
        output: Selector = None,
        options: Optional[Dict[str, Any]] = None,
    ) -> Iterator[tuple[MethodT, Tensor, Tensor, Dict[str, Any]]]:
        """Yield (the method for this call, its inputs, the (B,) target, ``_attribute``'s keywords)."""
        if self.needs_gradients:
            check_autograd_available(type(self).__name__)
        inputs = self._check_inputs(inputs)
        call = copy.copy(self)
        keywords = call._take_call_options(dict(options or {}))
        if baselines is not None:
            if not self.takes_baselines:
                raise TypeError(self._no_baselines_message())
            setattr(call, "baseline", baselines)  # a path method's (PathAttributionMethod.baseline)
        model = self.model
        selector = self.output if output is None else output
        bound = BoundModel(model, selector, additional_forward_args, inputs.shape[0])
        call.model = bound
        if isinstance(model, nn.Module):
            check_model_device(model, inputs)
        with attribution_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext():
            target = call._resolve_target(inputs, target)
            yield call, inputs, target, keywords
            check = bound.target_check
            if check is not None and not check.seen:  # no model call checked it: one image does
                with torch.no_grad():
                    check(one_image_logits(call.model, inputs))
        for name in self.learned_attributes:  # what the call found out about the model, kept for later calls
            setattr(self, name, getattr(call, name))

    def _resolve_target(self, inputs: Tensor, target: Target) -> Tensor:
        """The (B,) target. None: the predicted class (one forward pass). A given target: checked
        now but for its class range, which ``self.model`` checks on the method's model calls."""
        if target is None or not self.checks_target_on_first_call:
            return resolve_target(self.model, inputs, target)
        target = target_tensor(target, inputs.shape[0], inputs.device)
        assert isinstance(self.model, BoundModel)  # _calling binds the call's model before resolving its target
        self.model.target_check = TargetClassCheck(target)
        return target

    def _check_inputs(self, inputs: Tensor) -> Tensor:
        """Validated inputs, detached (and out of inference mode), so no call joins the caller's graph."""
        (check_batch if self.any_input_shape else check_images)(inputs)
        if inputs.dim() != 4 and isinstance(self.model, nn.Module) and any(
                isinstance(module, nn.Conv2d) for module in self.model.modules()):
            hint = ": a single (C, H, W) image needs a batch dimension, pass inputs.unsqueeze(0)" if inputs.dim() == 3 else ""
            raise ValueError(f"inputs must have shape (B, C, H, W) for this convolutional model, got shape "
                             f"{tuple(inputs.shape)}{hint}")
        inputs = inputs.detach()
        return inputs.clone() if inputs.is_inference() else inputs

    def _take_call_options(self, options: Dict[str, Any]) -> Dict[str, Any]:
        """Apply per-call overrides of ``call_options`` to this (copied) method; return the rest,
        checked against ``_attribute``'s keywords."""
        overrides = {name: options.pop(name) for name in list(options) if name in self.call_options}
        if overrides:
            self._set_call_options(**overrides)
        if not options:
            return options  # nothing to check (most calls): no signature inspection on the hot path
        parameters = inspect.signature(self._attribute).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        unknown = sorted(name for name in options if name not in parameters and not takes_any)
        if unknown:
            accepted = ([n for n in parameters if n not in ("inputs", "target")] + list(self.call_options)
                        + (["reduce_channels"] if self.channel_attributions else []))
            raise TypeError(f"{type(self).__name__}.attribute() got unexpected keyword argument(s) {', '.join(unknown)}; "
                            f"it takes target, baselines, additional_forward_args, output"
                            f"{', ' + ', '.join(accepted) if accepted else ''}")
        return options

    def _set_call_options(self, **options: Any) -> None:
        for name, value in options.items():
            setattr(self, name, value)

    def _no_baselines_message(self) -> str:
        return (f"{type(self).__name__} has no baseline, so it takes no baselines argument "
                "(IntegratedGradients and GuidedIG do)")

    def _convergence_delta(self, inputs: Tensor, target: Tensor, attributions: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class PathAttributionMethod(AttributionMethod):
    """A method that integrates along a path from a baseline (``self.baseline``, resolved with
    ``self.blur_kernel`` / ``self.blur_sigma``): Integrated Gradients and Guided IG."""

    takes_baselines = True
    has_convergence_delta = True
    channel_attributions = True

    # set by each subclass's __init__; a call's ``baselines=`` replaces ``baseline`` on its copy
    baseline: Any  # a Reference, a number or an array: checked when resolved, by baseline_for
    blur_kernel: Optional[int]
    blur_sigma: float

    def baseline_for(self, inputs: Tensor) -> Tensor:
        """The baseline x' (the inputs' shape) that ``attribute(inputs)`` starts its path from."""
        baseline = self.baseline
        if isinstance(baseline, (np.ndarray, np.generic)):
            baseline = torch.as_tensor(baseline, device=inputs.device)
        if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
            if not np.isfinite(baseline):
                raise ValueError(f"baselines must be finite, got {baseline!r}")
            return torch.full_like(inputs, float(baseline))
        if isinstance(baseline, Tensor) and baseline.dim() == 0:
            return make_reference(baseline.reshape(1), inputs, "baselines")
        if isinstance(baseline, str) and baseline == "blur" and inputs.dim() != 4:
            raise ValueError("the blur baseline needs (B, C, H, W) images; pass baselines='zeros', a number or a tensor")
        return make_reference(baseline, inputs, "baselines", self.blur_kernel, self.blur_sigma)

    def _convergence_delta(self, inputs: Tensor, target: Tensor, attributions: Tensor) -> Tensor:
        """Captum's delta: Σ attribution − (f_c(x) − f_c(x')) per image, f_c the target's output."""
        gap = self._score_gap(inputs, self.baseline_for(inputs), target)
        return attributions.detach().flatten(1).sum(dim=1).to(gap.dtype) - gap
