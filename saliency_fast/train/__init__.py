"""Explanation-improving training: one trainer (:func:`fit`), pluggable objectives.

``OBJECTIVES`` maps a CLI name to a factory of keyword arguments; the ``saliency-fast train``
subcommand builds its objectives from it. It is built here, once, with every objective listed: a
new objective is a :class:`TrainingMethod` subclass in its own module plus one line below.
``METHODS`` is the same dict under its former name.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict

from .checkpoint import load_checkpoint
from .fit import History, TrainingDiverged, evaluate, fit
from .objectives import (MethodOutput, Plain, SaliencyGuided, TrainingMethod, evaluating, input_saliency, kl_to,
                         unwrap)
from .res import GRADIA, HAICS, RES, ExplanationSupervision
from .res_eval import evaluate_explanations
from .res_losses import explanation_threshold
from .scaat import PGDAT, SCAAT, TRADES, AdversarialTraining

OBJECTIVES: Dict[str, Callable[..., TrainingMethod]] = {
    "plain": Plain,
    "sgt": SaliencyGuided,
    "pgdat": PGDAT,
    "trades": TRADES,
    "scaat": SCAAT,
    # explanation supervision (res.md): loaders yield (x, y, positive_mask, negative_mask, has_mask)
    "res-g": functools.partial(RES, variant="G"),
    "res-l": functools.partial(RES, variant="L"),
    "gradia": GRADIA,
    "haics": HAICS,
}
METHODS = OBJECTIVES  # the former name, kept for code that imports it; the same dict

__all__ = [
    "fit", "evaluate", "History", "TrainingDiverged", "load_checkpoint", "TrainingMethod", "MethodOutput",
    "Plain", "SaliencyGuided", "AdversarialTraining", "SCAAT", "PGDAT", "TRADES", "RES", "GRADIA", "HAICS",
    "ExplanationSupervision", "OBJECTIVES", "METHODS", "unwrap", "evaluating", "input_saliency", "kl_to",
    "evaluate_explanations", "explanation_threshold",
]
