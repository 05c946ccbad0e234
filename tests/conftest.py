import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path


def _prefer_installed_package() -> None:
    """Test the installed saliency_fast when the source tree beside these tests is not built.

    pytest puts the repository root on sys.path (tests/ is a package), so ``import saliency_fast``
    would find the source tree, which after a non-editable ``pip install .`` has no compiled
    ``_C`` ("cannot import name '_C'"). Then the installed copy is imported instead. A built source
    tree (``make test``, editable installs) is tested as it is; SALIENCY_FAST_TEST_INSTALLED=1
    forces the installed copy, SALIENCY_FAST_TEST_SOURCE=1 the source tree.
    """
    source = Path(__file__).resolve().parent.parent / "saliency_fast"
    if os.environ.get("SALIENCY_FAST_TEST_SOURCE") == "1" or "saliency_fast" in sys.modules:
        return
    try:
        installed = Path(importlib.metadata.distribution("saliency_fast").locate_file("saliency_fast/__init__.py"))
    except importlib.metadata.PackageNotFoundError:
        return
    if not installed.is_file() or installed.resolve().parent == source.resolve():
        return  # an editable install: the source tree is the installed package
    built_here = any(source.glob("_C*.so")) or any(source.glob("_C*.pyd"))
    if built_here and os.environ.get("SALIENCY_FAST_TEST_INSTALLED") != "1":
        return
    spec = importlib.util.spec_from_file_location("saliency_fast", installed,
                                                  submodule_search_locations=[str(installed.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["saliency_fast"] = module  # every later import of saliency_fast.* resolves in the installed copy
    spec.loader.exec_module(module)


_prefer_installed_package()

import pytest  # noqa: E402
import torch  # noqa: E402
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
