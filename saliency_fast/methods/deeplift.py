"""DeepLIFT with the rescale rule (Shrikumar et al., ICML 2017), as Captum's ``DeepLift``.

Every nonlinearity module (ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus) passes back
grad · Δout / Δin instead of its derivative, where Δ is the difference between the input's and
the reference's activations; max-pooling passes grad · Δout back to the input's and the
reference's argmax positions, divided by Δin. Where |Δin| < eps the ordinary gradient is used.
The attribution is (x − x') ⊙ (the modified gradient). Linear layers (conv, linear, BatchNorm
in eval mode, average pooling) keep their gradient: their multipliers are exact.

The reference activations are computed in a forward pass without autograd (for one image only
when the baseline is shared by the whole batch, e.g. the zero default), so the backward pass
runs on the inputs only, not on the concatenated [inputs, baselines] batch as Captum's does.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .._common import input_gradient
from ..references import Reference
from ._base import PathAttributionMethod

# The modules Captum's DeepLift applies the rescale rule to (its Softmax rule averages over the
# whole batch, so Softmax modules keep their ordinary gradient here).
RESCALE_MODULES = (nn.ReLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Softplus)
MAXPOOL_MODULES: Dict[Type[nn.Module], Callable[..., Any]] = {
    nn.MaxPool1d: F.max_pool1d, nn.MaxPool2d: F.max_pool2d, nn.MaxPool3d: F.max_pool3d}


def _pool_parameters(module: nn.Module) -> Tuple[Any, ...]:
    return module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode


class _Multiplier(torch.autograd.Function):
    """Returns ``out``; the backward hands ``inp`` the incoming gradient times ``multiplier``."""

    @staticmethod
    def forward(ctx: Any, inp: Tensor, out: Tensor, multiplier: Tensor) -> Tensor:
        ctx.save_for_backward(multiplier)
        return out.clone()  # not a view: the model may modify it in place

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, None, None]:
        (multiplier,) = ctx.saved_tensors
        return grad * multiplier, None, None


def _derivative(module: nn.Module, inp: Tensor) -> Tensor:
    """The elementwise derivative f'(inp) of a ``RESCALE_MODULES`` activation (ReLU in closed
    form; the others by autograd through ``module.forward``, which runs no hooks)."""
    if isinstance(module, nn.ReLU):
        return (inp > 0).to(inp.dtype)  # ReLU's backward: 0 at 0
    with torch.enable_grad():
        x = inp.detach().clone().requires_grad_(True)
        y = module.forward(x)
        (derivative,) = torch.autograd.grad(y, x, torch.ones_like(y))
    return derivative


def _rescale(module: nn.Module, inp: Tensor, out: Tensor, inp_ref: Tensor, out_ref: Tensor, eps: float) -> Tensor:
    """``out`` with the rescale rule's gradient Δout/Δin w.r.t. ``inp``, or the module's own
    derivative where |Δin| < eps (Captum's rule). The value is ``out`` exactly."""
    with torch.no_grad():
        delta_in = inp - inp_ref
        small = delta_in.abs() < eps
        if bool(small.any()):
            multiplier = torch.where(small, _derivative(module, inp),
                                     (out - out_ref) / torch.where(small, 1.0, delta_in))
        else:
            multiplier = (out - out_ref) / delta_in
    return _Multiplier.apply(inp, out, multiplier)


class _MaxPoolRule(torch.autograd.Function):
    """Captum's DeepLift max-pooling rule: grad · Δout goes back to the argmax of the input's
    and the reference's windows (max(out, out') − out' and out − max(out, out')), over Δin; the
    ordinary gradient where |Δin| < eps. Overlapping windows sum (Captum's unpooling keeps one)."""

    @staticmethod
    def forward(ctx: Any, inp: Tensor, out: Tensor, delta_in: Tensor, indices: Tensor, delta_max: Tensor,
                delta_rest: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(delta_in, indices, delta_max, delta_rest)
        ctx.eps = eps
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, None, None, None, None, None, None]:
        delta_in, indices, delta_max, delta_rest = ctx.saved_tensors  # indices: input's, then reference's

        def unpool(values: Tensor, where: Tensor) -> Tensor:
            flat = torch.zeros(delta_in.shape[:2] + (delta_in[0, 0].numel(),), dtype=grad.dtype, device=grad.device)
            return flat.scatter_add_(2, where.flatten(2), values.flatten(2)).view_as(delta_in)

        contributions = torch.cat([(grad * delta_max).flatten(2), (grad * delta_rest).flatten(2)], dim=2)
        small = delta_in.abs() < ctx.eps
        rescaled = unpool(contributions, indices) / torch.where(small, 1.0, delta_in)
        if bool(small.any()):
            ordinary = unpool(grad, indices[..., : grad[0, 0].numel()])
            rescaled = torch.where(small, ordinary, rescaled)
        return rescaled, None, None, None, None, None, None


class DeepLift(PathAttributionMethod):
    """DeepLIFT, rescale rule (Shrikumar et al., "Learning Important Features Through
    Propagating Activation Differences", ICML 2017); equals Captum's ``DeepLift``.

    Args:
        baseline: the reference x': "zeros" (default, as Captum), "blur" (the SAMP blur) or a
            tensor broadcastable to the inputs.
        eps: |Δin| below which a unit keeps its ordinary gradient (Captum's default 1e-10).
        blur_kernel, blur_sigma: the blur baseline's kernel size and σ.

    The (B, C, H, W) attributions (``reduce_channels=False``) sum to f_c(x) − f_c(x') (the
    summation-to-delta property). Like Captum, only nonlinearities that are modules get the
    rule (a ``torch.relu`` call inside ``forward`` keeps its gradient). Unlike Captum, a module
    used more than once in a forward pass is supported, and overlapping max-pool windows sum
    their contributions (Captum's unpooling keeps one).
    """

    model: nn.Module  # checked by __init__ (its layers get the rule); a BoundModel during a call

    def __init__(
        self,
        model: nn.Module,
        baseline: Reference = "zeros",
        eps: float = 1e-10,
        blur_kernel: Optional[int] = None,
        blur_sigma: float = 5.0,
    ) -> None:
        super().__init__(model)
        if not isinstance(model, nn.Module):
            raise TypeError(f"DeepLift needs an nn.Module (its layers get the rescale rule), got {type(model).__name__}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        self.eps = float(eps)
        self.baseline = baseline
        self.blur_kernel = blur_kernel
        self.blur_sigma = blur_sigma

    def _forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _rule_modules(self) -> List[nn.Module]:
        return [m for m in self.model.modules() if isinstance(m, RESCALE_MODULES) or type(m) in MAXPOOL_MODULES]

    def _reference_activations(self, baseline: Tensor) -> Dict[nn.Module, List[List[Tensor]]]:
        """Each rule module's (input, output) per call, on the baseline, without autograd."""
        recorded: Dict[nn.Module, List[List[Tensor]]] = {}

        # kept before the module runs: in-place activations overwrite it
        def before(module: nn.Module, args: Tuple[Any, ...]) -> Optional[Tuple[Tensor]]:
            recorded.setdefault(module, []).append([args[0].detach().clone()])
            return (args[0].clone(),) if getattr(module, "inplace", False) else None  # spare the caller's tensor

        def record(module: nn.Module, args: Tuple[Any, ...], output: Tensor) -> None:
            recorded[module][-1].append(output.detach())
            if type(module) in MAXPOOL_MODULES:  # the reference's argmax, computed once
                inp_ref = recorded[module][-1][0]
                _, indices = MAXPOOL_MODULES[type(module)](inp_ref, *_pool_parameters(module), return_indices=True)
                recorded[module][-1].append(indices)

        handles = [h for m in self._rule_modules() for h in (m.register_forward_pre_hook(before),
                                                              m.register_forward_hook(record))]
        try:
            with torch.no_grad():
                self._forward(baseline)
        finally:
            for handle in handles:
                handle.remove()
        return recorded

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        baseline = self.baseline_for(inputs)
        # One reference image serves the batch, unless a forward argument differs per image.
        shared = not getattr(self.model, "per_example_arguments", False) and bool((baseline == baseline[:1]).all())
        reference = self._reference_activations(baseline[:1] if shared else baseline)
        calls = {module: iter(records) for module, records in reference.items()}
        saved_inputs: Dict[nn.Module, Tensor] = {}

        def before(module: nn.Module, args: Tuple[Any, ...]) -> Optional[Tuple[Tensor]]:
            saved_inputs[module] = args[0]
            return (args[0].clone(),) if getattr(module, "inplace", False) else None

        def apply_rule(module: nn.Module, args: Tuple[Any, ...], output: Tensor) -> Tensor:
            try:
                inp_ref, out_ref, *indices_ref = next(calls[module])
            except (KeyError, StopIteration):
                raise RuntimeError(
                    f"DeepLift: module {module} ran more often on the inputs than on the baseline; the "
                    "model's forward must run the same modules for every input"
                ) from None
            inp = saved_inputs.pop(module)
            if isinstance(module, RESCALE_MODULES):
                return _rescale(module, inp, output, inp_ref, out_ref, self.eps)
            _, indices = MAXPOOL_MODULES[type(module)](inp.detach(), *_pool_parameters(module), return_indices=True)
            both = torch.cat([indices.flatten(2), indices_ref[0].expand_as(indices).flatten(2)], dim=2)
            out_max = torch.maximum(output.detach(), out_ref)
            return _MaxPoolRule.apply(inp, output, inp.detach() - inp_ref, both, out_max - out_ref,
                                      output.detach() - out_max, self.eps)

        handles = [h for m in self._rule_modules() for h in (m.register_forward_pre_hook(before),
                                                              m.register_forward_hook(apply_rule))]
        try:  # the hooked backward of the target score gives the rule's input gradient
            grad, _ = input_gradient(self._forward, inputs, target)
        finally:
            for handle in handles:
                handle.remove()
        return (inputs - baseline) * grad
