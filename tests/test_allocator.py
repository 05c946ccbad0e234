"""tune_cpu_allocator: after it, a model's forward + backward no longer faults in fresh pages
for its activations; the CLI applies it unless --default-malloc. Each fault count runs in its
own process, since malloc settings are process-wide."""
import argparse
import platform
import subprocess
import sys

import pytest

FAULTS_SCRIPT = """
import ctypes, resource, sys, torch
import saliency_fast as sf
from saliency_fast import allocator
from saliency_fast._common import attribution_mode, input_gradient
# Pin glibc's static defaults first. Left alone, glibc raises its mmap threshold as large
# blocks are freed, so how often it faults depends on the process's history (2886 faults a
# call here, 806 on the CI machine); pinned, every large block is a fresh mmap.
mallopt = ctypes.CDLL("libc.so.6").mallopt
assert mallopt(allocator.M_MMAP_THRESHOLD, 128 << 10) == 1
assert mallopt(allocator.M_TRIM_THRESHOLD, 128 << 10) == 1
if sys.argv[1] == "tuned":
    assert sf.tune_cpu_allocator()
model = sf.models.digits_cnn()
images = torch.rand(64, 1, 32, 32)
target = torch.zeros(64, dtype=torch.long)
with attribution_mode(model):
    for _ in range(3):  # warm up: the heap reaches its size
        input_gradient(model, images, target)
    faults = []
    for _ in range(11):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        input_gradient(model, images, target)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sorted(faults)[5])  # the median: a call where the heap grows once is not the rule
"""


def minor_faults_per_call(mode: str) -> float:
    """Median minor page faults of a forward + input-gradient call of the digits CNN on 64 images."""
    done = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], check=True, capture_output=True, text=True)
    return float(done.stdout.split()[-1])


def test_tuned_malloc_stops_faulting_in_fresh_pages():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt's settings are glibc's")
    default, tuned = minor_faults_per_call("default"), minor_faults_per_call("tuned")
    activation_pages = 64 * 32 * 32 * 32 * 4 // 4096  # one (64, 32, 32, 32) float32 activation
    assert default >= activation_pages / 2  # glibc's static defaults: fresh pages every call
    assert tuned < activation_pages / 10  # the freed activations are reused


@pytest.mark.parametrize("flags, tuned", [([], True), (["--default-malloc"], False)])
def test_cli_tunes_malloc_unless_told_not_to(monkeypatch, flags, tuned):
    from saliency_fast import allocator, cli

    real_parser = cli.build_parser

    def parser_with_noop():  # a subcommand that does nothing, so only the set-up runs
        parser = real_parser()
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        subparsers.add_parser("noop").set_defaults(func=lambda args: 0)
        return parser

    calls = []
    monkeypatch.setattr(cli, "build_parser", parser_with_noop)
    monkeypatch.setattr(allocator, "tune_cpu_allocator", lambda: calls.append(True) or True)
    assert cli.main([*flags, "noop"]) == 0
    assert calls == ([True] if tuned else [])
