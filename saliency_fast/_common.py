"""Shared plumbing for every attribution method and metric: input validation, target
resolution, scoring and input gradients, and the model "attribution mode" context.

Every public entry point validates its arguments here so that bad input raises a clear
Python exception that names the argument, instead of failing deep inside a kernel.
"""
from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Mapping
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from ._validation import check_choice

# A class index for every image: one int (or numpy integer) for all, a list/tuple/array/tensor of one per image.
Target = Union[None, int, np.integer, Sequence[int], np.ndarray, Tensor]
# How to read the logits from a model's output: an index (tuples), a key or attribute name
# (dicts, Hugging Face ModelOutput, objects with ``logits``) or a callable output → tensor.
Selector = Union[None, int, str, Callable[[Any], Tensor]]
SCORES = ("logit", "probability", "log_probability")
# The two manipulation paths, of SAMP and of the Deletion / Insertion metric.
PATHS = ("deletion", "insertion")


def check_images(inputs: Tensor, name: str = "inputs") -> Tensor:
    """Validate a (B, C, H, W) floating batch of finite values."""
    if not isinstance(inputs, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(inputs).__name__}")
    if inputs.dim() == 3:
        raise ValueError(f"{name} must have shape (B, C, H, W), got shape {tuple(inputs.shape)}: a single "
                         "(C, H, W) image needs a batch dimension, pass inputs.unsqueeze(0)")
    if inputs.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got shape {tuple(inputs.shape)}")
    return check_batch(inputs, name)


def check_autograd_available(what: str) -> None:
    """Gradient-based attribution needs autograd, which torch.inference_mode() switches off."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(f"{what} needs gradients but runs inside torch.inference_mode(); call it outside that "
                           "block (torch.no_grad() around it is fine)")


def warn_if_not_finite(result: Tensor, what: str, stacklevel: int = 3) -> Tensor:
    """Warn (naming the images) when finite inputs gave NaN/Inf results: the model's output or its
    gradient is not finite there, and such maps or scores must not pass for real ones."""
    finite = torch.isfinite(result.reshape(result.shape[0], -1)).all(dim=1) if result.dim() else torch.isfinite(result)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite.reshape(-1)).reshape(-1).tolist()
        listed = ", ".join(map(str, bad[:10])) + (", …" if len(bad) > 10 else "")
        warnings.warn(f"{what} of image(s) {listed} contain NaN or Inf although the inputs are finite: the model's "
                      "output (or its gradient) is not finite there", RuntimeWarning, stacklevel=stacklevel)
    return result


def check_batch(inputs: Tensor, name: str = "inputs") -> Tensor:
    """Validate a (B, ...) floating batch of finite values of any rank >= 2 (the gradient family)."""
    if not isinstance(inputs, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, ...), got {type(inputs).__name__}")
    if inputs.dim() < 2:
        raise ValueError(f"{name} must have a batch dimension first, shape (B, ...), got shape {tuple(inputs.shape)}; "
                         "for a single example use inputs.unsqueeze(0)")
    if inputs.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (B = 0); pass at least one example")
    if not inputs.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor (float32 or float64), got {inputs.dtype}")
    if inputs.is_meta:
        raise ValueError(f"{name} is on the meta device (a shape without values); pass a tensor with data")
    check_finite(inputs, name)
    return inputs


def check_finite(tensor: Tensor, name: str) -> None:
    """Raise if ``tensor`` holds NaN or Inf (called once per call, not per step), without a (B, ...)
    bool temporary. NaN and ±Inf propagate into a sum in any order, so a finite sum proves every
    value finite (the cheapest pass); a non-finite sum may also be finite values overflowing, which
    one fused min/max reduction then tells apart (NaN propagates into both, ±Inf shows in one)."""
    if tensor.numel() == 0 or not (tensor.is_floating_point() or tensor.is_complex()):
        return  # integers are finite
    if tensor.is_complex():
        tensor = torch.view_as_real(tensor)
    if bool(torch.isfinite(tensor.sum())):
        return
    if not bool(torch.isfinite(torch.stack(torch.aminmax(tensor))).all()):
        raise ValueError(f"{name} contains NaN or Inf values; clean the input before attributing")


def check_same_device(reference: Tensor, **tensors: Optional[Tensor]) -> None:
    for name, tensor in tensors.items():
        if tensor is not None and tensor.device != reference.device:
            raise ValueError(
                f"{name} is on {tensor.device} but inputs are on {reference.device}; move them to one device"
            )


def check_score(score: str) -> str:
    return check_choice(score, "score", SCORES)


def first_state_tensor(model: nn.Module) -> Optional[Tensor]:
    """The model's first parameter, else its first buffer; None for a model with neither."""
    return next(itertools.chain(model.parameters(), model.buffers()), None)


