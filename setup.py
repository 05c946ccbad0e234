"""Builds saliency_fast._C: CppExtension, or CUDAExtension when torch is a CUDA build and the
CUDA toolkit is found (FORCE_CUDA=1 forces it, SALIENCY_FAST_NO_CUDA=1 disables it).

Build against the torch already installed: `pip install --no-build-isolation -e .`
"""
import glob
import os

from setuptools import setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.1.0"


def use_cuda() -> bool:
    if os.environ.get("SALIENCY_FAST_NO_CUDA") == "1":
        return False
    if os.environ.get("FORCE_CUDA") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def wheel_cuda_include_dirs():
    """torch's CUDA wheels ship the CUDA library headers (cuSPARSE, cuBLAS, ...) in the
    nvidia/*/include folders of their pip dependencies; a bare toolkit may lack them."""
    try:
        import nvidia
    except ImportError:
        return []
    return sorted(p for root in nvidia.__path__ for p in glob.glob(os.path.join(root, "*", "include")))


def extension():
    def sources(pattern):
        # relative paths: setuptools refuses absolute ones in an editable build
        return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))

    cpp = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
    # Contraction off on both sides (README, "CPU/CUDA parity"): a*b + c is rounded twice, as in
    # the reference, never fused into an FMA (GCC fuses with -march=native, nvcc by default).
    cxx_flags = ["-O3", "-fopenmp", "-ffp-contract=off", f'-DSALIENCY_FAST_VERSION="{VERSION}"']
    kwargs = dict(
        name="saliency_fast._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=["-fopenmp"],
    )
    if use_cuda():
        cxx_flags.append("-DWITH_CUDA")
        nvcc_flags = ["-O3", "-DWITH_CUDA", "--expt-relaxed-constexpr", "-lineinfo", "-fmad=false"]
        kwargs["include_dirs"] += wheel_cuda_include_dirs()
        return CUDAExtension(
            sources=cpp + sources("csrc/cuda/*.cu"),
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            **kwargs,
        )
    return CppExtension(sources=cpp, extra_compile_args={"cxx": cxx_flags}, **kwargs)


setup(
    version=VERSION,
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
