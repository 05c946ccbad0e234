"""SCAAT benchmarks (pytest-benchmark):

    .venv/bin/python -m pytest bench/test_bench_scaat.py --benchmark-only

Groups (the ratio of a row is its median over the group's baseline row):
- ``masked_perturb 64x3x224x224``: one fused PGD step (native, baseline) vs the straightforward
  PyTorch update (separate sign, scale, box clamp, range clamp ops; the reference twin).
- ``saliency_budget 64x224x224 <mode>``: the native per-image threshold by selection (baseline)
  vs straightforward PyTorch: sort-based quantile (torch.quantile) for "topk", sort + cumsum
  for "mass" (the reference twin).
- ``scaat step <model>``: one full SCAAT training step (saliency, budget, T=5 attack steps,
  loss, backward, Adam step) vs its pass-count lower bound (baseline): the same model calls
  alone — 1 eval forward+input-backward, T eval forward+input-backwards, 1 train
  forward+backward of [x, x_adv] — plus the same Adam step. Target: ≤ 1.10×.
"""

import pytest
import torch

from saliency_fast import _reference, train
from saliency_fast.models import DigitsCNN

from .interleaved import interleaved_ratios, record_ratios

ROUNDS = 5


def run(benchmark, function, setup=None, rounds=ROUNDS):
    if setup is not None:
        return benchmark.pedantic(function, setup=setup, rounds=rounds, iterations=1, warmup_rounds=1)
    return benchmark.pedantic(function, rounds=rounds, iterations=1, warmup_rounds=1)


# --- masked_perturb at ImageNet size ---------------------------------------------------------
@pytest.fixture(scope="module")
def perturb_state():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 224, 224, generator=g)
    budget = (torch.rand(64, 224, 224, generator=g) < 0.5).float() * (8 / 255)
    grad = torch.randn(x.shape, generator=g)
    delta = (torch.rand(x.shape, generator=g) * 2 - 1) * budget.unsqueeze(1)
    return x, delta, grad, budget


@pytest.mark.parametrize("implementation", ["native", "straightforward PyTorch"])
def test_masked_perturb_224(benchmark, perturb_state, implementation):
    benchmark.group = "masked_perturb 64x3x224x224"
    benchmark.extra_info["baseline"] = implementation == "native"
    x, delta, grad, budget = perturb_state
    work = delta.clone()
    step = torch.ops.saliency_fast.masked_perturb if implementation == "native" else _reference.masked_perturb
    run(benchmark, lambda: step(x, work, grad, budget, 2 / 255, 8 / 255, 0.0, 1.0))


# --- saliency_budget at ImageNet size --------------------------------------------------------
@pytest.fixture(scope="module")
def saliency_state():
    g = torch.Generator().manual_seed(1)
    return torch.rand(64, 224, 224, generator=g) ** 4


def straightforward_topk(saliency, k, epsilon):
    flat = saliency.flatten(1)
    threshold = torch.quantile(flat, k, dim=1, keepdim=True, interpolation="lower")
    return torch.where(flat <= threshold, epsilon, 0.0).view_as(saliency)


@pytest.mark.parametrize("mode", ["topk", "mass"])
@pytest.mark.parametrize("implementation", ["native", "straightforward PyTorch"])
def test_saliency_budget_224(benchmark, saliency_state, mode, implementation):
    benchmark.group = f"saliency_budget 64x224x224 {mode}"
    benchmark.extra_info["baseline"] = implementation == "native"
    if implementation == "native":
        function = lambda: torch.ops.saliency_fast.saliency_budget(saliency_state, mode, 8 / 255, 0.1, 0.5, 1.0)  # noqa: E731
    elif mode == "topk":
        function = lambda: straightforward_topk(saliency_state, 0.5, 8 / 255)  # noqa: E731
    else:
        function = lambda: _reference.saliency_budget(saliency_state, mode, 8 / 255, 0.1, 0.5, 1.0)  # noqa: E731
    run(benchmark, function)


# --- a whole SCAAT step vs its pass-count lower bound ---------------------------------------
MODELS = {
    "digits 64x1x32x32, DigitsCNN": (64, 1, 16),
    "cifar-shaped 64x3x32x32, DigitsCNN width 64": (64, 3, 64),
}
STEPS = 5


def scaat_setup(name):
    batch, channels, width = MODELS[name]
    torch.manual_seed(0)
    model = DigitsCNN(in_channels=channels, width=width)
    x = torch.rand(batch, channels, 32, 32)
    y = torch.randint(0, 10, (batch,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    return model, x, y, optimizer


def scaat_step(model, method, x, y, optimizer):
    model.train()
    loss = method.loss(model, (x, y), 0).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def lower_bound_step(model, x, y, optimizer):
    model.eval()
    leaf = x.detach().requires_grad_(True)
    torch.autograd.grad(model(leaf).gather(1, y.view(-1, 1)).sum(), leaf)
    for _ in range(STEPS):
        leaf = x.detach().requires_grad_(True)
        torch.autograd.grad(model(leaf).sum(), leaf)
    model.train()
    loss = model(torch.cat([x, x])).logsumexp(dim=1).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@pytest.fixture
def one_thread():
    """The step comparison runs single-threaded: on a shared 2-core machine, two OpenMP threads
    oversubscribe the CPU and the timings of whole steps vary by 2× between runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("implementation", ["SCAAT step", "pass-count lower bound"])
def test_scaat_step_overhead(benchmark, one_thread, name, implementation):
    benchmark.group = f"scaat step: {name}, T={STEPS}"
    benchmark.extra_info["baseline"] = implementation == "pass-count lower bound"
    benchmark.extra_info["threads"] = 1
    model, x, y, optimizer = scaat_setup(name)
    if implementation == "SCAAT step":
        method = train.SCAAT(epsilon=0.1, steps=STEPS, warmup_epochs=0)
        method.epoch_start(0, 1)
        run(benchmark, lambda: scaat_step(model, method, x, y, optimizer), rounds=10)
    else:
        run(benchmark, lambda: lower_bound_step(model, x, y, optimizer), rounds=10)


@pytest.mark.parametrize("name", list(MODELS))
def test_scaat_step_overhead_interleaved(benchmark, one_thread, name):
    """The same comparison in interleaved pairs (bench/interleaved.py); extra_info holds the
    median of the per-pair ratios."""
    benchmark.group = f"scaat step / lower bound, interleaved pairs: {name}, T={STEPS}"
    model, x, y, optimizer = scaat_setup(name)
    method = train.SCAAT(epsilon=0.1, steps=STEPS, warmup_epochs=0)
    method.epoch_start(0, 1)
    ratios = interleaved_ratios(benchmark, lambda: scaat_step(model, method, x, y, optimizer),
                                lambda: lower_bound_step(model, x, y, optimizer), rounds=10)
    benchmark.extra_info["threads"] = 1
    record_ratios(benchmark, "SCAAT / lower bound", ratios)
