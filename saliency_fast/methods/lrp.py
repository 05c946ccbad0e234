"""Layer-wise Relevance Propagation, epsilon rule (Bach et al., PLOS ONE 2015), as Captum's ``LRP``.

The target logit f_c(x) is the relevance at the output. Each layer with a rule (convolutions,
linear layers, max and average pooling, BatchNorm) passes relevance back with the epsilon rule

    R_in = a ⊙ Jᵀ (R_out / (z + ε · sign(z)))        (sign(0) taken as +1)

where a is the layer's input, z = layer(a) its output and J its Jacobian; activations (ReLU,
Tanh, Dropout) pass relevance through unchanged; reshaping modules (Flatten, Identity) pass it
through as their gradient. The rule is implemented as a modified gradient of one forward pass:
the layer's output divides the incoming gradient by z + ε·sign(z) and its input multiplies the
outgoing one by a, so one backward pass propagates the relevance of the whole batch.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .._common import input_gradient
from ._base import AttributionMethod, UnsupportedArchitecture

EPSILON_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                  nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                  nn.AdaptiveAvgPool3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
PASS_THROUGH_ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.Dropout)
RESHAPING = (nn.Flatten, nn.Unflatten, nn.Identity)


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor) -> Tensor:
        ctx.save_for_backward(scale)
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad * scale, None


class _PassThrough(torch.autograd.Function):
    """Returns ``out``; the backward hands the incoming gradient to ``inp`` unchanged."""

    @staticmethod
    def forward(ctx: Any, inp: Tensor, out: Tensor) -> Tensor:
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, None]:
        return grad, None


class LRP(AttributionMethod):
    """LRP-ε (Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by
    Layer-Wise Relevance Propagation", PLOS ONE 2015); equals Captum's ``LRP`` with its default
    rules (``EpsilonRule(1e-9)`` on every layer with weights or pooling).

    Args:
        epsilon: the stabiliser ε of every layer's rule (Captum's default 1e-9; larger values
            absorb weak or contradictory relevance).

    The (B, C, H, W) relevance (``reduce_channels=False``) sums to f_c(x) up to what ε and the
    biases absorb. Every leaf module must be one of ``EPSILON_LAYERS``,
    ``PASS_THROUGH_ACTIVATIONS`` or ``RESHAPING``; another module type (e.g. GELU, LayerNorm)
    raises, since no rule is defined for it. Operations inside ``forward`` that are not modules
    (``torch.flatten``, a residual ``+``) pass relevance as their gradient.
    """

    channel_attributions = True
    model: nn.Module  # checked by __init__ (its layers get the rules); a BoundModel during a call

    def __init__(self, model: nn.Module, epsilon: float = 1e-9) -> None:
        super().__init__(model)
        if not isinstance(model, nn.Module):
            raise TypeError(f"LRP needs an nn.Module (its layers get the propagation rules), got {type(model).__name__}")
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon >= 0:
            raise ValueError(f"epsilon must be a number >= 0, got {epsilon!r}")
        self.epsilon = float(epsilon)
        self._rule_layers()  # fail at construction, not in the middle of a call

    def _forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _rule_layers(self) -> List[nn.Module]:
        leaves = [m for m in self.model.modules() if next(m.children(), None) is None]
        unknown = sorted({type(m).__name__ for m in leaves
                          if not isinstance(m, EPSILON_LAYERS + PASS_THROUGH_ACTIVATIONS + RESHAPING)})
        if unknown:
            raise UnsupportedArchitecture(
                f"LRP has no rule for module type(s) {', '.join(unknown)}; supported: "
                f"{', '.join(t.__name__ for t in EPSILON_LAYERS + PASS_THROUGH_ACTIVATIONS + RESHAPING)}"
            )
        return [m for m in leaves if not isinstance(m, RESHAPING)]

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        """The (B, C, H, W) relevance (summed to (B, H, W) maps unless ``reduce_channels=False``)."""
        saved_inputs: Dict[nn.Module, List[Tensor]] = {}

        def before(module: nn.Module, args: Tuple[Any, ...]) -> Optional[Tuple[Tensor]]:
            inp = args[0]
            saved_inputs.setdefault(module, []).append(inp)
            if isinstance(module, EPSILON_LAYERS):  # the input side: gradient × a
                return (_ScaleGradient.apply(inp, inp.detach()),)
            return (inp.clone(),) if getattr(module, "inplace", False) else None

        def after(module: nn.Module, args: Tuple[Any, ...], output: Tensor) -> Tensor:
            inp = saved_inputs[module].pop()
            if isinstance(module, PASS_THROUGH_ACTIVATIONS):
                return _PassThrough.apply(inp, output)
            z = output.detach()
            sign = torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
            return _ScaleGradient.apply(output, 1.0 / (z + self.epsilon * sign))  # the output side: / (z + ε sign z)

        handles = [h for m in self._rule_layers() for h in (m.register_forward_pre_hook(before),
                                                            m.register_forward_hook(after))]
        try:  # the hooked backward of the target score gives the rule's input gradient
            relevance, scores = input_gradient(self._forward, inputs, target)
        finally:
            for handle in handles:
                handle.remove()
        # The backward pass propagated relevance 1 from the target logit; scale it to f_c(x).
        return relevance * scores.view(-1, 1, 1, 1)
