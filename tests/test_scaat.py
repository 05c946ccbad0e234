"""SCAAT, PGD-AT, TRADES and Saliency Guided Training as sf.train methods: modes of each pass,
budget constraint of the attack, schedules, losses, registry and argument errors."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from saliency_fast import ops, train


class ModeRecorder(nn.Module):
    """Records whether each forward call ran in train or eval mode; BatchNorm shows the effect."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(4 * 8 * 8, 3))
        self.modes = []

    def forward(self, x):
        self.modes.append(("train" if self.training else "eval", x.shape[0]))
        return self.body(x)


def batch(n=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=generator), torch.randint(0, 3, (n,), generator=generator)


def test_scaat_runs_saliency_and_attack_in_eval_mode_and_the_update_in_train_mode():
    model = ModeRecorder().train()
    method = train.SCAAT(epsilon=0.1, steps=3, warmup_epochs=0)
    method.epoch_start(0, 10)
    x, y = batch()
    running_mean = model.body[1].running_mean.clone()
    output = method.loss(model, (x, y), 0)
    # 1 saliency pass + 3 attack steps in eval mode, then one train-mode pass over [x, x_adv]
    assert model.modes == [("eval", 6)] * 4 + [("train", 12)]
    assert model.training and model.body[1].training
    output.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    # only the train-mode pass updated the BatchNorm statistics: one momentum step on [x, x_adv]
    assert not torch.equal(model.body[1].running_mean, running_mean)


def test_sgt_masks_in_eval_mode_and_trains_on_clean_and_masked():
    model = ModeRecorder().train()
    x, y = batch()
    train.SaliencyGuided(k=0.5).loss(model, (x, y), 0)
    assert model.modes == [("eval", 6), ("train", 12)]


def test_attack_stays_inside_the_budget_and_the_valid_range():
    torch.manual_seed(1)
    net = ModeRecorder().eval()
    x, y = batch(8)
    method = train.SCAAT(epsilon=0.2, steps=4, budget="topk", k=0.3, warmup_epochs=0, input_range=(0.0, 1.0))
    saliency, logits = train.input_saliency(net, x, y)
    budget = ops.saliency_budget(saliency, "topk", 0.2, k=0.3)
    adversarial = method.attack(net, x, y, budget, 0.2, logits)
    change = (adversarial - x).abs()
    assert bool((change <= budget.unsqueeze(1) + 1e-6).all())
    assert bool((change[budget.unsqueeze(1).expand_as(x) == 0] == 0).all())  # salient pixels never move
    assert bool(((adversarial >= 0) & (adversarial <= 1)).all())
    # the attack raises the divergence well above that of random noise in the same box
    with torch.no_grad():
        noise = (x + (torch.rand_like(x) * 2 - 1) * budget.unsqueeze(1)).clamp(0, 1)
        attacked_kl = train.kl_to(net(x), net(adversarial))
        random_kl = train.kl_to(net(x), net(noise))
    assert float(attacked_kl) > 2 * float(random_kl)


def test_budget_modes_reach_the_attack():
    model = ModeRecorder().train()
    x, y = batch()
    for mode, expected in (("uniform", 1.0), ("topk", 0.25)):
        method = train.SCAAT(epsilon=0.1, steps=1, budget=mode, k=0.25, warmup_epochs=0)
        method.epoch_start(0, 1)
        terms = method.loss(model, (x, y), 0).terms
        assert float(terms["budget_fraction"]) == pytest.approx(expected)
    method = train.SCAAT(epsilon=0.1, steps=1, budget="mass", rho=0.1, warmup_epochs=0)
    method.epoch_start(0, 1)
    assert 0 < float(method.loss(model, (x, y), 0).terms["budget_fraction"]) < 1


def test_warmup_and_ramp_schedule():
    method = train.SCAAT(epsilon=0.4, warmup_epochs=2)  # ramp: 10% of 20 epochs = 2
    assert [method.epsilon_at(e, 20) for e in range(5)] == [0.0, 0.0, 0.2, 0.4, 0.4]
    method = train.SCAAT(epsilon=0.4, warmup_epochs=1, ramp_epochs=4)
    assert [method.epsilon_at(e, 10) for e in range(6)] == pytest.approx([0, 0.1, 0.2, 0.3, 0.4, 0.4])
    model = ModeRecorder().train()
    method.epoch_start(0, 10)
    x, y = batch()
    output = method.loss(model, (x, y), 0)  # warm-up: plain cross-entropy, one train pass
    assert model.modes == [("train", 6)] and output.terms["epsilon"] == 0.0
    torch.testing.assert_close(output.loss, F.cross_entropy(model.body(x), y))


