"""The base of every attribution method: a model wrapped Captum-style, ``attribute()`` → maps."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .._common import (Target, attribution_mode, check_autograd_available, check_images, check_model_device,
                       resolve_target, warn_if_not_finite)
from ..references import make_reference


class AttributionMethod:
    """Wraps a classifier that maps (B, C, H, W) inputs to (B, classes) logits.

    Subclasses implement ``_attribute(inputs, target)`` on validated inputs and a resolved
    (B,) int64 target; this class validates, resolves the target (default: the predicted
    class) and runs the model in attribution mode (eval, frozen parameters, both restored).
    """

    needs_gradients = True  # False for perturbation-only methods, which then also run under inference_mode

    def __init__(self, model: nn.Module | Callable[[Tensor], Tensor]):
        if not callable(model):
            raise TypeError(f"model must be a callable nn.Module, got {type(model).__name__}")
        self.model = model

    def attribute(self, inputs: Tensor, target: Target = None, **kwargs) -> Tensor:
        check_images(inputs)
        if self.needs_gradients:
            check_autograd_available(type(self).__name__)
        if inputs.is_inference() and not torch.is_inference_mode_enabled():  # made under inference_mode: autograd cannot track it, a copy it can
            inputs = inputs.clone()
        if isinstance(self.model, nn.Module):
            check_model_device(self.model, inputs)
            with attribution_mode(self.model):
                maps = self._attribute(inputs, resolve_target(self.model, inputs, target), **kwargs)
        else:
            maps = self._attribute(inputs, resolve_target(self.model, inputs, target), **kwargs)
        return warn_if_not_finite(maps, f"{type(self).__name__} maps")

    def _attribute(self, inputs: Tensor, target: Tensor, **kwargs) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class PathAttributionMethod(AttributionMethod):
    """A method that integrates along a path from a baseline (``self.baseline``, resolved with
    ``self.blur_kernel`` / ``self.blur_sigma``): Integrated Gradients and Guided IG."""

    def baseline_for(self, inputs: Tensor) -> Tensor:
        """The (B, C, H, W) baseline x' that ``attribute(inputs)`` starts its path from."""
        return make_reference(self.baseline, inputs, "baseline", self.blur_kernel, self.blur_sigma)

    def attribute(self, inputs: Tensor, target: Target = None, reduce_channels: bool = True) -> Tensor:
        """(B, H, W) maps, or (B, C, H, W) (Captum's layout) with ``reduce_channels=False``."""
        return super().attribute(inputs, target, reduce_channels=reduce_channels)
