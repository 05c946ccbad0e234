"""SAMP++ on 64 digits with glibc's malloc as it is and after sf.tune_cpu_allocator(), each in a
fresh process (malloc settings are process-wide). Used by write_benchmarks.py; also runs alone:

    PYTHONPATH=. .venv/bin/python bench/allocator_effect.py
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("default", "tuned")
CALLS = 3
RATIO_CALLS = 7  # the call-by-call ratio's spread is wider than the call time's


def measure_here(mode: str) -> dict:
    import saliency_fast as sf

    sys.path.insert(0, ROOT)
    from bench.digits import digits_work

    if mode == "tuned" and not sf.tune_cpu_allocator():
        return {"applied": False}
    model, images, target = digits_work()
    method = sf.SAMP.plus(model)
    method.attribute(images, target)  # warm-up
    seconds, faults = [], []
    for _ in range(CALLS):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        method.attribute(images, target)
        seconds.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    ratios = call_by_call_ratios(model, images, target)
    return {"applied": True, "seconds": statistics.median(seconds), "minor_faults": statistics.median(faults),
            "ratio_to_bound": statistics.median(ratios), "ratio_range": [ratios[0], ratios[-1]]}


def call_by_call_ratios(model, images, target) -> list:
    """RATIO_CALLS runs of SAMP++ time / model-only lower bound time, call by call
    (bench/interleaved.py), in this process's malloc setting; sorted."""
    import saliency_fast as sf

    from bench.interleaved import call_by_call_ratio, with_input_gradient_bound

    wrapped = with_input_gradient_bound(model, target)
    samp_plus = lambda m: sf.SAMP.plus(m).attribute(images, target)
    return sorted(call_by_call_ratio(samp_plus, wrapped) for _ in range(RATIO_CALLS))


def measure(mode: str) -> dict:
    """measure_here in a fresh Python process."""
    done = subprocess.run([sys.executable, __file__, mode], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    if len(sys.argv) == 2:
        print(json.dumps(measure_here(sys.argv[1])))
    else:
        for name in MODES:
            print(name, measure(name))