def test_scaat_loss_is_ce_plus_lambda_kl():
    model = ModeRecorder().eval()  # eval mode so that the pass over [x, x_adv] equals separate passes
    method = train.SCAAT(epsilon=0.1, steps=2, lam=3.0, beta=0.5, warmup_epochs=0)
    method.epoch_start(0, 1)
    x, y = batch()
    torch.manual_seed(5)
    output = method.loss(model, (x, y), 0)
    terms = output.terms
    torch.testing.assert_close(output.loss, terms["ce"] + 3.0 * terms["kl"] + 0.5 * terms["adv_ce"])
    torch.testing.assert_close(terms["ce"], F.cross_entropy(model.body(x), y))


def test_baselines_share_the_code_path():
    pgd = train.PGDAT(epsilon=0.1, steps=3)
    assert (pgd.budget, pgd.attack_loss, pgd.objective, pgd.warmup_epochs) == ("uniform", "ce", "adversarial", 0)
    assert pgd.step_size == pytest.approx(2.5 * 0.1 / 3)
    trades = train.TRADES(epsilon=0.1, steps=3)
    assert (trades.budget, trades.attack_loss, trades.lam) == ("uniform", "kl", 6.0)
    model = ModeRecorder().train()
    x, y = batch()
    pgd.epoch_start(0, 1)
    output = pgd.loss(model, (x, y), 0)
    assert model.modes[-1] == ("train", 6)  # Madry: the update sees only x_adv
    assert set(output.terms) == {"epsilon", "budget_fraction", "adv_ce"}


def test_plain_loss_is_cross_entropy():
    model = ModeRecorder().train()
    x, y = batch()
    output = train.Plain().loss(model, (x, y), 0)
    torch.testing.assert_close(output.loss, F.cross_entropy(output.logits, y))


def test_registry_and_defaults():
    assert set(train.OBJECTIVES) == {"plain", "sgt", "pgdat", "trades", "scaat", "res-g", "res-l", "gradia", "haics"}
    assert train.METHODS is train.OBJECTIVES  # the former name of the one registry
    for name, factory in train.OBJECTIVES.items():
        method = factory()
        assert isinstance(method, train.TrainingMethod) and method.name == name
    scaat = train.SCAAT()
    assert (scaat.epsilon, scaat.steps, scaat.budget, scaat.rho, scaat.attack_loss) == (8 / 255, 5, "mass", 0.1, "kl")
    assert "SCAAT(" in repr(scaat)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="budget"):
        train.SCAAT(budget="median")
    with pytest.raises(ValueError, match="steps"):
        train.SCAAT(steps=0)
    for bad in (True, 2.0):  # the one int validator (_validation.check_positive_int): no bools, no floats
        with pytest.raises(ValueError, match="steps must be a positive int"):
            train.SCAAT(steps=bad)
    with pytest.raises(ValueError, match="warmup_epochs must be an int >= 0"):
        train.SCAAT(warmup_epochs=-1)
    with pytest.raises(ValueError, match="ramp_epochs must be an int >= 0"):
        train.SCAAT(ramp_epochs=0.5)
    scaat = train.SCAAT(steps=np.int64(2), warmup_epochs=np.int32(1), ramp_epochs=None)
    assert (type(scaat.steps), scaat.steps, type(scaat.warmup_epochs), scaat.ramp_epochs) == (int, 2, int, None)
    with pytest.raises(ValueError, match="input_range"):
        train.SCAAT(input_range=(1, 0))
    with pytest.raises(ValueError, match="attack_loss"):
        train.SCAAT(attack_loss="cw")
    with pytest.raises(ValueError, match="rho"):
        train.SCAAT(rho=2)
    with pytest.raises(ValueError, match="fill"):
        train.SaliencyGuided(fill="blur")
    with pytest.raises(ValueError, match="k must"):
        train.SaliencyGuided(k=1.5)
