"""Benchmarks of the evaluation metrics and the perturbation_curve op (pytest-benchmark).

    .venv/bin/python -m pytest bench/test_bench_metrics.py --benchmark-only --benchmark-group-by=group

Groups (64 images of 1×32×32, the DigitsCNN, pixels_per_step = 10 → 104 curve points a path):
- ``deletion_insertion``: sf.metrics.deletion_insertion (both paths) vs the model-only lower
  bound (the same forward calls on the same inputs, recorded; no perturbation work) and vs a plain
  one-call-per-step loop (an incrementally perturbed batch of 64 images per step).
- ``deletion_insertion / lower bound, call by call``: the same ratio with the bound's call on
  each input run right before the metric's own (bench/interleaved.py), so that load drift
  on a shared machine cancels; ``..., interleaved pairs``: whole runs of both, back to back;
  ``deletion_insertion vs plain loop, interleaved pairs``: the same against the plain loop.
- ``deletion_vs_quantus``: the deletion path alone vs Quantus PixelFlipping on the same work
  (baseline 0.0 — Quantus "black" is the image minimum —, logits; Quantus skips the unperturbed
  point). Quantus requires the step to divide H·W, so this group uses 8 pixels per step (128
  steps) for both.
- ``deletion vs Quantus, interleaved pairs``: the same two runs back to back, so that load drift
  cancels; extra_info holds the median and spread of Quantus time / our time.
- ``perturbation_curve``: building all (64, 104, 1, 32, 32) perturbed images with the op vs a
  scatter-per-step PyTorch loop producing the same tensor (the model is free: no forward).
"""
import math

import numpy as np
import pytest
import torch

from saliency_fast import metrics, ops
from saliency_fast._common import score_outputs
from saliency_fast.models import DigitsCNN, digits_cnn
from saliency_fast.references import make_reference

from .interleaved import WithBoundCalls, call_by_call_ratios, interleaved_ratios, record_inputs, record_ratios

BATCH, SIDE, PIXELS_PER_STEP = 64, 32, 10
QUANTUS_PIXELS_PER_STEP = 8  # Quantus asserts H·W % features_in_step == 0 (1024 % 10 != 0)
ROUNDS = 3
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --- fixtures: the model first, so it is one place to change -------------------------------------
@pytest.fixture(scope="module")
def model():
    try:
        return digits_cnn(pretrained=True).eval()
    except FileNotFoundError:  # weights not shipped in this checkout: the same architecture, seeded
        torch.manual_seed(0)
        return DigitsCNN().eval()


@pytest.fixture(scope="module")
def work(model):
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(BATCH, 1, SIDE, SIDE, generator=generator)
    attributions = torch.randn(BATCH, SIDE, SIDE, generator=generator)
    with torch.no_grad():
        target = model(inputs).argmax(1)
    return inputs, attributions, target


def run(benchmark, function, *args, **kwargs):
    return benchmark.pedantic(function, args=args, kwargs=kwargs, rounds=ROUNDS, iterations=1, warmup_rounds=1)


# --- implementations under comparison -----------------------------------------------------------
def sf_deletion_insertion(model, inputs, attributions, target, paths=("deletion", "insertion"),
                          pixels_per_step=PIXELS_PER_STEP):
    return metrics.deletion_insertion(model, inputs, attributions, target=target,
                                      pixels_per_step=pixels_per_step, paths=paths)


def recorded_inputs(model, inputs, attributions, target):
    """The input of every forward call deletion_insertion makes."""
    return record_inputs(model, lambda: sf_deletion_insertion(model, inputs, attributions, target))


def model_only(model, recorded):
    """The lower bound: the same forward calls on the same inputs, nothing else (the model's
    time depends on its input's values, see bench/interleaved.py)."""
    with torch.no_grad():
        for x in recorded:
            model(x)


