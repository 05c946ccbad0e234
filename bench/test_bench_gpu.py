"""The GPU benchmarks of bench/gpu_bench.py under pytest-benchmark (skipped without CUDA): one
timed run of every measurement; the ratios and targets go to extra_info. `make gpu-check` runs
the same code directly and writes BENCHMARKS.md's GPU section."""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_gpu_benchmarks(benchmark):
    from .gpu_bench import run_all

    benchmark.group = "GPU: bench/gpu_bench.py (ratios and targets in the notes)"
    report = benchmark.pedantic(lambda: run_all("cuda"), rounds=1, iterations=1)
    if report is None:  # --benchmark-disable returns nothing from pedantic in old versions
        return
    for result in report["results"]:
        value = result.get("ratio", result.get("value"))
        benchmark.extra_info[result["name"]] = f"{value} (target {result.get('target')})"
    assert not report["errors"], report["errors"]
