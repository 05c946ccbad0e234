"""Builds saliency_fast._C, the compiled ops, against the torch installed where the package goes.

The decisions (C++ compiler present? CUDA possible?) are made first by _build/build_plan.py, so
an impossible build becomes a pure-PyTorch or CPU-only install with a message, never a traceback
from inside torch's build helpers. The torch the binary was built against is written next to it
(saliency_fast/_native_build.json) and checked at import by saliency_fast/_native.py.

Environment: SALIENCY_FAST_NO_NATIVE=1 (no compiled ops), SALIENCY_FAST_NO_CUDA=1 (CPU ops only),
FORCE_CUDA=1 (the CUDA ops or an error), TORCH_CUDA_ARCH_LIST, CUDA_HOME, CXX, MAX_JOBS.
"""
import datetime
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import warnings

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "_build"))
import build_plan  # noqa: E402


def read_version() -> str:
    """``__version__`` from saliency_fast/_version.py, parsed (importing the package needs torch)."""
    with open(os.path.join(ROOT, "saliency_fast", "_version.py")) as handle:
        found = re.search(r'^__version__ = "([^"]+)"$', handle.read(), re.MULTILINE)
    if found is None:
        raise RuntimeError("saliency_fast/_version.py must define __version__ = \"X.Y.Z\"")
    return found.group(1)


VERSION = read_version()
RECORD_NAME = "_native_build.json"  # read by saliency_fast/_native.py
TORCH_REQUIREMENT = "torch>=2.4"
RUNTIME_REQUIREMENTS = ["numpy", "tqdm", "matplotlib", "pillow"]

# Compile and link flags of the extension, in one place (WITH_CUDA is added for the CUDA build).
# Contraction off on both sides (README, "CPU/CUDA parity"): a*b + c is rounded twice, as in the
# reference, never fused into an FMA (GCC fuses with -march=native, nvcc by default).
CXX_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", f'-DSALIENCY_FAST_VERSION="{VERSION}"']
NVCC_FLAGS = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-fmad=false"]
LINK_FLAGS = ["-fopenmp"]

# Commands that compile; the others (sdist, egg_info) only need the metadata.
BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install"}


def say(message: str) -> None:
    print(f"saliency_fast build: {message}", file=sys.stderr, flush=True)


def import_torch():
    # torch does not need numpy, and a build environment may lack it: not worth a warning here
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    if "sdist" in sys.argv[1:]:  # an sdist compiles nothing and must not pin this machine's torch
        return None
    try:
        import torch
    except ImportError:
        if BUILD_COMMANDS & set(sys.argv[1:]):
            sys.exit("error: saliency_fast compiles against the installed torch, and torch is not installed "
                     "in this environment. Install torch first (`pip install torch`), then saliency_fast; "
                     "with --no-build-isolation torch must be installed in the same environment.")
        return None
    return torch


def torch_std_flag(torch) -> str:
    """The C++ standard torch's build helpers compile with (C++20 since torch 2.10, C++17 before)."""
    helpers = os.path.join(os.path.dirname(torch.__file__), "utils", "cpp_extension.py")
    with open(helpers) as f:
        return "-std=c++20" if "'-std=c++20'" in f.read() else "-std=c++17"


def gpu_capabilities(torch) -> list:
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]


def make_plan(torch) -> build_plan.BuildPlan:
    env = dict(os.environ)
    if torch is None:  # an sdist: nothing is compiled
        return build_plan.BuildPlan(native=False)
    compiler_problem = None
    if env.get(build_plan.NO_NATIVE_VAR) != "1":
        compiler_problem = build_plan.probe_cxx(build_plan.cxx_compiler(env), torch_std_flag(torch))
    pure = build_plan.plan_native(env, compiler_problem)
    if pure is not None:
        return pure
    toolkit = None
    if torch.version.cuda is not None and env.get(build_plan.NO_CUDA_VAR) != "1":
        toolkit = build_plan.find_cuda_toolkit(build_plan.toolkit_candidates(env), torch.version.cuda)
        if toolkit is not None and not os.environ.get("CUDA_HOME"):
            os.environ["CUDA_HOME"] = toolkit.root  # not the parent of an nvcc wrapper script
    try:
        return build_plan.plan_cuda(env, torch.version.cuda, toolkit, gpu_capabilities(torch))
    except build_plan.BuildPlanError as error:
        sys.exit(f"error: {error}")


def build_record(torch, plan: build_plan.BuildPlan) -> dict:
    """What the binary was built with and against: checked at import, shown by --version."""
    record = {
        "version": VERSION,
        "native": plan.native,
        "notes": plan.messages,
        "python": platform.python_version(),
    }
    if torch is not None:
        record.update(torch=torch.__version__, torch_git=torch.version.git_version,
                      torch_cuda=torch.version.cuda, cxx11_abi=bool(torch._C._GLIBCXX_USE_CXX11_ABI))
    if plan.native:
        record.update(compiler=compiler_version(), cuda=None, cuda_archs=None)
    if plan.cuda:
        record.update(cuda=build_plan.nvcc_version(os.path.join(plan.cuda_home, "bin", "nvcc")),
                      cuda_archs=plan.arch_list)
    return record


