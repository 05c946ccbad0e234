"""Dataset-scale attribution benchmarks (pytest-benchmark). All suites + BENCHMARKS.md: `make bench`;
this file alone:

    .venv/bin/python -m pytest bench/test_bench_dataset.py --benchmark-only

The shipped DigitsCNN on test digits (1×32×32), predicted class, batches of 64. Every
``sf.attribute_dataset`` round writes its shards (and manifest) to a fresh folder, so file writing
and fingerprinting are inside the timing. ``images_per_s`` in the notes is images / median.

Groups (ratio = median / the baseline row's median; below 1 is faster):
- ``dataset IG``: ``attribute_dataset(..., "ig")`` (Gauss–Legendre, 50 steps) vs a plain Python
  loop calling Captum's IntegratedGradients per batch on the same images (baseline; the same
  quadrature, and ``internal_batch_size`` set to our images per pass) vs the model-only lower
  bound (the same forward and forward+input-gradient calls on the same inputs, recorded, nothing else).
- ``dataset SAMP++``: ``attribute_dataset(..., "samp++")`` vs calling ``SAMP.plus`` per batch in
  a loop (baseline): the cost of the dataset machinery around the method.
- ``dataset processes``: the same IG job as a fresh process (2 threads) vs ``torchrun
  --nproc_per_node 2`` (gloo, one thread each) vs ``torchrun --nproc_per_node 1`` (one thread); the
  wall time includes starting Python and importing torch in each process (``call_s`` in the notes
  is the time inside ``attribute_dataset`` alone, as rank 0 measured it).
"""
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

import saliency_fast as sf
from saliency_fast._common import attribution_mode, input_gradient
from saliency_fast.data import load_digits
from saliency_fast.dataset import attribute_dataset
from saliency_fast.models import digits_cnn

from .ig_peak_memory import our_images_per_pass
from .interleaved import record_inputs

ROOT = Path(__file__).resolve().parents[1]
IG_IMAGES, SAMP_IMAGES, PROCESS_IMAGES = 256, 128, 512
BATCH, STEPS, ROUNDS = 64, 50, 3


def run(benchmark, function, *args, rounds=ROUNDS):
    return benchmark.pedantic(function, args=args, rounds=rounds, iterations=1, warmup_rounds=1)


def record_throughput(benchmark, implementation: str, images: int) -> None:
    """extra_info: images per second at the median round (no timing under --benchmark-disable)."""
    if benchmark.stats is not None:
        benchmark.extra_info[f"images_per_s[{implementation}]"] = round(images / benchmark.stats.stats.median, 1)


@pytest.fixture(scope="module")
def model():
    return digits_cnn()


@pytest.fixture(scope="module")
def images():
    return load_digits("all")[0][:PROCESS_IMAGES].contiguous()


def dataset_run(model, images, method, **options):
    with tempfile.TemporaryDirectory() as out:
        attribute_dataset(model, images, method, out, batch_size=BATCH, shard_size=1024, resume=False,
                          progress=False, method_options=options)


def captum_ig_loop(model, images):
    from captum.attr import IntegratedGradients

    ig, maps = IntegratedGradients(model), []
    for start in range(0, len(images), BATCH):
        x = images[start : start + BATCH]
        with torch.no_grad():
            target = model(x).argmax(1)
        maps.append(ig.attribute(x, target=target, n_steps=STEPS, method="gausslegendre",
                                 internal_batch_size=our_images_per_pass(x, STEPS)).sum(1).detach())
    return torch.cat(maps)


def ig_lower_bound(model, images, path_points):
    """What attribute_dataset's IG must at least do: per batch, a target forward; then the
    forward+input-gradient passes on the same path points as ours (recorded: DigitsCNN's time
    depends on its input's values, and the points near the zero baseline are mostly zeros)."""
    with attribution_mode(model):
        with torch.no_grad():
            for start in range(0, len(images), BATCH):
                model(images[start : start + BATCH]).argmax(1)
        for points in path_points:
            input_gradient(model, points, torch.zeros(len(points), dtype=torch.long))


