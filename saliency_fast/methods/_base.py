"""The base of every attribution method: a model wrapped Captum-style, ``attribute()`` → maps.

The call contract lives here, so every method gets it without code of its own:

    method.attribute(inputs, target=None, baselines=None, additional_forward_args=None, *,
                     output=None, return_convergence_delta=False, **options)

- ``inputs``: a (B, C, H, W) batch (any (B, ...) batch for the gradient family); inputs that
  require grad or carry a graph are detached, and the maps never join the caller's graph.
- ``target``: None (the predicted class), an int / NumPy integer for every image, or one class
  per image as a list, tuple, NumPy array or tensor.
- ``baselines``: for path methods (``takes_baselines``), replaces the constructor's ``baseline``
  for this call: a tensor broadcastable to the inputs, a number, "zeros" or "blur".
- ``additional_forward_args``: extra positional arguments of the model, ``model(x, *args)``;
  per-example tensors (B rows) follow the images through every model call (Captum's rule).
- ``output``: which part of the model's output holds the logits (an index, a key/attribute
  name such as "logits", or a callable); overrides the constructor's ``output``.
- ``return_convergence_delta``: path methods also return Captum's delta,
  Σ attribution − (f_c(x) − f_c(x')) per image.
- ``options``: per-call overrides of the options in ``call_options`` (e.g. IG's ``n_steps``),
  and the keyword arguments of the method's ``_attribute`` (e.g. ``reduce_channels``).

How a method plugs in: subclass ``AttributionMethod`` (``PathAttributionMethod`` if it
integrates from a baseline), call ``super().__init__(model)``, and implement
``_attribute(self, inputs, target, **keywords)``. It receives validated, detached inputs and a
(B,) int64 target, and runs while ``self.model`` is a ``BoundModel``: calling ``self.model(x)``
applies the additional forward arguments and the output selector and checks that the model
returned one row per input (the user's model itself is ``self.model.module``). The call runs
on a shallow copy of the method, with the model in attribution mode (eval, frozen parameters,
both restored afterwards). Set ``any_input_shape = True`` if ``_attribute`` handles (B, ...)
inputs of any rank.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from .._common import (
    BoundModel,
    Selector,
    Target,
    attribution_mode,
    check_autograd_available,
    check_batch,
    check_images,
    check_model_device,
    resolve_target,
    score_outputs,
    warn_if_not_finite,
)
from ..references import Reference, make_reference

Baselines = Union[None, Reference, int, float]


class UnsupportedArchitecture(ValueError):
    """The method cannot explain this model as built (CAM without global average pooling + linear,
    no layer a CAM method can use, LRP without a rule for a layer type): a ValueError that callers
    running every method (``saliency-fast evaluate``) may skip."""


class AttributionMethod:
    """Wraps a classifier that maps (B, C, H, W) inputs to (B, classes) logits (or to an output
    holding them: see ``output``); ``attribute()`` returns the maps (see the module docstring)."""

    takes_baselines = False  # path methods: ``baselines=`` replaces ``self.baseline`` for a call
    any_input_shape = False  # the gradient family: (B, ...) inputs of any rank
    call_options: tuple = ()  # constructor options a call may override by keyword (Captum's per-call options)
    output: Selector = None  # subclasses that do not pass ``output`` to __init__ select nothing
    learned_attributes: tuple = ()  # set by a call on its copy of the method and kept (e.g. a CAM layer found)

    needs_gradients = True  # False for perturbation-only methods, which then also run under inference_mode

    def __init__(self, model: Union[nn.Module, Callable[..., Any]], output: Selector = None):
        if not callable(model):
            raise TypeError(f"model must be a callable nn.Module, got {type(model).__name__}")
        if output is not None and (isinstance(output, bool) or not isinstance(output, (int, str)) and not callable(output)):
            raise TypeError(f"output must be None, an int index, a str key or a callable, got {type(output).__name__}")
        self.model = model
        self.output = output

    def attribute(
        self,
        inputs: Tensor,
        target: Target = None,
        baselines: Baselines = None,
        additional_forward_args: Any = None,
        *,
        output: Selector = None,
        return_convergence_delta: bool = False,
        **options,
    ) -> Union[Tensor, tuple[Tensor, Tensor]]:
        """The maps ((B, H, W) for images, see the method), and with ``return_convergence_delta``
        (path methods) the pair (maps, delta)."""
        if return_convergence_delta and not self.takes_baselines:
            raise TypeError(f"{type(self).__name__} has no path from a baseline, so no convergence delta; "
                            "return_convergence_delta is for IntegratedGradients and GuidedIG")
        with self._calling(inputs, target, baselines, additional_forward_args, output, options) as (
            call, inputs, target, keywords
        ):
            maps = warn_if_not_finite(call._attribute(inputs, target, **keywords).detach(),
                                      f"{type(self).__name__} maps")
            if not return_convergence_delta:
                return maps
            return maps, call._convergence_delta(inputs, target, maps)

    def _attribute(self, inputs: Tensor, target: Tensor, **kwargs) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    # -- the call contract -------------------------------------------------------------------
    @contextlib.contextmanager
    def _calling(
        self,
        inputs: Tensor,
        target: Target,
        baselines: Baselines = None,
        additional_forward_args: Any = None,
        output: Selector = None,
        options: Optional[dict] = None,
    ) -> Iterator[tuple["AttributionMethod", Tensor, Tensor, dict]]:
        """Yield (the method for this call, its inputs, the (B,) target, ``_attribute``'s keywords)."""
        if self.needs_gradients:
            check_autograd_available(type(self).__name__)
        inputs = self._check_inputs(inputs)
        call = copy.copy(self)
        keywords = call._take_call_options(dict(options or {}))
        if baselines is not None:
            if not self.takes_baselines:
                raise TypeError(self._no_baselines_message())
            call.baseline = baselines
        model = self.model
        selector = self.output if output is None else output
        call.model = BoundModel(model, selector, additional_forward_args, inputs.shape[0])
        if isinstance(model, nn.Module):
            check_model_device(model, inputs)
        with attribution_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext():
            yield call, inputs, resolve_target(call.model, inputs, target), keywords
        for name in self.learned_attributes:  # what the call found out about the model, kept for later calls
            setattr(self, name, getattr(call, name))

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

    def _take_call_options(self, options: dict) -> dict:
        """Apply per-call overrides of ``call_options`` to this (copied) method; return the rest,
        checked against ``_attribute``'s keywords."""
        overrides = {name: options.pop(name) for name in list(options) if name in self.call_options}
        if overrides:
            self._set_call_options(**overrides)
        parameters = inspect.signature(self._attribute).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        unknown = sorted(name for name in options if name not in parameters and not takes_any)
        if unknown:
            accepted = [n for n in parameters if n not in ("inputs", "target")] + list(self.call_options)
            raise TypeError(f"{type(self).__name__}.attribute() got unexpected keyword argument(s) {', '.join(unknown)}; "
                            f"it takes target, baselines, additional_forward_args, output"
                            f"{', ' + ', '.join(accepted) if accepted else ''}")
        return options

    def _set_call_options(self, **options) -> None:
        for name, value in options.items():
            setattr(self, name, value)

    def _no_baselines_message(self) -> str:
        return (f"{type(self).__name__} has no baseline, so it takes no baselines argument "
                "(IntegratedGradients and GuidedIG do)")

    def _convergence_delta(self, inputs: Tensor, target: Tensor, maps: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class PathAttributionMethod(AttributionMethod):
    """A method that integrates along a path from a baseline (``self.baseline``, resolved with
    ``self.blur_kernel`` / ``self.blur_sigma``): Integrated Gradients and Guided IG."""

    takes_baselines = True

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

    def _convergence_delta(self, inputs: Tensor, target: Tensor, maps: Tensor) -> Tensor:
        """Captum's delta: Σ attribution − (f_c(x) − f_c(x')) per image, f_c the target's output."""
        baseline = self.baseline_for(inputs)
        with torch.no_grad():
            ends = score_outputs(self.model(torch.cat([inputs, baseline])), target.repeat(2))
        batch = inputs.shape[0]
        return maps.flatten(1).sum(dim=1).to(ends.dtype) - (ends[:batch] - ends[batch:])