def compiler_version() -> str:
    compiler = build_plan.cxx_compiler(os.environ)
    try:
        out = subprocess.run(compiler.split() + ["--version"], capture_output=True, text=True, timeout=60).stdout
    except OSError:
        return compiler
    return out.splitlines()[0] if out else compiler


def write_record(folder: str, record: dict) -> None:
    os.makedirs(folder, exist_ok=True)
    record = {**record, "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    with open(os.path.join(folder, RECORD_NAME), "w") as f:
        json.dump(record, f, indent=1)


def extension(plan: build_plan.BuildPlan):
    if plan.cuda:  # torch reads CUDA_HOME when its build helpers are imported
        os.environ["CUDA_HOME"] = plan.cuda_home
        os.environ["TORCH_CUDA_ARCH_LIST"] = plan.arch_list
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    def sources(pattern):
        # relative paths: setuptools refuses absolute ones in an editable build
        return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))

    cpp = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
    kwargs = dict(name="saliency_fast._C", include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=LINK_FLAGS)
    if plan.cuda:
        kwargs["include_dirs"] += wheel_cuda_include_dirs()
        return CUDAExtension(
            sources=cpp + sources("csrc/cuda/*.cu"),
            extra_compile_args={"cxx": CXX_FLAGS + ["-DWITH_CUDA"], "nvcc": NVCC_FLAGS + ["-DWITH_CUDA"]},
            **kwargs,
        )
    return CppExtension(sources=cpp, extra_compile_args={"cxx": CXX_FLAGS}, **kwargs)


def wheel_cuda_include_dirs():
    """torch's CUDA wheels ship the CUDA library headers (cuSPARSE, cuBLAS, ...) in the
    nvidia/*/include folders of their pip dependencies; a bare toolkit may lack them."""
    try:
        import nvidia
    except ImportError:
        return []
    return sorted(p for root in nvidia.__path__ for p in glob.glob(os.path.join(root, "*", "include")))


def build_ext_command(record: dict):
    from torch.utils.cpp_extension import BuildExtension

    use_ninja = shutil.which("ninja") is not None
    base = BuildExtension.with_options(use_ninja=use_ninja)

    class BuildExtWithRecord(base):
        """torch's BuildExtension, plus the record next to the binary and one clear message
        (instead of torch's traceback) when compiling fails."""

        def build_extensions(self):
            say(f"compiling saliency_fast._C against torch {record['torch']}"
                f"{' with CUDA ' + str(record['cuda']) + ' for ' + record['cuda_archs'] if record.get('cuda') else ' (CPU ops)'}"
                f"{'' if use_ninja else ' without ninja (serial, slower)'} (a few minutes for a fresh build)")
            try:
                super().build_extensions()
            except (RuntimeError, OSError, subprocess.CalledProcessError) as error:
                sys.exit(f"error: compiling saliency_fast._C failed ({str(error).splitlines()[0] if str(error) else error}); "
                         "the compiler's messages are above. To install without the compiled ops (pure-PyTorch, "
                         f"slower) set {build_plan.NO_NATIVE_VAR}=1.")

        def build_extension(self, ext):
            super().build_extension(ext)
            write_record(os.path.dirname(self.get_ext_fullpath(ext.name)), record)

        def copy_extensions_to_source(self):  # --inplace and editable installs
            super().copy_extensions_to_source()
            write_record(os.path.join(ROOT, "saliency_fast"), record)

    return BuildExtWithRecord


def build_py_command(record: dict):
    class BuildPyWithRecord(build_py):
        """Writes the record into the wheel (for a pure-PyTorch install it is the only one)."""

        def run(self):
            super().run()
            if not self.editable_mode:
                write_record(os.path.join(self.build_lib, "saliency_fast"), record)
            elif not record["native"]:  # in place; a native record is written by build_ext, after it succeeds
                write_record(os.path.join(ROOT, "saliency_fast"), record)

    return BuildPyWithRecord


def main():
    torch = import_torch()
    plan = make_plan(torch)
    for message in plan.messages:
        say(message if plan.native else f"installing without the compiled ops (pure-PyTorch fallback): {message}")
    record = build_record(torch, plan)
    cmdclass = {"build_py": build_py_command(record)}
    ext_modules = []
    requirements = [TORCH_REQUIREMENT] + RUNTIME_REQUIREMENTS
    if plan.native:
        ext_modules = [extension(plan)]
        cmdclass["build_ext"] = build_ext_command(record)
        # like torchvision: a wheel with the binary needs the torch release it was built against
        requirements[0] = f"torch=={torch.__version__.split('+')[0]}"
    setup(version=VERSION, ext_modules=ext_modules, cmdclass=cmdclass, install_requires=requirements)


main()