def model_device(model: nn.Module) -> Optional[torch.device]:
    """The device of :func:`first_state_tensor`; None for a model without parameters or buffers."""
    first = first_state_tensor(model)
    return None if first is None else first.device


def check_model_device(model: nn.Module, inputs: Tensor) -> None:
    device = model_device(model)
    if device is not None and device != inputs.device:
        raise ValueError(
            f"the model is on {device} but inputs are on {inputs.device}; call model.to(inputs.device) "
            "or move the inputs"
        )
    dtypes = {param.dtype for param in model.parameters() if param.is_floating_point()}
    if len(dtypes) == 1 and inputs.is_floating_point() and inputs.dtype not in dtypes:
        (dtype,) = dtypes
        raise TypeError(f"inputs are {inputs.dtype} but the model's parameters are {dtype}; convert one of them "
                        f"(inputs.to({dtype}) or model.to({inputs.dtype}))")


def score_outputs(logits: Tensor, target: Tensor, score: str = "logit") -> Tensor:
    """The per-image score f_c of the target class: raw logit, softmax probability or log-probability."""
    if logits.dim() != 2:
        raise ValueError(f"the model must return logits of shape (B, classes), got shape {tuple(logits.shape)}")
    if score == "probability":
        logits = torch.softmax(logits, dim=1)
    elif score == "log_probability":
        logits = torch.log_softmax(logits, dim=1)
    return logits.gather(1, target.view(-1, 1)).squeeze(1)


def resolve_target(model: Callable[[Tensor], Tensor], inputs: Tensor, target: Target) -> Tensor:
    """Return the target class per image as an int64 (B,) tensor on the inputs' device.

    ``None`` explains the predicted class (argmax of the model's output), not the label. A given
    target is checked against the class count of a one-image forward pass; the methods avoid that
    pass by checking it on their own first model call instead (``TargetClassCheck``).
    """
    with torch.no_grad():
        logits = model(inputs) if target is None else one_image_logits(model, inputs)
    return target_from_logits(target, logits, inputs.shape[0], inputs.device)


def one_image_logits(model: Callable[[Tensor], Tensor], inputs: Tensor) -> Tensor:
    """The logits of the batch's first image: enough to learn the model's class count."""
    if isinstance(model, BoundModel):  # its per-example arguments follow the one image
        model = model.for_rows(torch.zeros(1, dtype=torch.long, device=inputs.device))
    return model(inputs[:1])


def target_from_logits(target: Target, logits: Tensor, batch: Optional[int] = None,
                       device: Optional[Union[torch.device, str]] = None) -> Tensor:
    """The (B,) int64 target given the model's (B or 1, classes) logits: None → argmax, an int
    or a tensor of class indices → validated against the class count."""
    if logits.dim() != 2:
        raise ValueError(f"the model must return logits of shape (B, classes), got shape {tuple(logits.shape)}")
    batch = logits.shape[0] if batch is None else batch
    device = logits.device if device is None else device
    if target is None:
        return logits.detach().argmax(dim=1)
    return check_target_classes(target_tensor(target, batch, device), logits.shape[1])


