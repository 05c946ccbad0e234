"""Integrated Gradients vs Captum's at equal n_steps (pytest-benchmark): time, and the growth of
peak memory over one call measured in a fresh process each (bench/ig_peak_memory.py).

    .venv/bin/python -m pytest bench/test_bench_ig.py --benchmark-only

64 digits of 1×32×32, the DigitsCNN, Gauss–Legendre points; Captum IG is the baseline row, so
the ratio column is our time over Captum's. Our IG streams the path points in passes of 2^17
input elements on CPU (128 digits: memory bounded whatever n_steps, activations in cache);
Captum by default expands all n_steps × 64 images into one batch. "captum, our pass size" is
Captum given ``internal_batch_size`` = our images per pass, to show what the pass size alone is
worth. The time ratio at n_steps = 200 is also measured in interleaved pairs.
"""

import pytest

from .digits import digits_work
from .ig_peak_memory import IMPLEMENTATIONS, ig_call, peak_rss_growth_mb
from .interleaved import interleaved_ratios, record_ratios

captum = pytest.importorskip("captum")

N_STEPS = (50, 200)
ROUNDS = 3


@pytest.fixture(scope="module", name="digits_work")
def digits_work_fixture():
    return digits_work()


@pytest.mark.parametrize("which", IMPLEMENTATIONS)
@pytest.mark.parametrize("n_steps", N_STEPS)
def test_ig_vs_captum(benchmark, digits_work, n_steps, which):
    benchmark.group = f"IG vs Captum IG, n_steps = {n_steps}: 64 digits, DigitsCNN"
    benchmark.extra_info["baseline"] = which == "captum"
    model, images, target = digits_work
    benchmark.pedantic(ig_call(which, model, n_steps), args=(images, target), rounds=ROUNDS, iterations=1,
                       warmup_rounds=1)
    benchmark.extra_info[f"peak_rss_growth_mb[{which}]"] = round(peak_rss_growth_mb(which, n_steps))


@pytest.mark.parametrize("captum_variant", ["captum", "captum, our pass size"])
def test_ig_vs_captum_interleaved(benchmark, digits_work, captum_variant):
    """Ours and Captum's IG at n_steps = 200 back to back in pairs (bench/interleaved.py), so
    that load drift on a shared machine cancels; extra_info holds the median and spread of our
    time / Captum's."""
    benchmark.group = f"IG / Captum IG ({captum_variant}), interleaved pairs, n_steps = 200: 64 digits, DigitsCNN"
    model, images, target = digits_work
    ours, theirs = (ig_call(which, model, 200) for which in ("saliency_fast", captum_variant))
    ratios = interleaved_ratios(benchmark, lambda: ours(images, target), lambda: theirs(images, target), rounds=5)
    record_ratios(benchmark, "ours / Captum", ratios)
