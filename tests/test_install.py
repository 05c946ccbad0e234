"""The install logic, fast: which build is planned on which machine (compiler, CUDA toolkit,
GPUs), and which binary the package agrees to load for which torch. The slow end-to-end installs
into fresh virtual environments are tests/test_install_packages.py (`make install-check`)."""
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "_build"))
import build_plan  # noqa: E402

from saliency_fast import _native  # noqa: E402

CUDA_TORCH = "13.0"


def toolkit(version="13.0", root="/opt/cuda"):
    return build_plan.CudaToolkit(root=root, version=version)


# --- the CUDA decision -------------------------------------------------------------------------

def test_cpu_torch_builds_the_cpu_ops_without_a_message():
    plan = build_plan.plan_cuda({}, None, toolkit(), [(9, 0)])
    assert (plan.native, plan.cuda, plan.messages) == (True, False, [])


def test_cuda_torch_with_matching_toolkit_and_gpu_builds_cuda_for_the_visible_archs():
    plan = build_plan.plan_cuda({}, CUDA_TORCH, toolkit(), [(9, 0), (8, 0), (9, 0)])
    assert plan.cuda and plan.arch_list == "8.0;9.0+PTX" and plan.cuda_home == "/opt/cuda"


def test_explicit_arch_list_wins_over_the_visible_gpus():
    plan = build_plan.plan_cuda({"TORCH_CUDA_ARCH_LIST": "9.0"}, CUDA_TORCH, toolkit(), [(8, 0)])
    assert plan.cuda and plan.arch_list == "9.0"


def test_no_gpu_and_no_arch_list_falls_back_to_cpu_and_says_how():
    # the case that used to die with an IndexError inside torch's _get_cuda_arch_flags
    plan = build_plan.plan_cuda({}, CUDA_TORCH, toolkit(), [])
    assert plan.native and not plan.cuda
    assert "TORCH_CUDA_ARCH_LIST" in plan.messages[0] and "no GPU is visible" in plan.messages[0]
    assert build_plan.plan_cuda({"TORCH_CUDA_ARCH_LIST": "native"}, CUDA_TORCH, toolkit(), []).cuda is False


def test_missing_or_mismatched_toolkit_falls_back_to_cpu_with_the_reason():
    missing = build_plan.plan_cuda({}, CUDA_TORCH, None, [(9, 0)])
    assert not missing.cuda and "no CUDA toolkit was found" in missing.messages[0] and "CUDA_HOME" in missing.messages[0]
    older = build_plan.plan_cuda({}, CUDA_TORCH, toolkit("12.8"), [(9, 0)])
    assert not older.cuda and "CUDA 12.8" in older.messages[0] and "CUDA 13.0" in older.messages[0]


def test_force_cuda_turns_every_fallback_into_an_error_and_no_cuda_wins():
    with pytest.raises(build_plan.BuildPlanError, match="TORCH_CUDA_ARCH_LIST"):
        build_plan.plan_cuda({"FORCE_CUDA": "1"}, CUDA_TORCH, toolkit(), [])
    with pytest.raises(build_plan.BuildPlanError, match="CPU build"):
        build_plan.plan_cuda({"FORCE_CUDA": "1"}, None, toolkit(), [(9, 0)])
    assert build_plan.plan_cuda({"FORCE_CUDA": "1", "TORCH_CUDA_ARCH_LIST": "9.0"}, CUDA_TORCH, toolkit(), []).cuda
    assert not build_plan.plan_cuda({"SALIENCY_FAST_NO_CUDA": "1"}, CUDA_TORCH, toolkit(), [(9, 0)]).cuda