@pytest.fixture(scope="module")
def ig_path_points(model, images):
    """The input of every forward+input-gradient pass our dataset IG makes."""
    return record_inputs(model, lambda: dataset_run(model, images[:IG_IMAGES], "ig", n_steps=STEPS), only_with_grad=True)


@pytest.mark.parametrize("implementation", ["sf.attribute_dataset ig", "captum IG loop", "model-only lower bound"])
def test_dataset_ig(benchmark, model, images, ig_path_points, implementation):
    benchmark.group = f"dataset IG: {IG_IMAGES} digits 1x32x32, {STEPS} steps, batch {BATCH}, DigitsCNN"
    benchmark.extra_info["baseline"] = implementation == "captum IG loop"
    x = images[:IG_IMAGES]
    function = {"sf.attribute_dataset ig": lambda: dataset_run(model, x, "ig", n_steps=STEPS),
                "captum IG loop": lambda: captum_ig_loop(model, x),
                "model-only lower bound": lambda: ig_lower_bound(model, x, ig_path_points)}[implementation]
    run(benchmark, function)
    record_throughput(benchmark, implementation, IG_IMAGES)


def samp_plus_loop(model, images):
    method, maps = sf.SAMP.plus(model), []
    for start in range(0, len(images), BATCH):
        x = images[start : start + BATCH]
        with torch.no_grad():
            target = model(x).argmax(1)
        maps.append(method.attribute(x, target))
    return torch.cat(maps)


@pytest.mark.parametrize("implementation", ["sf.attribute_dataset samp++", "SAMP.plus loop"])
def test_dataset_samp_plus(benchmark, model, images, implementation):
    benchmark.group = f"dataset SAMP++: {SAMP_IMAGES} digits 1x32x32, batch {BATCH}, DigitsCNN"
    benchmark.extra_info["baseline"] = implementation == "SAMP.plus loop"
    x = images[:SAMP_IMAGES]
    function = {"sf.attribute_dataset samp++": lambda: dataset_run(model, x, "samp++"),
                "SAMP.plus loop": lambda: samp_plus_loop(model, x)}[implementation]
    run(benchmark, function)
    record_throughput(benchmark, implementation, SAMP_IMAGES)


PROCESS_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    import torch
    from saliency_fast.dataset import attribute_dataset
    from saliency_fast.models import digits_cnn
    start = time.perf_counter()
    attribute_dataset(digits_cnn(), sys.argv[1], "ig", sys.argv[2], batch_size=64, shard_size=64,
                      resume=False, progress=False, method_options={"n_steps": 50})
    if int(os.environ.get("RANK", "0")) == 0:
        with open(sys.argv[3], "w") as handle:
            json.dump({"call_s": time.perf_counter() - start, "threads": torch.get_num_threads()}, handle)
""")


@pytest.fixture(scope="module")
def process_job(images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("processes")
    torch.save(images, folder / "data.pt")
    (folder / "job.py").write_text(PROCESS_SCRIPT)
    return folder


@pytest.mark.parametrize("processes", ["1 process (2 threads)", "torchrun 2 processes", "torchrun 1 process"])
def test_dataset_processes(benchmark, process_job, processes):
    benchmark.group = f"dataset processes: IG {STEPS} steps on {PROCESS_IMAGES} digits, shards of 64"
    benchmark.extra_info["baseline"] = processes.startswith("1 process")
    folder = process_job
    launcher = {"1 process (2 threads)": [],
                "torchrun 2 processes": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
                "torchrun 1 process": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]}[processes]
    command = [sys.executable, *launcher, str(folder / "job.py"), str(folder / "data.pt"), str(folder / "out"),
               str(folder / "timing.json")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    calls = []

    def job():
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{processes} exited with {done.returncode}:\n{done.stderr[-3000:]}")
        calls.append(json.loads((folder / "timing.json").read_text())["call_s"])

    run(benchmark, job)
    calls.sort()
    benchmark.extra_info[f"call_s[{processes}]"] = round(calls[len(calls) // 2], 2)
    benchmark.extra_info[f"images_per_s[{processes}]"] = round(PROCESS_IMAGES / calls[len(calls) // 2], 1)
