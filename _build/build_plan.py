"""What the build of saliency_fast._C can and will do on this machine, decided before any compiler
runs, so that an impossible build turns into a clear message instead of a traceback from inside
torch's build helpers.

Used by setup.py (the decisions) and tests/test_install.py (the same decisions on made-up
machines). Nothing here imports torch: the facts about torch are passed in.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

# How a user turns the CUDA build on or off (the names predate this module; keep them).
NO_CUDA_VAR = "SALIENCY_FAST_NO_CUDA"
FORCE_CUDA_VAR = "FORCE_CUDA"
NO_NATIVE_VAR = "SALIENCY_FAST_NO_NATIVE"

# A C++ file that needs what the extension needs from the compiler: the language level torch's
# headers use and OpenMP.
PROBE_SOURCE = """
#include <omp.h>
#include <optional>
int main() { std::optional<int> x = omp_get_max_threads(); return *x > 0 ? 0 : 1; }
"""


@dataclass
class CudaToolkit:
    root: str
    version: str  # "13.0"


@dataclass
class BuildPlan:
    native: bool
    cuda: bool = False
    arch_list: str | None = None
    cuda_home: str | None = None
    messages: list[str] = field(default_factory=list)


class BuildPlanError(Exception):
    """The user asked for something that cannot be built (e.g. FORCE_CUDA=1 without a toolkit)."""


def major(version: str | None) -> str | None:
    return None if version is None else version.split(".")[0]


def cxx_compiler(env: dict) -> str:
    """The compiler torch's build helpers will call: $CXX, else `c++`."""
    return env.get("CXX") or "c++"


def probe_cxx(compiler: str, std_flag: str) -> str | None:
    """None when `compiler` builds a C++ program with `std_flag` and OpenMP, else why not."""
    executable = shutil.which(compiler.split()[0])
    if executable is None:
        return f"no C++ compiler found (`{compiler}` is not on PATH)"
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "probe.cpp")
        with open(source, "w") as f:
            f.write(PROBE_SOURCE)
        command = compiler.split() + [std_flag, "-fopenmp", source, "-o", os.path.join(tmp, "probe")]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"`{compiler}` could not be run ({error})"
    if result.returncode != 0:
        first_error = next((line for line in result.stderr.splitlines() if "error" in line), result.stderr.strip())
        return f"`{compiler}` cannot build C++ with {std_flag} and OpenMP ({first_error.strip()[:200]})"
    return None


def nvcc_version(nvcc: str) -> str | None:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


def is_toolkit_root(root: str) -> bool:
    """A real toolkit has nvcc and the CUDA headers; the parent of a wrapper script (e.g.
    /usr/local for /usr/local/bin/nvcc) has only the first."""
    return os.path.isfile(os.path.join(root, "bin", "nvcc")) and os.path.isfile(os.path.join(root, "include", "cuda.h"))


def toolkit_candidates(env: dict) -> list[str]:
    """Where a CUDA toolkit may live, most specific first. An explicit CUDA_HOME/CUDA_PATH is the
    only candidate: the user's choice is never second-guessed."""
    explicit = env.get("CUDA_HOME") or env.get("CUDA_PATH")
    if explicit:
        return [explicit]
    candidates = []
    nvcc = shutil.which("nvcc", path=env.get("PATH"))
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    unique = []
    for root in candidates:
        real = os.path.realpath(root)
        if real not in unique:
            unique.append(real)
    return unique


def find_cuda_toolkit(candidates: list[str], torch_cuda: str | None) -> CudaToolkit | None:
    """The toolkit to build with among `candidates` (see toolkit_candidates): the first real one
    whose major version matches torch's CUDA, else the first real one (whose mismatch plan_cuda
    then reports)."""
    found = []
    for root in candidates:
        if is_toolkit_root(root):
            version = nvcc_version(os.path.join(root, "bin", "nvcc"))
            if version is not None:
                found.append(CudaToolkit(root, version))
    for toolkit in found:
        if major(toolkit.version) == major(torch_cuda):
            return toolkit
    return found[0] if found else None


def arch_list_for(env: dict, gpu_capabilities: list[tuple[int, int]]) -> str | None:
    """TORCH_CUDA_ARCH_LIST when set (and not "native"), else the visible GPUs' compute
    capabilities (the newest with +PTX), else None: nothing says which GPUs to build for."""
    explicit = env.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if explicit and explicit != "native":
        return explicit
    archs = sorted({f"{cap[0]}.{cap[1]}" for cap in gpu_capabilities}, key=lambda a: tuple(map(int, a.split("."))))
    if not archs:
        return None
    archs[-1] += "+PTX"
    return ";".join(archs)


def plan_cuda(env: dict, torch_cuda: str | None, toolkit: CudaToolkit | None,
              gpu_capabilities: list[tuple[int, int]]) -> BuildPlan:
    """Whether to build the CUDA ops: only when torch is a CUDA build, a toolkit of the same CUDA
    major version is found and the GPU architectures are known. Otherwise the CPU ops, with a
    message saying what was missing (or, with FORCE_CUDA=1, an error)."""
    forced = env.get(FORCE_CUDA_VAR) == "1"
    if env.get(NO_CUDA_VAR) == "1":
        return BuildPlan(native=True, messages=[f"{NO_CUDA_VAR}=1: building the CPU ops only"])

    def cpu_only(why: str, how: str) -> BuildPlan:
        if forced:
            raise BuildPlanError(f"{FORCE_CUDA_VAR}=1 but {why}; {how}")
        return BuildPlan(native=True, messages=[f"building the CPU ops only: {why}; {how}"])

    if torch_cuda is None:
        if not forced:
            return BuildPlan(native=True)
        return cpu_only("the installed torch is a CPU build", "install a CUDA build of torch first")
    if toolkit is None:
        return cpu_only(f"torch is a CUDA {torch_cuda} build but no CUDA toolkit was found",
                        f"for the CUDA ops install the CUDA {major(torch_cuda)}.x toolkit and set CUDA_HOME to its root (the folder whose bin/ holds nvcc)")
    if major(toolkit.version) != major(torch_cuda):
        return cpu_only(f"the CUDA toolkit at {toolkit.root} is CUDA {toolkit.version} but torch was built with CUDA {torch_cuda}",
                        f"for the CUDA ops set CUDA_HOME to a CUDA {major(torch_cuda)}.x toolkit")
    arch_list = arch_list_for(env, gpu_capabilities)
    if arch_list is None:
        return cpu_only("no GPU is visible and TORCH_CUDA_ARCH_LIST is not set",
                        'for the CUDA ops set TORCH_CUDA_ARCH_LIST to your GPUs\' compute capabilities (e.g. TORCH_CUDA_ARCH_LIST="9.0" for an H100)')
    return BuildPlan(native=True, cuda=True, arch_list=arch_list, cuda_home=toolkit.root,
                     messages=[f"building the CPU and CUDA ops (CUDA {toolkit.version} at {toolkit.root}, archs {arch_list})"])


def plan_native(env: dict, compiler_problem: str | None) -> BuildPlan | None:
    """None when the native build should go ahead; else the pure-PyTorch plan and why."""
    if env.get(NO_NATIVE_VAR) == "1":
        return BuildPlan(native=False, messages=[f"{NO_NATIVE_VAR}=1 was set when it was installed"])
    if compiler_problem is not None:
        return BuildPlan(native=False, messages=[
            f"{compiler_problem}; for the fast build install a C++ compiler with OpenMP (e.g. `apt install g++`) "
            "and reinstall: `pip install --no-cache-dir --force-reinstall --no-deps <the same source>`"])
    return None