def target_tensor(target: Target, batch: int, device: Union[torch.device, str]) -> Tensor:
    """A given (not None) target as the (B,) int64 tensor on ``device``, checked in every way but
    against the model's class count (``check_target_classes``, which needs its logits)."""
    target = _target_as_int_or_tensor(target)
    if isinstance(target, int) and not isinstance(target, bool):
        return torch.full((batch,), target, dtype=torch.long, device=device)
    if not isinstance(target, Tensor):
        raise TypeError("target must be None, an int, or a list, tuple, NumPy array or tensor of class indices "
                        f"(one per image), got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}"
                        + ("; Captum's IntegratedGradients takes baselines second: pass baselines=... by keyword"
                           if target.is_floating_point() and target.dim() > 1 else ""))
    target = target.to(device=device, dtype=torch.long).reshape(-1)
    if target.numel() == 1:
        target = target.expand(batch).clone()
    if target.numel() != batch:
        raise ValueError(f"target has {target.numel()} entries but the batch has {batch} images")
    return target


def _out_of_range_message(classes: int) -> str:
    return f"target holds a class index outside [0, {classes - 1}] (the model has {classes} outputs)"


def check_target_classes(target: Tensor, classes: int) -> Tensor:
    """``target`` if every index lies in [0, classes); else a ValueError naming ``target``."""
    if bool(((target < 0) | (target >= classes)).any()):
        raise ValueError(_out_of_range_message(classes))
    return target


class TargetClassCheck:
    """A given target checked against the class count of the logits a method computes anyway.

    Learning the class count needs the model's output; instead of a forward pass of its own, the
    check runs on every logits the method's ``BoundModel`` returns (a comparison of two ints), so
    an out-of-range target raises at the method's first model call, before any index into the
    logits. A negative index raises at once. ``seen`` says whether a call has checked it (a call
    without any model call must check it with ``one_image_logits``).
    """

    def __init__(self, target: Tensor):
        low, high = torch.stack([target.min(), target.max()]).tolist()  # one device sync, as one check
        if low < 0:
            raise ValueError(f"target holds a class index outside [0, classes - 1]: {low} is negative")
        self.high = high
        self.seen = False

    def __call__(self, logits: Tensor) -> None:
        if logits.dim() == 2:
            if self.high >= logits.shape[1]:
                raise ValueError(_out_of_range_message(logits.shape[1]))
            self.seen = True


def _target_as_int_or_tensor(target: Target) -> Target:
    """Captum's target forms as an int or an int64 tensor: NumPy integers and arrays, lists and tuples."""
    if isinstance(target, np.integer):
        return int(target)
    if isinstance(target, np.ndarray):
        if not np.issubdtype(target.dtype, np.integer):
            raise TypeError(f"target must hold integer class indices, got a NumPy array of {target.dtype}")
        return torch.from_numpy(np.ascontiguousarray(target).astype(np.int64))
    if isinstance(target, (list, tuple)):
        if not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in target):
            raise TypeError("target given as a list or tuple must hold one int class index per image "
                            f"(per-output index tuples are not supported), got {target!r}"[:300])
        return torch.tensor([int(t) for t in target], dtype=torch.long)
    return target


def describe_output(raw: Any) -> str:
    if isinstance(raw, Mapping):
        return f"a {type(raw).__name__} with keys {list(raw.keys())}"
    if isinstance(raw, (tuple, list)):
        return f"a {type(raw).__name__} of {len(raw)} items"
    return f"a {type(raw).__name__}"


