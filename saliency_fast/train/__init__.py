"""Explanation-improving training: one trainer (:func:`fit`), pluggable objectives.

``METHODS`` maps a CLI name to a factory of keyword arguments; the ``saliency-fast train``
subcommand builds its methods from it, and other modules may register more.
"""
from __future__ import annotations

from typing import Callable, Dict

from .checkpoint import load_checkpoint
from .fit import History, TrainingDiverged, evaluate, fit
from .methods import (MethodOutput, Plain, SaliencyGuided, TrainingMethod, evaluating, input_saliency, kl_to,
                      unwrap)
from .scaat import PGDAT, SCAAT, TRADES, AdversarialTraining

METHODS: Dict[str, Callable[..., TrainingMethod]] = {
    "plain": Plain,
    "sgt": SaliencyGuided,
    "pgdat": PGDAT,
    "trades": TRADES,
    "scaat": SCAAT,
}

__all__ = [
    "fit", "evaluate", "History", "TrainingDiverged", "load_checkpoint", "TrainingMethod", "MethodOutput",
    "Plain", "SaliencyGuided", "AdversarialTraining", "SCAAT", "PGDAT", "TRADES", "METHODS", "unwrap",
    "evaluating", "input_saliency", "kl_to",
]

# explanation supervision (res.md): RES-G, RES-L, GRADIA, HAICS
import functools as _functools

from .res import GRADIA, HAICS, RES, ExplanationSupervision, evaluate_explanations, explanation_threshold

METHODS.update({
    "res-g": _functools.partial(RES, variant="G"),
    "res-l": _functools.partial(RES, variant="L"),
    "gradia": GRADIA,
    "haics": HAICS,
})
__all__ += ["RES", "GRADIA", "HAICS", "ExplanationSupervision", "evaluate_explanations", "explanation_threshold"]
