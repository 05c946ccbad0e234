"""Loads the compiled extension (``saliency_fast._C``) and reports what it was built with.

Importing ``_C`` registers the ``torch.ops.saliency_fast.*`` operators with the dispatcher.
When it is absent (a source checkout that was never built, or a failed build), every op
falls back to its pure-PyTorch twin in ``_reference`` and ``native_available()`` says so.
"""
from __future__ import annotations

import os
import warnings

import torch  # noqa: F401  (loads libtorch before the extension that links to it)

_C = None
_IMPORT_ERROR: str | None = None

if os.environ.get("SALIENCY_FAST_DISABLE_NATIVE") != "1":
    try:
        from . import _C  # type: ignore[attr-defined,no-redef]  # noqa: F401
    except ImportError as error:  # extension not built: fall back to the reference ops
        _IMPORT_ERROR = str(error)
        if os.environ.get("SALIENCY_FAST_REQUIRE_NATIVE") == "1":
            raise
else:
    _IMPORT_ERROR = "disabled by SALIENCY_FAST_DISABLE_NATIVE=1"


def native_available(device: str | None = None) -> bool:
    """True when the compiled ops are loaded (and, with ``device``, built for that device type)."""
    if _C is None:
        return False
    if device is None:
        return True
    return device.split(":")[0] in build_info()["backends"]


def build_info() -> dict:
    """Version, compiled backends and OpenMP threads of the extension (or why it is absent)."""
    if _C is None:
        return {"native": False, "reason": _IMPORT_ERROR, "backends": []}
    info = dict(_C.build_info())
    info["native"] = True
    return info


def warn_fallback_once() -> None:
    if _C is None and not getattr(warn_fallback_once, "done", False):
        warn_fallback_once.done = True
        warnings.warn(
            "saliency_fast's compiled ops are not available "
            f"({_IMPORT_ERROR}); using the pure-PyTorch reference ops. "
            "Build them with `pip install --no-build-isolation -e .`.",
            RuntimeWarning,
            stacklevel=3,
        )
