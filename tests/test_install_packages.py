"""Installs like users do, into fresh virtual environments: the sdist with pip's default build
isolation (torch already installed), the wheel of `make wheel` into an environment without torch,
and the sdist on a machine without a C++ compiler. Minutes each (a compile, a torch install):
they run only with SALIENCY_FAST_INSTALL_CHECK=1, which `make install-check` (and CI) sets."""
import glob
import os
import re
import subprocess
import sys
import tarfile
import zipfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("SALIENCY_FAST_INSTALL_CHECK") != "1",
                       reason="installs into fresh venvs (minutes): run `make install-check`"),
]

TORCH_RELEASE = torch.__version__.split("+")[0]

# The smoke test run inside each fresh environment: an op through torch.ops against its float64
# reference, SAMP++ on 4 digits, and what the package says about its build.
SMOKE = """
import sys, warnings
warnings.simplefilter("always")
import torch, saliency_fast as sf
from saliency_fast import _reference, ops
expect_native = sys.argv[1] == "native"
with warnings.catch_warnings(record=True) as caught:
    images, labels = sf.data.load_digits("test")
    maps = sf.SAMP.plus(sf.models.digits_cnn()).attribute(images[:4])
assert maps.shape == (4, 32, 32) and torch.isfinite(maps).all(), maps.shape
assert sf.native_available() is expect_native, sf.build_info()
fallback = [w for w in caught if "compiled ops are not available" in str(w.message)]
assert len(fallback) == (0 if expect_native else 1), [str(w.message) for w in caught]
info = sf.build_info()
if expect_native:
    assert info["torch"] == torch.__version__, info
    x = torch.rand(2, 3, 5, 5, dtype=torch.float64)
    mask = torch.rand(2, 5, 5) > 0.5
    noise = torch.rand_like(x)
    native = torch.ops.saliency_fast.masked_random_fill(x, mask, noise)
    torch.testing.assert_close(native, _reference.masked_random_fill(x, mask, noise), rtol=0, atol=1e-12)
else:
    print("WARNING SHOWN:", fallback[0].message)
print("SMOKE OK", info.get("torch"), info["backends"])
"""


def run(command, **env):
    environment = {**os.environ, **env}
    for name in ("PYTHONPATH", "SALIENCY_FAST_REQUIRE_NATIVE", "VIRTUAL_ENV"):
        environment.pop(name, None)
    result = subprocess.run(command, capture_output=True, text=True, env=environment, cwd="/tmp")
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def fresh_venv(path, with_torch):
    run([sys._base_executable, "-m", "venv", str(path)])
    python = str(path / "bin" / "python")
    if with_torch:
        run([python, "-m", "pip", "install", "-q", f"torch=={TORCH_RELEASE}"])
    return python


def smoke(python, expect):
    out = run([python, "-c", SMOKE, expect])
    assert "SMOKE OK" in out
    return out


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdist")
    build = f"import sys; sys.path.insert(0, '_build'); import backend; print(backend.build_sdist({str(folder)!r}))"
    subprocess.run([sys.executable, "-c", build], cwd=ROOT, check=True, capture_output=True)
    (path,) = glob.glob(str(folder / "saliency_fast-*.tar.gz"))
    return path


def tracked(*folders):
    files = subprocess.run(["git", "ls-files", *folders], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(files.split())


def test_sdist_carries_every_source_header_and_shipped_file(sdist):
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    needed = tracked("csrc", "_build", "saliency_fast", "tests") | {"setup.py", "pyproject.toml", "CMakeLists.txt", "README.md"}
    assert needed <= names, sorted(needed - names)
    assert not [n for n in names if n.endswith(".so") or n.endswith("_native_build.json")]


def test_sdist_installs_with_default_build_isolation_and_runs_natively(sdist, tmp_path):
    python = fresh_venv(tmp_path / "venv", with_torch=True)
    run([python, "-m", "pip", "install", "--no-cache-dir", sdist])
    smoke(python, "native")
    # no build-only package came along, and torch stayed the one that was installed
    listed = run([python, "-m", "pip", "list", "--format=freeze"]).lower()
    assert "pybind11" not in listed and "ninja" not in listed and f"torch=={torch.__version__}" in listed


def test_the_wheel_of_make_wheel_installs_into_a_venv_without_torch(tmp_path):
    run(["make", "-C", ROOT, "wheel", f"WHEEL_DIR={tmp_path}"])
    (wheel,) = glob.glob(str(tmp_path / "saliency_fast-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        requires = [line for line in archive.read(next(n for n in names if n.endswith("METADATA"))).decode().splitlines()
                    if re.match(r"Requires-Dist: torch(?![\w-])", line)]  # torch itself, not torchcam / torchvision
    assert any(n.startswith("saliency_fast/_C") and n.endswith(".so") for n in names)
    assert {"saliency_fast/_native_build.json", "saliency_fast/weights/digits_cnn.pt", "saliency_fast/weights/mnist_cnn.pt",
            "saliency_fast/data/digits.npz"} <= names
    assert requires == [f"Requires-Dist: torch=={TORCH_RELEASE}"], requires
    python = fresh_venv(tmp_path / "venv", with_torch=False)
    run([python, "-m", "pip", "install", wheel])
    smoke(python, "native")


def test_without_a_compiler_the_sdist_installs_the_pure_pytorch_package(sdist, tmp_path):
    python = fresh_venv(tmp_path / "venv", with_torch=True)
    run([python, "-m", "pip", "install", "--no-cache-dir", sdist], CXX="no-such-c++-compiler")
    out = smoke(python, "pure")
    assert "no C++ compiler found" in out and "--force-reinstall" in out