def select_output(raw: Any, output: Selector = None) -> Tensor:
    """The logits tensor within a model's output, picked by the ``output`` selector."""
    if output is None:
        if isinstance(raw, Tensor):
            return raw
        hint = " (e.g. output='logits')" if isinstance(raw, Mapping) or hasattr(raw, "logits") else \
            " (e.g. output=0)" if isinstance(raw, (tuple, list)) else ""
        raise TypeError(f"the model returned {describe_output(raw)}, not a logits tensor; pass output= (an index, "
                        f"a key or a callable) to say which part holds the (B, classes) logits{hint}")
    if isinstance(output, bool):
        raise TypeError("output must be an int index, a str key or a callable, got a bool")
    try:
        if isinstance(output, int):
            selected = raw[output]
        elif isinstance(output, str):
            selected = raw[output] if isinstance(raw, Mapping) else getattr(raw, output)
        elif callable(output):
            selected = output(raw)
        else:
            raise TypeError(f"output must be an int index, a str key or a callable, got {type(output).__name__}")
    except (KeyError, IndexError, AttributeError, TypeError) as error:
        if isinstance(error, TypeError) and not isinstance(output, (int, str)):
            raise
        raise ValueError(f"output={output!r} does not select anything from {describe_output(raw)} the model "
                         f"returned ({type(error).__name__}: {error})") from None
    if not isinstance(selected, Tensor):
        raise TypeError(f"output={output!r} selected {describe_output(selected)} from the model's output; it must "
                        "select the (B, classes) logits tensor")
    return selected


class BoundModel(nn.Module):
    """The model as the methods and metrics call it: ``model(x, *additional_forward_args)``, its
    logits picked by ``output``, checked to hold one row per input.

    ``batch`` is the size of the batch being explained. Additional forward arguments that are
    tensors with ``batch`` rows are per-example (as in Captum) and are aligned with every call:
    as they are for a call on ``batch`` inputs, repeated (Captum's expansion, ``torch.cat([a] * k)``)
    for a call on k·batch inputs ordered as k copies of the batch (IG's steps, SmoothGrad's
    samples), and index-selected for a call on ``for_rows(rows)``. Other arguments pass unchanged.
    ``module`` is the wrapped model (an nn.Module is registered as a submodule, so hooks, layers
    and attribution_mode reach it); ``named_modules`` and attribute access read through to it,
    so layer names are the user's ("layer4", not "module.layer4"). ``target_check`` (a
    ``TargetClassCheck``, shared with ``for_rows``) checks a given target against every logits.
    """

    def __init__(self, model: Callable, output: Selector = None, additional_forward_args: Any = None,
                 batch: Optional[int] = None, rows: Optional[Tensor] = None):
        super().__init__()
        if isinstance(model, nn.Module):
            self.module = model
        else:
            object.__setattr__(self, "module", model)
        if additional_forward_args is None:
            additional_forward_args = ()
        elif not isinstance(additional_forward_args, tuple):
            additional_forward_args = (additional_forward_args,)
        self.output, self.additional_forward_args, self.batch, self.rows = output, additional_forward_args, batch, rows
        self.target_check: Optional[TargetClassCheck] = None  # set by a method's call for a given target
        self._per_example = batch is not None and any(
            isinstance(arg, Tensor) and arg.dim() > 0 and arg.shape[0] == batch for arg in additional_forward_args)

    # Transparent to code that walks the model: its submodules keep the user's names
    # (``named_modules``, ``get_submodule("layer4")``) and its attributes read through.
    def named_modules(self, memo: Optional[set[nn.Module]] = None, prefix: str = "",
                      remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Module]]:
        inner = self.__dict__["_modules"].get("module")
        if inner is not None:
            return inner.named_modules(memo, prefix, remove_duplicate)
        return super().named_modules(memo, prefix, remove_duplicate)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__["_modules"].get("module", self.__dict__.get("module"))
            if inner is None or name.startswith("__"):
                raise
            return getattr(inner, name)

    @property
    def per_example_arguments(self) -> bool:
        """Whether some forward argument follows the images (so a call's rows must be known)."""
        return self._per_example

    def for_rows(self, rows: Tensor) -> "BoundModel":
        """The same model for calls whose inputs are the images ``rows`` of the batch (in that order)."""
        bound = BoundModel(self.module, self.output, self.additional_forward_args, self.batch, rows)
        bound.target_check = self.target_check
        return bound

    def _arguments(self, count: int) -> tuple:
        if not self._per_example:
            return self.additional_forward_args
        assert self.batch is not None  # _per_example needs a batch size
        rows = self.rows
        if rows is not None and count == rows.shape[0]:
            return tuple(self._align(arg, lambda a: a.index_select(0, rows.to(a.device)))
                         for arg in self.additional_forward_args)
        if count % self.batch == 0:
            copies = count // self.batch
            return tuple(self._align(arg, lambda a: a if copies == 1 else torch.cat([a] * copies))
                         for arg in self.additional_forward_args)
        raise ValueError(f"additional_forward_args hold per-example tensors of {self.batch} rows, which this method "
                         f"cannot align with a model call on {count} inputs; pass arguments that apply to any batch")

    def _align(self, arg: Any, align: Callable[[Tensor], Tensor]) -> Any:
        is_row = isinstance(arg, Tensor) and arg.dim() > 0 and arg.shape[0] == self.batch
        return align(arg) if is_row else arg

    def forward(self, inputs: Tensor) -> Tensor:
        logits = select_output(self.module(inputs, *self._arguments(inputs.shape[0])), self.output)
        if logits.dim() == 0 or logits.shape[0] != inputs.shape[0]:
            raise ValueError(f"the model returned outputs of shape {tuple(logits.shape)} for {inputs.shape[0]} inputs; "
                             "it must return one row of logits per input, shape (B, classes)")
        if self.target_check is not None:
            self.target_check(logits)
        return logits


