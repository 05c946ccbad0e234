"""IG vs Captum IG at n_steps = 200 on 64 digits: time and peak RSS growth, each in its own process.

    PYTHONPATH=. .venv/bin/python bench/ig_peak_memory.py          # runs both and prints a line each
"""
import resource
import subprocess
import sys
import time


def measure(which: str) -> str:
    import torch

    import saliency_fast as sf
    from saliency_fast.data import load_digits

    model = sf.models.digits_cnn()
    images = load_digits("test")[0][:64]
    target = model(images).argmax(1)
    torch.set_num_threads(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if which == "saliency_fast":
        sf.IntegratedGradients(model, n_steps=200, method="gausslegendre").attribute(images, target)
    else:
        from captum.attr import IntegratedGradients

        IntegratedGradients(model).attribute(images, target=target, n_steps=200, method="gausslegendre")
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return f"{which}: {time.perf_counter() - start:.2f} s, peak RSS growth {grown:.0f} MB"


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(measure(sys.argv[1]))
    else:
        for which in ("saliency_fast", "captum"):
            subprocess.run([sys.executable, __file__, which], check=True)