def plain_path(model, start, finish, order, target):
    """One model call per curve point on an incrementally perturbed copy of the batch."""
    batch, channels = start.shape[:2]
    num_pixels = start.shape[-1] * start.shape[-2]
    current, finish_flat = start.clone().flatten(2), finish.flatten(2)
    scores = []
    with torch.no_grad():
        for step in range(math.ceil(num_pixels / PIXELS_PER_STEP) + 1):
            chosen = order[:, max(0, (step - 1) * PIXELS_PER_STEP): step * PIXELS_PER_STEP]
            index = chosen.unsqueeze(1).expand(batch, channels, -1)
            current.scatter_(2, index, finish_flat.gather(2, index))
            scores.append(score_outputs(model(current.view_as(start)), target))
    return torch.stack(scores, 1)


def plain_deletion_insertion(model, inputs, attributions, target):
    order = torch.sort(attributions.flatten(1), dim=1, descending=True, stable=True).indices
    deletion = plain_path(model, inputs, torch.zeros_like(inputs), order, target)
    insertion = plain_path(model, make_reference("blur", inputs, "insertion_reference"), inputs, order, target)
    return deletion.mean(1) / deletion[:, 0], insertion.mean(1) / insertion[:, -1]


def quantus_pixel_flipping(model, inputs, attributions, target):
    import quantus

    metric = quantus.PixelFlipping(features_in_step=QUANTUS_PIXELS_PER_STEP, perturb_baseline=0.0, normalise=False,
                                   abs=False, disable_warnings=True, display_progressbar=False)
    return metric(model=model, x_batch=inputs.numpy(), y_batch=target.numpy(),
                  a_batch=attributions.unsqueeze(1).numpy(), channel_first=True, softmax=False,
                  device="cpu", batch_size=BATCH)


def scatter_loop_curve(start, finish, ranks, counts):
    """The (B, S, C, H, W) perturbed images by one scatter per curve point."""
    batch, channels = start.shape[:2]
    order = ranks.flatten(1).argsort(dim=1)
    out = torch.empty((batch, counts.shape[0], *start.shape[1:]), dtype=start.dtype, device=start.device)
    current, finish_flat = start.clone().flatten(2), finish.flatten(2)
    previous = 0
    for step, count in enumerate(counts.tolist()):
        index = order[:, previous:count].unsqueeze(1).expand(batch, channels, -1)
        current.scatter_(2, index, finish_flat.gather(2, index))
        out[:, step] = current.view_as(start)
        previous = count
    return out


# --- group: deletion_insertion ------------------------------------------------------------------
@pytest.mark.benchmark(group="deletion_insertion")
def test_sf_deletion_insertion(benchmark, model, work):
    result = run(benchmark, sf_deletion_insertion, model, *work)
    benchmark.extra_info.update(model_calls=result.model_calls, threads=torch.get_num_threads())


@pytest.mark.benchmark(group="deletion_insertion")
def test_model_only_lower_bound(benchmark, model, work):
    recorded = recorded_inputs(model, *work)
    run(benchmark, model_only, model, recorded)
    benchmark.extra_info.update(model_calls=len(recorded), batch_sizes=[len(x) for x in recorded])