def bind_model(model: Callable, output: Selector = None) -> Callable:
    """``model`` with its logits picked by ``output`` and checked row by row (metrics' entry)."""
    if not callable(model):
        raise TypeError(f"model must be a callable nn.Module, got {type(model).__name__}")
    return model if isinstance(model, BoundModel) else BoundModel(model, output)


def input_gradient(
    model: Callable[[Tensor], Tensor], inputs: Tensor, target: Tensor, score: str = "logit"
) -> tuple[Tensor, Tensor]:
    """One forward + backward: returns (d score / d inputs, score) for every image.

    Images are independent (the model is in eval mode), so the gradient of the summed
    score equals each image's own gradient.
    """
    with torch.enable_grad():
        x = inputs.detach().requires_grad_(True)
        scores = score_outputs(model(x), target, score)
        (grad,) = torch.autograd.grad(scores.sum(), x)
    return grad, scores.detach()


@contextlib.contextmanager
def attribution_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients while attributing; restore both afterwards.

    Only the input gradient is needed, so parameters are frozen: the backward pass then
    skips the weight gradients (about a third of its cost for conv nets).
    """
    # only what changes is recorded and restored: a model already in eval mode with frozen
    # parameters (the common case in a loop over batches) costs two walks and no writes
    training = [module for module in model.modules() if module.training]
    trainable = [param for param in model.parameters() if param.requires_grad]
    if training:
        model.eval()  # through eval(), so that modules overriding train() see it
    for param in trainable:
        param.requires_grad_(False)
    try:
        yield model
    finally:
        for module in training:
            module.training = True
        for param in trainable:
            param.requires_grad_(True)


def reduce_channels(attribution: Tensor, reduce: bool = True) -> Tensor:
    """(B, C, H, W) → (B, H, W) by summing over channels, the layout every method returns by default
    for images; attributions of other (non-image) inputs keep the inputs' shape."""
    return attribution.sum(dim=1) if reduce and attribution.dim() == 4 else attribution


def relative_completeness_error(attributions: Tensor, gap: Tensor) -> Tensor:
    """|Σ A − gap| / |gap| per image (B,), the sum over all of each image's attribution, ``gap`` the
    score difference f_c(x) − f_c(x') it should equal; 0 where both are 0 (inf where only the gap is)."""
    total = attributions.detach().flatten(1).sum(dim=1).to(gap.dtype)
    error = (total - gap).abs() / gap.abs()
    return torch.where((gap == 0) & (total == 0), torch.zeros_like(error), error)


def minmax_normalize(maps: Tensor, eps: float = 0.0) -> Tensor:
    """Per-image min–max to [0, 1]; a constant map becomes all zeros (never NaN)."""
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(dim=1, keepdim=True).values
    high = flat.max(dim=1, keepdim=True).values
    span = (high - low).clamp_min(torch.finfo(maps.dtype).tiny) + eps
    return ((flat - low) / span).reshape(maps.shape)
