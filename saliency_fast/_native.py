"""Loads the compiled extension (``saliency_fast._C``) when it was built for the running torch,
and reports what it was built with.

Importing ``_C`` registers the ``torch.ops.saliency_fast.*`` operators with the dispatcher. The
build writes ``_native_build.json`` next to the binary (the torch it was compiled against, CUDA
version and archs, compiler); it is checked *before* the binary is loaded, because a binary
built for another torch fails with undefined symbols at best. When the binary is absent, stale
or refused, every op falls back to its pure-PyTorch twin in ``_reference``: one warning (at the
first op that falls back) says why and what to do; ``native_available()`` says so too.
"""
from __future__ import annotations

import glob
import importlib.machinery
import json
import os
import warnings

import torch  # loads libtorch before the extension that links to it

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
RECORD_PATH = os.path.join(PACKAGE_DIR, "_native_build.json")
SOURCE_ROOT = os.path.dirname(PACKAGE_DIR)

_C = None
_IMPORT_ERROR: str | None = None
_fallback_warned = False  # warn_fallback_once has warned


def running_torch() -> dict:
    return {"torch": torch.__version__, "torch_git": torch.version.git_version, "torch_cuda": torch.version.cuda}


def read_record(path: str = RECORD_PATH) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def binary_path() -> str | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        found = glob.glob(os.path.join(PACKAGE_DIR, "_C" + suffix))
        if found:
            return found[0]
    return None


def torch_mismatch(record: dict, running: dict) -> str | None:
    """Why a binary built as ``record`` says must not be loaded into ``running`` torch, or None."""
    if record.get("torch") != running["torch"]:
        return f"it was built for torch {record.get('torch')} and this is torch {running['torch']}"
    if record.get("torch_git") and running["torch_git"] and record["torch_git"] != running["torch_git"]:
        return (f"it was built for another build of torch {running['torch']} "
                f"(git {record['torch_git'][:10]}, this one is {running['torch_git'][:10]})")
    if record.get("cuda") and running["torch_cuda"] is None:
        return f"it was built with CUDA {record['cuda']} and this torch is a CPU build"
    return None


def in_source_checkout() -> bool:
    return os.path.isfile(os.path.join(SOURCE_ROOT, "setup.py")) and os.path.isdir(os.path.join(SOURCE_ROOT, "csrc"))


def how_to_build(source_checkout: bool) -> str:
    if source_checkout:
        return (f"build it for this torch: `pip install --no-build-isolation -e {SOURCE_ROOT}` "
                f"(or `make setup` there; a C++20 compiler with OpenMP is needed, the build takes a few minutes)")
    return ("reinstall saliency_fast for this torch, from the same source as before: "
            "`pip install --force-reinstall --no-deps --no-cache-dir <source>` (a C++20 compiler with OpenMP "
            "is needed, the build takes a few minutes)")


def load_problem(record: dict | None, binary: str | None, running: dict) -> str | None:
    """None when the binary may be loaded, else what is wrong with it (a sentence)."""
    if record is not None and not record.get("native"):
        notes = "; ".join(record.get("notes") or []) or "no reason recorded"
        return f"the package was installed without them: {notes}"
    if binary is None:
        return "the extension (saliency_fast._C) is not built"
    if record is None:
        return (f"the extension {os.path.basename(binary)} has no build record ({os.path.basename(RECORD_PATH)}), "
                "so which torch it was built for is unknown")
    mismatch = torch_mismatch(record, running)
    return None if mismatch is None else f"the extension is not loaded because {mismatch}"


def fallback_message(problem: str, source_checkout: bool) -> str:
    fix = "" if problem.startswith("the package was installed without them") else f"; {how_to_build(source_checkout)}"
    return f"saliency_fast's compiled ops are not available: {problem}{fix}. Using the pure-PyTorch ops (same results, slower)."


def _load() -> None:
    global _C, _IMPORT_ERROR
    if os.environ.get("SALIENCY_FAST_DISABLE_NATIVE") == "1":
        _IMPORT_ERROR = "disabled by SALIENCY_FAST_DISABLE_NATIVE=1"
        return
    problem = load_problem(read_record(), binary_path(), running_torch())
    if problem is None:
        try:
            from . import _C as module  # type: ignore[attr-defined]
        except ImportError as error:
            problem = f"the extension failed to load ({error})"
        else:
            _C = module
            return
    _IMPORT_ERROR = fallback_message(problem, in_source_checkout())
    if os.environ.get("SALIENCY_FAST_REQUIRE_NATIVE") == "1":
        raise ImportError(f"{_IMPORT_ERROR} (SALIENCY_FAST_REQUIRE_NATIVE=1 forbids the fallback)")


_load()


def native_available(device: str | None = None) -> bool:
    """True when the compiled ops are loaded (and, with ``device``, built for that device type)."""
    if _C is None:
        return False
    if device is None:
        return True
    return device.split(":")[0] in build_info()["backends"]


def build_info() -> dict:
    """What the compiled ops are: version, backends and OpenMP threads of the loaded extension,
    and the torch (CUDA version, archs, compiler) it was built against; or why it is absent."""
    record = read_record() or {}
    built_with = {key: record.get(key) for key in ("torch", "torch_git", "torch_cuda", "cuda", "cuda_archs",
                                                   "compiler", "built_at", "notes") if key in record}
    if _C is None:
        return {"native": False, "reason": _IMPORT_ERROR, "backends": [], **built_with}
    info = dict(_C.build_info())
    info.update(built_with, native=True)
    return info


def format_build_info() -> str:
    """A readable multi-line summary of build_info() (what `python -m saliency_fast --version` prints)."""
    info = build_info()
    running = running_torch()
    lines = []
    if info["native"]:
        lines.append(f"compiled ops: loaded ({', '.join(info['backends'])})")
    else:
        lines.append("compiled ops: not loaded — using the pure-PyTorch ops (same results, slower)")
        lines.append(f"  why: {info['reason']}")
    if "torch" in info:
        cuda = f", CUDA {info['cuda']} for archs {info['cuda_archs']}" if info.get("cuda") else ""
        lines.append(f"built against: torch {info['torch']}{cuda}" + (f" with {info['compiler']}" if info.get("compiler") else ""))
    if info.get("built_at"):
        lines.append(f"built at: {info['built_at']}")
    for note in info.get("notes") or []:
        lines.append(f"build note: {note}")
    cuda_running = f"CUDA {running['torch_cuda']}, {torch.cuda.device_count()} GPU(s) visible" if running["torch_cuda"] else "CPU build"
    lines.append(f"running: torch {running['torch']} ({cuda_running})")
    if info["native"]:
        lines.append(f"threads: {info.get('threads')}")
    return "\n".join(lines)


def warn_fallback_once() -> None:
    global _fallback_warned
    if _C is None and not _fallback_warned:
        _fallback_warned = True
        assert _IMPORT_ERROR is not None  # _load sets it whenever it leaves _C unset
        warnings.warn(_IMPORT_ERROR, RuntimeWarning, stacklevel=3)
