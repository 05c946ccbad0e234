"""SCAAT (saliency-constrained adaptive adversarial training, scaat.md) and the adversarial
baselines that share its code path: PGD adversarial training (Madry) and TRADES.

One step: saliency |∂ logit_y/∂x| in eval mode → per-pixel budget e (native
``saliency_budget``) → T PGD steps inside |δ| <= e, each one native fused ``masked_perturb``
after the input gradient → one train-mode forward of [x, x_adv] for the loss.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_choice, check_nonnegative, check_positive_int
from .. import ops
from ..ops import BUDGET_MODES
from .objectives import (MethodOutput, TrainingMethod, evaluating, input_saliency, kl_to, unwrap)


class AdversarialTraining(TrainingMethod):
    """Adversarial training inside a per-pixel budget derived from the saliency map.

    ``objective="kl"``: L = CE(f(x), y) + lam·KL(p(x) ‖ p(x_adv)) + beta·CE(f(x_adv), y)
    (SCAAT, TRADES); ``objective="adversarial"``: L = CE(f(x_adv), y) (Madry's PGD-AT; the
    reported training accuracy is then on x_adv).

    The attack maximises ``attack_loss`` ("kl": KL(p(x) ‖ p(x+δ)) with p(x) fixed; "ce":
    CE(f(x+δ), y)) with ``steps`` PGD steps of size ``step_size`` (default 2.5·ε/steps),
    starting from δ ~ U(−e, e) (``random_start``). ε is 0 for ``warmup_epochs`` epochs (plain
    training), then ramps linearly to ``epsilon`` over ``ramp_epochs`` (None: 10% of the epochs,
    at least 1); the step size scales with it.
    """

    name = "adversarial"
    OBJECTIVES = ("kl", "adversarial")
    ATTACK_LOSSES = ("kl", "ce")

    def __init__(self, epsilon: float, steps: int, step_size: Optional[float] = None, budget: str = "mass",
                 rho: float = 0.1, k: float = 0.5, gamma: float = 1.0, lam: float = 1.0, beta: float = 0.0,
                 attack_loss: str = "kl", objective: str = "kl", warmup_epochs: int = 0,
                 ramp_epochs: Optional[int] = 0, input_range: Tuple[float, float] = (0.0, 1.0),
                 random_start: bool = True, saliency_reduction: str = "mean") -> None:
        self.epsilon = check_nonnegative(epsilon, "epsilon")
        self.steps = steps = check_positive_int(steps, "steps")
        self.step_size = 2.5 * self.epsilon / steps if step_size is None else check_nonnegative(step_size, "step_size")
        self.budget = check_choice(budget, "budget", BUDGET_MODES)
        ops.check_budget_shape(rho, k, gamma)
        self.rho, self.k, self.gamma = float(rho), float(k), float(gamma)
        self.lam = check_nonnegative(lam, "lam")
        self.beta = check_nonnegative(beta, "beta")
        self.attack_loss = check_choice(attack_loss, "attack_loss", self.ATTACK_LOSSES)
        self.objective = check_choice(objective, "objective", self.OBJECTIVES)
        self.warmup_epochs = check_positive_int(warmup_epochs, "warmup_epochs", minimum=0)
        self.ramp_epochs = check_positive_int(ramp_epochs, "ramp_epochs", minimum=0) if ramp_epochs is not None else None
        low, high = (float(v) for v in input_range)
        if not low < high:
            raise ValueError(f"input_range must be (low, high) with low < high, got {input_range!r}")
        self.input_range = (low, high)
        self.random_start = bool(random_start)
        self.saliency_reduction = check_choice(saliency_reduction, "saliency_reduction", ("mean", "max"))
        self._current_epsilon = self.epsilon

    # -- schedule ---------------------------------------------------------------------------
    def epsilon_at(self, epoch: int, epochs: int) -> float:
        """ε of a (0-based) epoch: 0 during warm-up, then a linear ramp up to ``epsilon``."""
        if epoch < self.warmup_epochs:
            return 0.0
        ramp = self.ramp_epochs if self.ramp_epochs is not None else max(1, round(0.1 * epochs))
        if ramp == 0:
            return self.epsilon
        return self.epsilon * min(1.0, (epoch - self.warmup_epochs + 1) / ramp)

    def epoch_start(self, epoch: int, epochs: int) -> None:
        self._current_epsilon = self.epsilon_at(epoch, epochs)

    # -- one batch --------------------------------------------------------------------------
    def budget_map(self, net: nn.Module, x: Tensor, y: Tensor, epsilon: float) -> tuple[Tensor, Optional[Tensor]]:
        """(B, H, W) budget and, when a forward was needed for it, the clean eval-mode logits."""
        if self.budget == "uniform":
            return x.new_full((x.shape[0], x.shape[2], x.shape[3]), epsilon), None
        saliency, logits = input_saliency(net, x, y, self.saliency_reduction)
        return ops.saliency_budget(saliency, self.budget, epsilon, self.rho, self.k, self.gamma), logits

    def attack(self, net: nn.Module, x: Tensor, y: Tensor, budget: Tensor, epsilon: float,
               clean_logits: Optional[Tensor]) -> Tensor:
        """x + δ after ``steps`` PGD steps inside |δ| <= budget (detached)."""
        low, high = self.input_range
        step_size = self.step_size * epsilon / self.epsilon
        if self.random_start:
            delta = (torch.rand_like(x) * 2 - 1) * budget.unsqueeze(1)
            delta = (x + delta).clamp(low, high) - x
        else:
            delta = torch.zeros_like(x)
        target = None
        if self.attack_loss == "kl":
            if clean_logits is None:
                with torch.no_grad():
                    clean_logits = net(x)
            target = F.log_softmax(clean_logits.detach().float(), dim=1)
        for _ in range(self.steps):
            with torch.enable_grad():
                delta.requires_grad_(True)
                logits = net(x + delta).float()
                if target is None:
                    objective = F.cross_entropy(logits, y, reduction="sum")
                else:
                    objective = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="sum", log_target=True)
                (grad,) = torch.autograd.grad(objective, delta)
            delta = delta.detach()
            ops.masked_perturb(x, delta, grad.to(x.dtype), budget, step_size, epsilon, low, high)
        return (x + delta).detach()

    def loss(self, model: nn.Module, batch: Sequence[Any], epoch: int) -> MethodOutput:
        x, y = batch[0], batch[1]
        epsilon = self._current_epsilon
        if epsilon == 0.0:  # warm-up: the saliency of an untrained network means nothing
            logits = model(x)
            ce = F.cross_entropy(logits, y)
            return MethodOutput(ce, logits, {"ce": ce.detach(), "epsilon": 0.0})
        net = unwrap(model)
        with evaluating(net):
            budget, clean_logits = self.budget_map(net, x, y, epsilon)
            adversarial = self.attack(net, x, y, budget, epsilon, clean_logits)
        terms: Dict[str, Any] = {"epsilon": epsilon, "budget_fraction": (budget > 0).float().mean()}
        if self.objective == "adversarial":
            logits = model(adversarial)
            ce = F.cross_entropy(logits, y)
            terms["adv_ce"] = ce.detach()
            return MethodOutput(ce, logits, terms)
        clean, attacked = model(torch.cat([x, adversarial])).split(x.shape[0])
        ce = F.cross_entropy(clean, y)
        kl = kl_to(clean, attacked)
        loss = ce + self.lam * kl
        terms.update(ce=ce.detach(), kl=kl.detach())
        if self.beta > 0:
            adv_ce = F.cross_entropy(attacked, y)
            loss = loss + self.beta * adv_ce
            terms["adv_ce"] = adv_ce.detach()
        return MethodOutput(loss, clean, terms)


class SCAAT(AdversarialTraining):
    """SCAAT (Xu et al., BMVC 2023) as specified in scaat.md: the attack budget goes where the
    model's own saliency is low ("mass": the lowest-saliency pixels holding <= rho of the mass),
    so training penalises — and removes — the gradient noise there while salient pixels stay
    free. Defaults are this package's choice (see EXPERIMENTS.md)."""

    name = "scaat"

    def __init__(self, epsilon: float = 8 / 255, steps: int = 5, step_size: Optional[float] = None,
                 budget: str = "mass", rho: float = 0.1, k: float = 0.5, gamma: float = 1.0, lam: float = 1.0,
                 attack_loss: str = "kl", warmup_epochs: int = 2, ramp_epochs: Optional[int] = None,
                 input_range: Tuple[float, float] = (0.0, 1.0), beta: float = 0.0, random_start: bool = True,
                 saliency_reduction: str = "mean") -> None:
        super().__init__(epsilon, steps, step_size, budget=budget, rho=rho, k=k, gamma=gamma, lam=lam, beta=beta,
                         attack_loss=attack_loss, objective="kl", warmup_epochs=warmup_epochs,
                         ramp_epochs=ramp_epochs, input_range=input_range, random_start=random_start,
                         saliency_reduction=saliency_reduction)


