import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

# CUDA tests (tests/test_cuda_*.py): parametrise devices with DEVICES, whose "cpu" case runs the
# same comparison CPU against CPU (the test's logic is exercised on machines without a GPU) and
# whose "cuda" case carries the `cuda` marker and skips without a GPU. `pytest -m cuda tests`
# (scripts/gpu_check.py) selects every CUDA test: the hook below also marks the older tests that
# have "cuda" in their name or parameters.
CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, requires_cuda], id="cuda")
DEVICES = ["cpu", CUDA]
requires_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


def pytest_collection_modifyitems(items):
    for item in items:
        if "cuda" in item.nodeid.lower() and "test_gpu_check" not in item.nodeid:
            item.add_marker(pytest.mark.cuda)
