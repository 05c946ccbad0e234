"""Adapters to the ecosystem: Quantus in, Captum out.

- ``quantus_explain`` has Quantus's ``explain_func`` signature (NumPy in, NumPy out), so every
  Quantus metric can evaluate any saliency_fast method:
  ``metric(model=model, x_batch=x, y_batch=y, explain_func=sf.interop.quantus_explain,
  explain_func_kwargs={"method": "samp++"})``.
- ``from_captum`` turns any Captum attribution object into a saliency_fast method, so it runs
  through ``sf.attribute_dataset``, the metrics and the ``evaluate`` helpers like ours.
"""
from __future__ import annotations

import inspect
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import Selector, Target, model_device
from .methods import AttributionMethod, Baselines

__all__ = ["quantus_explain", "from_captum", "CaptumMethod"]


def _as_batch(inputs: Union[np.ndarray, Tensor], model: nn.Module) -> Tensor:
    """NumPy or tensor (B, ...) inputs as a tensor on the model's device, in its parameters' dtype."""
    tensor = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, Tensor) else inputs)
    if not tensor.is_floating_point():
        raise TypeError(f"inputs must hold floating values, got {tensor.dtype}")
    parameter = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else tensor.dtype
    device = model_device(model) if isinstance(model, nn.Module) else None
    return tensor.to(device=device or tensor.device, dtype=dtype)


def quantus_explain(
    model: nn.Module,
    inputs: np.ndarray,
    targets: Optional[np.ndarray] = None,
    method: Union[str, AttributionMethod] = "saliency",
    reduce_channels: bool = True,
    **options: Any,
) -> np.ndarray:
    """Quantus's ``explain_func``: attributions of ``inputs`` (NumPy, (B, C, H, W)) for ``targets``.

    ``method`` is a name of ``sf.make_method`` (its constructor ``options`` passed on, e.g.
    ``n_steps=32``; ``output=`` selects the logits of a model returning a tuple or dict) or a
    method object. Quantus passes ``model``, ``inputs`` and ``targets``; the
    rest comes from the metric's ``explain_func_kwargs``. Returns float32 NumPy maps
    (B, 1, H, W) (``reduce_channels=False``: (B, C, H, W)); Quantus checks the shape.
    """
    from .methods.registry import make_method

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module (Quantus passes the raw model), got {type(model).__name__}")
    options = {key: value for key, value in options.items() if key not in ("device", "channel_first")}
    output = options.pop("output", None)  # the logits selector goes to the call, for every method
    if isinstance(method, str):
        attribution = make_method(method, model, **options)
    elif isinstance(method, AttributionMethod):
        if options:
            raise TypeError(f"options {sorted(options)} are for a method name; a method object runs as built")
        attribution = method
    else:
        raise TypeError(f"method must be a method name or an AttributionMethod, got {type(method).__name__}")
    batch = _as_batch(inputs, model)
    if targets is not None:
        targets = np.asarray(targets).reshape(-1)
    keywords = {} if batch.dim() != 4 else {"reduce_channels": reduce_channels}
    if keywords and not attribution.channel_attributions:
        keywords = {}
    maps = attribution.attribute(batch, targets, output=output, **keywords)
    assert isinstance(maps, Tensor)  # no return_convergence_delta: the maps alone
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    return maps.detach().float().cpu().numpy()


class CaptumMethod(AttributionMethod):
    """A Captum attribution object behind saliency_fast's call contract (see ``from_captum``).

    The call's target, baselines and additional forward arguments go to Captum's ``attribute``
    (with the constructor's ``options`` as its defaults); its (B, C, H, W) attributions are
    summed over channels, and layer attributions of another size are upsampled bilinearly to
    the inputs' H×W (Captum's LayerAttribution.interpolate), so the maps fit the metrics.
    """

    checks_target_on_first_call = False  # Captum calls the model itself: check the target before

    def __init__(self, attribution: Any, reduce_channels: bool = True, **options: Any):
        if not hasattr(attribution, "attribute") or not hasattr(attribution, "forward_func"):
            raise TypeError(f"expected a Captum attribution object (with attribute and forward_func), got "
                            f"{type(attribution).__name__}")
        super().__init__(attribution.forward_func)
        self.attribution = attribution
        self.reduce_channels = bool(reduce_channels)
        self.options = options
        parameters = inspect.signature(attribution.attribute).parameters
        self.takes_baselines = "baselines" in parameters
        self._takes_extra_args = "additional_forward_args" in parameters

    def config(self) -> dict:
        return {"captum": type(self.attribution).__qualname__, "reduce_channels": self.reduce_channels,
                "options": self.options}

    def _convergence_delta(self, inputs: Tensor, target: Tensor, maps: Tensor) -> Tensor:
        raise TypeError("return_convergence_delta is not forwarded to Captum; call the Captum object itself")

    def attribute(self, inputs: Tensor, target: Target = None, baselines: Baselines = None,
                  additional_forward_args: Any = None, *, output: Selector = None,
                  return_convergence_delta: bool = False, **options: Any) -> Union[Tensor, tuple[Tensor, Tensor]]:
        if return_convergence_delta:
            raise TypeError("return_convergence_delta is not forwarded to Captum; call the Captum object itself")
        if output is not None:
            raise TypeError("output= cannot reach a Captum object's forward_func; wrap the model so it returns logits")
        self._call_arguments = additional_forward_args
        return super().attribute(inputs, target, baselines, additional_forward_args, **options)

    def _attribute(self, inputs: Tensor, target: Tensor, **options: Any) -> Tensor:
        keywords = {**self.options, **options, "target": target}
        baseline = getattr(self, "baseline", None)  # set per call from ``baselines=`` by the base class
        if baseline is not None:
            keywords["baselines"] = baseline
        if getattr(self, "_call_arguments", None) is not None:
            if not self._takes_extra_args:
                raise TypeError(f"{type(self.attribution).__name__}.attribute takes no additional_forward_args")
            keywords["additional_forward_args"] = self._call_arguments
        with torch.enable_grad():
            result = self.attribution.attribute(inputs, **keywords)
        if isinstance(result, tuple):
            raise TypeError("the Captum object returned a tuple (tuple inputs or a delta); give it one input tensor")
        result = result.detach()
        if result.dim() == 4 and self.reduce_channels:
            result = result.sum(dim=1)
        if result.dim() == 3 and inputs.dim() == 4 and tuple(result.shape[-2:]) != tuple(inputs.shape[-2:]):
            result = F.interpolate(result.unsqueeze(1), size=inputs.shape[-2:], mode="bilinear",
                                   align_corners=False).squeeze(1)
        return result


def from_captum(attribution: Any, reduce_channels: bool = True, **options: Any) -> CaptumMethod:
    """Any Captum attribution object (``captum.attr.IntegratedGradients(model)``, ``LayerGradCam``,
    ``NoiseTunnel(...)``, …) as a saliency_fast method: ``.attribute(inputs, target)`` → (B, H, W)
    maps, usable with ``sf.attribute_dataset(model, data, from_captum(...), out)`` and the metrics.
    ``options`` are Captum ``attribute`` keywords used on every call (e.g. ``n_steps=32``,
    ``nt_type="smoothgrad"``)."""
    return CaptumMethod(attribution, reduce_channels=reduce_channels, **options)
