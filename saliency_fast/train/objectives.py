"""The training-objective interface of ``sf.train.fit`` (:class:`TrainingMethod`) and the
objectives without an attack (plain training, Saliency Guided Training).

An objective turns one batch into a loss. The trainer owns everything else (devices, DDP,
optimiser, AMP, checkpoints, logs), so every objective shares one loop. (``saliency_fast.methods``
holds the attribution methods; this package's "methods" are training objectives.)
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from .._validation import check_choice, check_nonnegative


class MethodOutput(NamedTuple):
    """What a method returns for one batch.

    ``loss``: the scalar to minimise (a mean over the batch, so DDP's gradient average over
    equal shards equals the one-process gradient). ``logits``: the (B, classes) outputs the
    training accuracy is measured on (None: no accuracy). ``terms``: named scalars to log
    (tensors or numbers, batch means); the trainer averages them over the epoch.
    """

    loss: Tensor
    logits: Optional[Tensor] = None
    terms: Dict[str, Any] = {}


class TrainingMethod:
    """Base class of the objectives ``sf.train.fit`` trains with.

    Subclasses implement :meth:`loss`. Contract:

    - ``batch`` is the loader's tuple with every tensor on the device (and, under DDP, this
      process's slice of the global batch): ``(x, y)`` or ``(x, y, positive_mask,
      negative_mask, has_mask)`` for explanation supervision.
    - ``model`` is what the trainer trains: under DDP the ``DistributedDataParallel`` wrapper.
      Call it exactly once per batch for the training loss (concatenate inputs if several are
      needed); run auxiliary passes (saliency, attacks) on ``unwrap(model)`` so DDP's gradient
      hooks only see the training pass.
    - The trainer puts the model in train mode before each batch; methods that need eval mode
      for auxiliary passes use :func:`evaluating`, which restores it.
    - Extra learnable tensors go in :meth:`parameters` (the default optimiser trains them; under
      DDP the trainer averages their gradients across processes, as DDP does for the model's)
      and in :meth:`state_dict` / :meth:`load_state_dict` (checkpoints carry them).
    """

    name = "method"

    def loss(self, model: nn.Module, batch: Sequence[Any], epoch: int) -> MethodOutput:
        raise NotImplementedError

    def epoch_start(self, epoch: int, epochs: int) -> None:
        """Called before every epoch (0-based) — the place for schedules such as warm-up and ramps."""

    def parameters(self) -> List[nn.Parameter]:
        return []

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state to load, got keys {sorted(state)}")

    def to(self, device: torch.device) -> "TrainingMethod":
        return self

    def config(self) -> Dict[str, Any]:
        """The hyper-parameters, for logs and checkpoints."""
        return {key: value for key, value in vars(self).items() if not key.startswith("_")}

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.config().items())
        return f"{type(self).__name__}({arguments})"


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (frozen BatchNorm statistics, no dropout) for auxiliary passes; restored afterwards."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes.items():
            module.training = mode


def input_saliency(model: nn.Module, x: Tensor, y: Tensor, reduction: str = "mean") -> tuple[Tensor, Tensor]:
    """Vanilla-gradient saliency |∂ logit_y / ∂x| per pixel (B, H, W), and the logits (detached).

    One forward and one backward; only the input gradient is requested, so autograd skips the
    weight gradients. ``reduction`` aggregates channels: "mean" or "max".
    """
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        logits = model(leaf)
        (grad,) = torch.autograd.grad(logits.gather(1, y.view(-1, 1)).sum(), leaf)
    magnitude = grad.abs()
    saliency = magnitude.mean(dim=1) if reduction == "mean" else magnitude.amax(dim=1)
    return saliency.to(x.dtype), logits.detach()


def kl_to(clean_logits: Tensor, other_logits: Tensor) -> Tensor:
    """KL(p(clean) ‖ p(other)), batch mean."""
    return F.kl_div(F.log_softmax(other_logits, dim=1), F.log_softmax(clean_logits, dim=1),
                    reduction="batchmean", log_target=True)


class Plain(TrainingMethod):
    """Cross-entropy on the clean inputs."""

    name = "plain"

    def loss(self, model: nn.Module, batch: Sequence[Any], epoch: int) -> MethodOutput:
        x, y = batch[0], batch[1]
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        return MethodOutput(ce, logits, {"ce": ce.detach()})


class SaliencyGuided(TrainingMethod):
    """Saliency Guided Training (Ismail et al., NeurIPS 2021).

    The bottom ``k`` fraction of pixels by |gradient| (all channels of a chosen pixel; channel
    mean of |∂ logit_y/∂x|, computed in eval mode) is masked — with uniform random values
    between the image's min and max (``fill="random"``, the paper's choice) or zeros — and the
    loss is CE(f(x), y) + lam · KL(p(x) ‖ p(x_masked)).
    """

    name = "sgt"
    FILLS = ("random", "zeros")

    def __init__(self, k: float = 0.5, fill: str = "random", lam: float = 1.0) -> None:
        if not 0 <= k <= 1:
            raise ValueError(f"k must be in [0, 1], got {k}")
        self.k = float(k)
        self.fill = check_choice(fill, "fill", self.FILLS)
        self.lam = check_nonnegative(lam, "lam")

    def masked_inputs(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        net = unwrap(model)
        with evaluating(net):
            saliency, _ = input_saliency(net, x, y)
        mask = ops.saliency_budget(saliency, "topk", 1.0, k=self.k) > 0
        if self.fill == "random":
            return ops.masked_random_fill(x, mask, torch.rand_like(x))
        return x.masked_fill(mask.unsqueeze(1), 0.0)

    def loss(self, model: nn.Module, batch: Sequence[Any], epoch: int) -> MethodOutput:
        x, y = batch[0], batch[1]
        masked = self.masked_inputs(model, x, y)
        clean_logits, masked_logits = model(torch.cat([x, masked])).split(x.shape[0])
        ce = F.cross_entropy(clean_logits, y)
        kl = kl_to(clean_logits, masked_logits)
        return MethodOutput(ce + self.lam * kl, clean_logits, {"ce": ce.detach(), "kl": kl.detach()})