def fake_nvcc(root, release, with_headers=True):
    os.makedirs(os.path.join(root, "bin"))
    nvcc = os.path.join(root, "bin", "nvcc")
    with open(nvcc, "w") as f:
        f.write(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n")
    os.chmod(nvcc, os.stat(nvcc).st_mode | stat.S_IEXEC)
    if with_headers:
        os.makedirs(os.path.join(root, "include"))
        open(os.path.join(root, "include", "cuda.h"), "w").close()
    return str(root)


def test_toolkit_search_skips_a_wrapper_and_prefers_torchs_cuda_major(tmp_path):
    wrapper = fake_nvcc(tmp_path / "usr_local", "13.0", with_headers=False)  # like /usr/local/bin/nvcc
    cuda12 = fake_nvcc(tmp_path / "cuda-12.8", "12.8")
    cuda13 = fake_nvcc(tmp_path / "cuda-13.0", "13.0")
    assert build_plan.find_cuda_toolkit([wrapper, cuda12, cuda13], "13.0") == build_plan.CudaToolkit(cuda13, "13.0")
    # no match: the first real one, whose mismatch plan_cuda reports
    assert build_plan.find_cuda_toolkit([wrapper, cuda12], "13.0").version == "12.8"
    assert build_plan.find_cuda_toolkit([wrapper], "13.0") is None


def test_explicit_cuda_home_is_the_only_candidate_and_path_is_resolved(tmp_path):
    assert build_plan.toolkit_candidates({"CUDA_HOME": "/somewhere"}) == ["/somewhere"]
    real = fake_nvcc(tmp_path / "cuda-13.0", "13.0")
    links = tmp_path / "links"
    links.mkdir()
    os.symlink(os.path.join(real, "bin", "nvcc"), links / "nvcc")
    assert build_plan.toolkit_candidates({"PATH": str(links)})[0] == os.path.realpath(real)


# --- the compiler decision ---------------------------------------------------------------------

def test_a_missing_or_broken_compiler_means_a_pure_pytorch_install_with_instructions():
    assert "not on PATH" in build_plan.probe_cxx("no-such-compiler-x", "-std=c++17")
    assert "cannot build" in build_plan.probe_cxx("false", "-std=c++17")
    plan = build_plan.plan_native({}, "no C++ compiler found (`c++` is not on PATH)")
    assert not plan.native and "not on PATH" in plan.messages[0] and "--force-reinstall" in plan.messages[0]
    assert not build_plan.plan_native({"SALIENCY_FAST_NO_NATIVE": "1"}, None).native
    assert build_plan.plan_native({}, None) is None


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler here")
def test_the_probe_accepts_a_working_compiler():
    assert build_plan.probe_cxx("c++", "-std=c++17") is None
    assert build_plan.cxx_compiler({"CXX": "clang++"}) == "clang++" and build_plan.cxx_compiler({}) == "c++"


# --- which binary is loaded --------------------------------------------------------------------

RUNNING = {"torch": "2.13.0+cpu", "torch_git": "cf30153c4c", "torch_cuda": None}


def record(**changes):
    base = {"native": True, "torch": "2.13.0+cpu", "torch_git": "cf30153c4c", "torch_cuda": None, "cuda": None}
    return {**base, **changes}


def test_a_binary_for_another_torch_is_refused_before_loading():
    assert _native.torch_mismatch(record(), RUNNING) is None
    assert "built for torch 2.14.1 and this is torch 2.13.0+cpu" in _native.torch_mismatch(record(torch="2.14.1"), RUNNING)
    assert "another build of torch" in _native.torch_mismatch(record(torch_git="0123456789ab"), RUNNING)
    assert "CPU build" in _native.torch_mismatch(record(cuda="13.0", torch_cuda="13.0"), RUNNING)


def test_load_problem_names_each_case():
    binary = "/pkg/_C.so"
    assert _native.load_problem(record(), binary, RUNNING) is None
    assert "not built" in _native.load_problem(None, None, RUNNING)
    assert "no build record" in _native.load_problem(None, binary, RUNNING)
    pure = _native.load_problem(record(native=False, notes=["no C++ compiler found"]), None, RUNNING)
    assert "installed without them: no C++ compiler found" in pure
    assert "torch 2.14.1" in _native.load_problem(record(torch="2.14.1"), binary, RUNNING)


def test_fallback_message_says_what_to_do():
    in_tree = _native.fallback_message("the extension (saliency_fast._C) is not built", source_checkout=True)
    assert "pip install --no-build-isolation -e" in in_tree and "circular" not in in_tree
    installed = _native.fallback_message("the extension is not loaded because x", source_checkout=False)
    assert "--force-reinstall" in installed and "pure-PyTorch" in installed


def run_python(code, package_parent, **env):
    environment = {**os.environ, "PYTHONPATH": str(package_parent), **env}
    environment.pop("SALIENCY_FAST_REQUIRE_NATIVE", None)
    environment.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, cwd=package_parent)


