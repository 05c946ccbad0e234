"""Time a candidate against its lower bound so that the load drifting on a shared machine
cancels: whole runs in interleaved pairs, or, finer, call by call inside one run."""
import statistics
import time

import torch
from torch import nn

from saliency_fast._common import input_gradient


def interleaved_ratios(benchmark, candidate, bound, rounds):
    """Run ``rounds`` timed pairs (after one warm-up pair) and return the sorted per-pair ratios
    candidate time / bound time; pytest-benchmark records the time of whole pairs."""
    ratios = []

    def pair():
        start = time.perf_counter()
        candidate()
        middle = time.perf_counter()
        bound()
        ratios.append((middle - start) / (time.perf_counter() - middle))

    benchmark.pedantic(pair, rounds=rounds, iterations=1, warmup_rounds=1)
    return timed_rounds(benchmark, ratios)


class WithBoundCalls(nn.Module):
    """The candidate's model, which before each of its calls runs the lower bound's call on the
    same input, ``bound_call(x)``, timed apart. Candidate and bound then see the same machine
    state to within one model call.

    The same input, not merely the same batch size: a model's time depends on its input's values
    (DigitsCNN's CPU max-pool branches on them, and is ~10 % slower on SAMP's path points than on
    the digits themselves), so only the candidate's own inputs make the bound a lower bound. The
    bound gets a copy, made outside both timers (``harness_seconds``), so that both calls read an
    input fresh in the caches.

    The order is not neutral: whatever the candidate's own work evicts from the caches is paid by
    the bound's next call, so the ratio counts the candidate's work outside the model in full but
    not its cache disturbance of the model (whole-run pairs count both, with far more noise).
    ``only_with_grad``: skip calls made without autograd (e.g. SAMP's one-image call that learns
    the class count)."""

    def __init__(self, model: nn.Module, bound_call, only_with_grad: bool = False):
        super().__init__()
        self.model, self.bound_call, self.only_with_grad = model, bound_call, only_with_grad
        self.bound_seconds = self.harness_seconds = 0.0

    def forward(self, x):
        if not self.only_with_grad or torch.is_grad_enabled():
            start = time.perf_counter()
            copy = x.detach().clone()
            middle = time.perf_counter()
            self.bound_call(copy)
            self.bound_seconds += time.perf_counter() - middle
            self.harness_seconds += middle - start
        return self.model(x)


def with_input_gradient_bound(model: nn.Module, target) -> WithBoundCalls:
    """``model``, which before each of its autograd calls runs the model-only lower bound's call:
    forward + input gradient of the same input (for the first classes of ``target``: the class
    picks the backward's seed, not its cost)."""
    return WithBoundCalls(model, lambda x: input_gradient(model, x, target[: x.shape[0]]), only_with_grad=True)


def record_inputs(model: nn.Module, run, only_with_grad: bool = False) -> list:
    """Copies of the input of every call ``run()`` makes to ``model`` (``only_with_grad``: the
    calls made with autograd), for a lower bound that replays them."""
    inputs = []

    def record(module, args):
        if not only_with_grad or torch.is_grad_enabled():
            inputs.append(args[0].detach().clone())

    hook = model.register_forward_pre_hook(record)
    try:
        run()
    finally:
        hook.remove()
    return inputs


def call_by_call_ratio(candidate, wrapped: WithBoundCalls) -> float:
    """One run of ``candidate(wrapped)``: (run time − bound calls' time − the copies of their
    inputs) / bound calls' time."""
    wrapped.bound_seconds = wrapped.harness_seconds = 0.0
    start = time.perf_counter()
    candidate(wrapped)
    total = time.perf_counter() - start
    return (total - wrapped.bound_seconds - wrapped.harness_seconds) / wrapped.bound_seconds


def call_by_call_ratios(benchmark, candidate, wrapped: WithBoundCalls, rounds):
    """Run ``candidate(wrapped)`` ``rounds`` times (after one warm-up) and return the sorted
    call_by_call_ratio of each; pytest-benchmark records whole runs."""
    ratios = []
    benchmark.pedantic(lambda: ratios.append(call_by_call_ratio(candidate, wrapped)), rounds=rounds, iterations=1,
                       warmup_rounds=1)
    return timed_rounds(benchmark, ratios)


def timed_rounds(benchmark, ratios: list) -> list:
    """The sorted ratios of the timed rounds: all but the warm-up round's, or, under
    --benchmark-disable (one untimed call, no warm-up: a smoke run), the one there is."""
    return sorted(ratios if benchmark.disabled else ratios[1:])


def record_ratios(benchmark, label: str, ratios: list) -> None:
    """extra_info: the median of the sorted ``ratios`` under "median ratio {label}", and their range."""
    benchmark.extra_info[f"median ratio {label}"] = round(statistics.median(ratios), 3)
    benchmark.extra_info["ratio range"] = f"{ratios[0]:.3f}–{ratios[-1]:.3f}"
