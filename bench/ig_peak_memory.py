"""Peak memory of IG vs Captum IG on 64 digits, each in a fresh process (so one run's allocator
caches do not hide the other's peak). Used by bench/test_bench_ig.py; also runs alone:

    PYTHONPATH=. .venv/bin/python bench/ig_peak_memory.py [n_steps]    # one line per implementation
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

IMPLEMENTATIONS = ("saliency_fast", "captum", "captum, our pass size")


def ig_call(which: str, model, n_steps: int):
    """The IG call being compared: Gauss–Legendre, ``n_steps`` points, on (images, target)."""
    if which == "saliency_fast":
        import saliency_fast as sf

        method = sf.IntegratedGradients(model, n_steps=n_steps, method="gausslegendre")
        return lambda images, target: method.attribute(images, target)
    from captum.attr import IntegratedGradients

    method = IntegratedGradients(model)
    if which == "captum":  # its default: all n_steps × B path points in one pass
        return lambda images, target: method.attribute(images, target=target, n_steps=n_steps, method="gausslegendre")

    def with_our_passes(images, target):  # "captum, our pass size": as many images a pass as ours
        return method.attribute(images, target=target, n_steps=n_steps, method="gausslegendre",
                                internal_batch_size=our_images_per_pass(images, n_steps))
    return with_our_passes


def our_images_per_pass(images, n_steps: int) -> int:
    """The images our IG puts in one forward/backward pass by default (Captum's
    ``internal_batch_size`` for the same passes)."""
    from saliency_fast.methods.gradients import repeats_per_pass

    return repeats_per_pass(None, images, n_steps) * images.shape[0]


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux carries that
    across fork and exec, so a child of a large process would report its parent's peak."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024  # kB


def measure_here(which: str, n_steps: int) -> float:
    """Growth of this process's peak RSS (MB) over one IG call on 64 digits."""
    sys.path.insert(0, ROOT)
    from bench.digits import digits_work

    model, images, target = digits_work()
    call = ig_call(which, model, n_steps)
    before = peak_rss_mb()
    call(images, target)
    return peak_rss_mb() - before


def peak_rss_growth_mb(which: str, n_steps: int) -> float:
    """measure_here in a fresh Python process."""
    done = subprocess.run([sys.executable, __file__, which, str(n_steps)], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_growth_mb"]


if __name__ == "__main__":
    if len(sys.argv) == 3:
        print(json.dumps({"peak_rss_growth_mb": measure_here(sys.argv[1], int(sys.argv[2]))}))
    else:
        steps = int(sys.argv[1]) if len(sys.argv) > 1 else 200
        for name in IMPLEMENTATIONS:
            print(f"{name}: peak RSS growth {peak_rss_growth_mb(name, steps):.0f} MB at n_steps = {steps}")