def copy_package(tmp_path, with_binary):
    ignore = shutil.ignore_patterns("__pycache__", "_C*.so", "_native_build.json")
    shutil.copytree(os.path.join(ROOT, "saliency_fast"), tmp_path / "saliency_fast", ignore=ignore)
    if with_binary:
        for name in os.listdir(os.path.join(ROOT, "saliency_fast")):
            if name.startswith("_C") and name.endswith(".so"):
                shutil.copy(os.path.join(ROOT, "saliency_fast", name), tmp_path / "saliency_fast")
    return tmp_path


PROBE = """
import sys, warnings, torch
import saliency_fast as sf
print("native", sf.native_available(), "loaded", "saliency_fast._C" in sys.modules)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    from saliency_fast import ops
    ops.use_native(x); ops.use_native(x)
print("warnings", len(caught))
for w in caught:
    print("message", w.message)
"""


@pytest.mark.skipif(_native.binary_path() is None, reason="the extension is not built in this tree")
def test_a_binary_built_for_another_torch_is_not_loaded_and_one_warning_says_why(tmp_path):
    parent = copy_package(tmp_path, with_binary=True)
    with open(os.path.join(ROOT, "saliency_fast", "_native_build.json")) as f:
        stale = json.load(f)
    stale["torch"] = "2.12.0+cpu"
    with open(parent / "saliency_fast" / "_native_build.json", "w") as f:
        json.dump(stale, f)
    out = run_python(PROBE, parent)
    assert out.returncode == 0, out.stderr
    assert "native False loaded False" in out.stdout
    assert "warnings 1" in out.stdout and "built for torch 2.12.0+cpu and this is torch" in out.stdout
    required = run_python("import saliency_fast", parent, SALIENCY_FAST_REQUIRE_NATIVE="1")
    assert required.returncode != 0 and "built for torch 2.12.0+cpu" in required.stderr


def test_an_unbuilt_tree_says_the_extension_is_not_built(tmp_path):
    parent = copy_package(tmp_path, with_binary=False)
    out = run_python(PROBE, parent)
    assert out.returncode == 0, out.stderr
    assert "native False loaded False" in out.stdout and "warnings 1" in out.stdout
    assert "not built" in out.stdout and "circular import" not in out.stdout + out.stderr


def test_version_prints_a_readable_multi_line_summary(capsys):
    from saliency_fast.cli import main

    assert main(["--version"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("saliency_fast ") and lines[1].startswith("compiled ops: ")
    assert any(line.startswith(f"running: torch {torch.__version__}") for line in lines)
    assert not any("\\n" in line for line in lines)
    if _native.native_available():
        assert f"built against: torch {torch.__version__}" in "\n".join(lines)
        assert _native.build_info()["torch"] == torch.__version__


# --- the build backend -------------------------------------------------------------------------

def test_backend_builds_against_the_target_environments_torch(tmp_path, monkeypatch):
    import backend

    empty, target = tmp_path / "build-env", tmp_path / "target"
    empty.mkdir()
    (target / "torch").mkdir(parents=True)
    (target / "torch-2.13.0+cpu.dist-info").mkdir()
    monkeypatch.setattr(backend, "target_site_dirs", lambda: [str(empty), str(target)])
    assert backend.installed_torch_dir() == str(target)
    # torch visible (the target's, or --no-build-isolation): not requested again; else requested
    monkeypatch.setattr(backend, "_importable", lambda name: True)
    assert "torch" not in backend._with_torch(["setuptools"]) and "ninja" in backend._with_torch([])
    monkeypatch.setattr(backend, "_importable", lambda name: False)
    assert {"torch", "ninja"} <= set(backend._with_torch(["setuptools"]))
    monkeypatch.setattr(backend, "target_site_dirs", lambda: [str(empty)])
    assert backend.installed_torch_dir() is None
