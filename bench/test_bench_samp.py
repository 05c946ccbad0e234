"""SAMP / SAMP++ benchmarks (pytest-benchmark). Run all suites and write BENCHMARKS.md with
`make bench`; this file alone:

    .venv/bin/python -m pytest bench/test_bench_samp.py --benchmark-only

Groups (ratios in BENCHMARKS.md are against the row marked baseline):
- ``samp_step 32x3x224x224``: the step logic alone (the gradient is given), s = 3584, IC and
  momentum on: the native op vs the project's vectorised reference vs the straightforward
  quantile-based step (bench/straightforward_samp.py).
- ``samp++ end to end``: SAMP++ on 64 test digits with the shipped CNN vs the model-only lower
  bound (the same forward+input-gradient calls on the same inputs, recorded) vs the
  straightforward implementation of the whole path. The same ratio is also measured in
  interleaved pairs of whole runs and, least exposed to load drift, call by call
  (bench/interleaved.py).
"""

import pytest
import torch

import saliency_fast as sf
from saliency_fast import _reference, ops
from saliency_fast._common import attribution_mode, input_gradient
from saliency_fast.references import make_reference

from .digits import digits_work
from .interleaved import (call_by_call_ratios, interleaved_ratios, record_inputs, record_ratios,
                          with_input_gradient_bound)
from .straightforward_samp import straightforward_path, straightforward_step

ROUNDS = 3


def run(benchmark, function, *args, setup=None, rounds=ROUNDS):
    if setup is not None:
        return benchmark.pedantic(function, setup=setup, rounds=rounds, iterations=1, warmup_rounds=1)
    return benchmark.pedantic(function, args=args, rounds=rounds, iterations=1, warmup_rounds=1)


# --- step logic at ImageNet size -------------------------------------------------------------
@pytest.fixture(scope="module")
def step_state():
    g = torch.Generator().manual_seed(0)
    shape = (32, 3, 224, 224)
    point = torch.randn(shape, generator=g)
    end = torch.zeros(shape)
    grad = torch.randn(shape, generator=g)
    bound = (point - end).abs().flatten(1).sum(1) / 50
    return point, end, grad, bound


def fresh(step_state):
    point, end, grad, bound = step_state
    active = ops.pixels_active(point, end)
    return dict(point=point.clone(), end=end, grad=grad, grad_avg=torch.randn_like(point),
                attribution=torch.zeros(point.shape[0], *point.shape[2:]), active=active,
                count=active.flatten(1).sum(1), steps=torch.zeros(point.shape[0], dtype=torch.long),
                rows=torch.arange(point.shape[0]), bound=bound)


def op_step(fn):
    def step(s):
        fn(s["point"], s["end"], s["grad"], s["grad_avg"], s["attribution"], s["active"], s["count"],
           s["steps"], s["rows"], s["bound"], 3584, 0.5, False, False)
    return step


@pytest.mark.parametrize("implementation", ["native", "reference", "straightforward"])
def test_samp_step_224(benchmark, step_state, implementation):
    benchmark.group = "samp_step 32x3x224x224"
    benchmark.extra_info["baseline"] = implementation == "native"
    if implementation == "native" and not sf.native_available():
        pytest.skip("extension not built")
    state = {}

    def setup():
        state.clear()
        state.update(fresh(step_state))
        return (), {}

    def straightforward():
        s = state
        straightforward_step(s["point"], s["end"], s["grad"], s["grad_avg"], s["attribution"], s["active"],
                             s["bound"], 3584, 0.5, False, False)

    function = {"native": lambda: op_step(ops.samp_step)(state),
                "reference": lambda: op_step(_reference.samp_step)(state),
                "straightforward": straightforward}[implementation]
    run(benchmark, function, setup=setup, rounds=5)


# --- SAMP++ end to end on the digits ---------------------------------------------------------
@pytest.fixture(scope="module", name="digits_work")
def digits_work_fixture():
    return digits_work()


@pytest.fixture(scope="module")
def recorded_inputs(digits_work):
    """The input of every model call SAMP++ makes with autograd (the lower bound replays them:
    the model's time depends on its input's values, see bench/interleaved.py)."""
    model, images, target = digits_work
    return record_inputs(model, lambda: sf.SAMP.plus(model).attribute(images, target), only_with_grad=True)


def model_only(model, inputs, target):
    """The lower bound: forward + input gradient of each recorded input, nothing else."""
    with attribution_mode(model):
        for x in inputs:
            input_gradient(model, x, target[: x.shape[0]])


def straightforward_samp_plus(model, images, target):
    with attribution_mode(model):
        blur = make_reference("blur", images, "insertion_reference")
        straightforward_path(model, images, torch.zeros_like(images), target, 10, insertion=False)
        straightforward_path(model, blur, images, target, 10, insertion=True)


@pytest.mark.parametrize("implementation", ["samp++", "model-only lower bound", "straightforward"])
def test_samp_plus_end_to_end(benchmark, digits_work, recorded_inputs, implementation):
    benchmark.group = "samp++ end to end: 64 digits 1x32x32, DigitsCNN"
    benchmark.extra_info["baseline"] = implementation == "model-only lower bound"
    benchmark.extra_info["model_calls"] = len(recorded_inputs)
    model, images, target = digits_work
    if implementation == "samp++":
        run(benchmark, lambda: sf.SAMP.plus(model).attribute(images, target))
    elif implementation == "straightforward":
        run(benchmark, straightforward_samp_plus, model, images, target)
    else:
        run(benchmark, model_only, model, recorded_inputs, target)


def test_samp_plus_end_to_end_interleaved(benchmark, digits_work, recorded_inputs):
    """SAMP++ and the model-only lower bound in interleaved pairs (bench/interleaved.py);
    extra_info holds the median and spread of the per-pair ratios."""
    benchmark.group = "samp++ / lower bound, interleaved pairs: 64 digits, DigitsCNN"
    model, images, target = digits_work
    ratios = interleaved_ratios(benchmark, lambda: sf.SAMP.plus(model).attribute(images, target),
                                lambda: model_only(model, recorded_inputs, target), rounds=9)
    record_ratios(benchmark, "SAMP++ / lower bound", ratios)


def test_samp_plus_vs_lower_bound_call_by_call(benchmark, digits_work):
    """Before each SAMP++ model call, the lower bound's call on the same input runs, timed
    apart (bench/interleaved.py); extra_info holds the median and spread over the rounds of
    (SAMP++ time) / (lower bound time)."""
    benchmark.group = "samp++ / lower bound, call by call: 64 digits, DigitsCNN"
    model, images, target = digits_work
    wrapped = with_input_gradient_bound(model, target)
    ratios = call_by_call_ratios(benchmark, lambda m: sf.SAMP.plus(m).attribute(images, target), wrapped, rounds=5)
    record_ratios(benchmark, "SAMP++ / lower bound", ratios)
