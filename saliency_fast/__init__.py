"""saliency_fast: faithful, fast saliency maps for PyTorch.

SAMP/SAMP++ path attribution with a native step op, the common baselines, the evaluation
metrics of the papers, and explanation-improving training (SCAAT, RES) — see README.md.
"""
from __future__ import annotations

from ._version import __version__
from ._native import build_info, native_available
from .allocator import tune_cpu_allocator
from . import data, metrics, models, ops, references, train, viz
from ._common import BoundModel
from .attribution_store import load_attributions
from .dataset import attribute_dataset
from .methods.registry import make_method
from .methods import *  # noqa: F401,F403
from .methods import __all__ as _methods_all
from . import interop  # after the methods: its adapters subclass them

__all__ = ["attribute_dataset", "load_attributions", "make_method", "build_info", "native_available", "tune_cpu_allocator", "data", "metrics", "models", "ops", "references", "train", "viz",
           "interop", "BoundModel", *_methods_all]