@pytest.mark.benchmark(group="deletion_insertion")
def test_plain_loop_one_call_per_step(benchmark, model, work):
    deletion_auc, insertion_auc = run(benchmark, plain_deletion_insertion, model, *work)
    expected = sf_deletion_insertion(model, *work)  # the same work: the same AUCs
    torch.testing.assert_close(deletion_auc, expected.deletion_auc, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(insertion_auc, expected.insertion_auc, rtol=1e-4, atol=1e-5)


def test_deletion_insertion_vs_lower_bound_call_by_call(benchmark, model, work):
    benchmark.group = "deletion_insertion / lower bound, call by call"

    def bound_call(x):
        with torch.no_grad():
            model(x)

    wrapped = WithBoundCalls(model, bound_call)
    ratios = call_by_call_ratios(benchmark, lambda m: sf_deletion_insertion(m, *work), wrapped, rounds=5)
    record_ratios(benchmark, "deletion_insertion / lower bound", ratios)


def test_deletion_insertion_vs_lower_bound_interleaved(benchmark, model, work):
    benchmark.group = "deletion_insertion / lower bound, interleaved pairs"
    recorded = recorded_inputs(model, *work)
    ratios = interleaved_ratios(benchmark, lambda: sf_deletion_insertion(model, *work),
                                lambda: model_only(model, recorded), rounds=7)
    record_ratios(benchmark, "deletion_insertion / lower bound", ratios)


def test_deletion_insertion_vs_plain_loop_interleaved(benchmark, model, work):
    benchmark.group = "deletion_insertion vs plain loop, interleaved pairs"
    # interleaved_ratios gives candidate / bound: the plain loop is the candidate, so > 1 means we are faster
    ratios = interleaved_ratios(benchmark, lambda: plain_deletion_insertion(model, *work),
                                lambda: sf_deletion_insertion(model, *work), rounds=7)
    record_ratios(benchmark, "plain loop / ours", ratios)


# --- group: deletion_vs_quantus -----------------------------------------------------------------
@pytest.mark.benchmark(group="deletion_vs_quantus")
def test_sf_deletion_only(benchmark, model, work):
    run(benchmark, sf_deletion_insertion, model, *work, paths=("deletion",), pixels_per_step=QUANTUS_PIXELS_PER_STEP)


@pytest.mark.benchmark(group="deletion_vs_quantus")
def test_quantus_pixel_flipping(benchmark, model, work):
    pytest.importorskip("quantus")
    curves = np.asarray(run(benchmark, quantus_pixel_flipping, model, *work))
    expected = sf_deletion_insertion(model, *work, paths=("deletion",), pixels_per_step=QUANTUS_PIXELS_PER_STEP)
    expected = expected.deletion_curve[:, 1:]
    torch.testing.assert_close(torch.from_numpy(curves).float(), expected, rtol=1e-4, atol=1e-4)


def test_deletion_vs_quantus_interleaved(benchmark, model, work):
    pytest.importorskip("quantus")
    benchmark.group = "deletion vs Quantus, interleaved pairs"
    ours = lambda: sf_deletion_insertion(model, *work, paths=("deletion",), pixels_per_step=QUANTUS_PIXELS_PER_STEP)
    # interleaved_ratios gives candidate / bound: Quantus is the candidate, so > 1 means we are faster
    ratios = interleaved_ratios(benchmark, lambda: quantus_pixel_flipping(model, *work), ours, rounds=5)
    record_ratios(benchmark, "Quantus / ours", ratios)


# --- group: perturbation_curve ------------------------------------------------------------------
@pytest.fixture(scope="module", params=DEVICES)
def curve_args(request, work):
    inputs, attributions, _ = work
    counts = metrics.curve_counts(SIDE * SIDE, PIXELS_PER_STEP)
    args = (inputs, torch.zeros_like(inputs), metrics.pixel_ranks(attributions), counts)
    return tuple(t.to(request.param) for t in args)


def built_and_released(function, *args):
    """Build the curve, then drop it, as a metric does with each chunk once scored: a result
    kept alive while the next one is allocated makes every round fault in fresh pages."""
    out = function(*args)
    if out.is_cuda:
        torch.cuda.synchronize()


@pytest.mark.benchmark(group="perturbation_curve")
def test_perturbation_curve_op(benchmark, curve_args):
    benchmark.pedantic(built_and_released, args=(ops.perturbation_curve, *curve_args), rounds=20, iterations=1,
                       warmup_rounds=2)
    start, counts = curve_args[0], curve_args[3]
    output_bytes = start.numel() * counts.numel() * start.element_size()
    benchmark.extra_info.update(device=start.device.type, output_mb=output_bytes / 2**20)


@pytest.mark.benchmark(group="perturbation_curve")
def test_scatter_per_step_loop(benchmark, curve_args):
    benchmark.pedantic(built_and_released, args=(scatter_loop_curve, *curve_args), rounds=20, iterations=1,
                       warmup_rounds=2)
    assert torch.equal(scatter_loop_curve(*curve_args), ops.perturbation_curve(*curve_args))
    benchmark.extra_info.update(device=curve_args[0].device.type)