class PGDAT(AdversarialTraining):
    """PGD adversarial training (Madry et al.): uniform budget ε, CE attack, loss CE(f(x_adv), y)."""

    name = "pgdat"

    def __init__(self, epsilon: float = 8 / 255, steps: int = 5, step_size: Optional[float] = None,
                 input_range: Tuple[float, float] = (0.0, 1.0), warmup_epochs: int = 0,
                 ramp_epochs: Optional[int] = 0, random_start: bool = True) -> None:
        super().__init__(epsilon, steps, step_size, budget="uniform", attack_loss="ce", objective="adversarial",
                         warmup_epochs=warmup_epochs, ramp_epochs=ramp_epochs, input_range=input_range,
                         random_start=random_start)


class TRADES(AdversarialTraining):
    """TRADES (Zhang et al.): uniform budget ε, KL attack, loss CE(f(x)) + beta·KL(p(x) ‖ p(x_adv))."""

    name = "trades"

    def __init__(self, epsilon: float = 8 / 255, steps: int = 5, beta: float = 6.0, step_size: Optional[float] = None,
                 input_range: Tuple[float, float] = (0.0, 1.0), warmup_epochs: int = 0,
                 ramp_epochs: Optional[int] = 0, random_start: bool = True) -> None:
        super().__init__(epsilon, steps, step_size, budget="uniform", lam=beta, attack_loss="kl", objective="kl",
                         warmup_epochs=warmup_epochs, ramp_epochs=ramp_epochs, input_range=input_range,
                         random_start=random_start)
