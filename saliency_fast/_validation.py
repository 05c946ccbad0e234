"""Checks of scalar arguments, shared by every layer (ops, methods, metrics, training, the
dataset runner): each returns the value in its canonical type or raises a ValueError that names
the argument. Checks of tensors and models live in ``_common``."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["check_positive_int", "check_choice", "check_nonnegative"]


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int, if it is an int (Python or NumPy, not bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        wanted = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return int(value)


def check_choice(value: str, name: str, choices: Sequence[str]) -> str:
    """``value``, if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_nonnegative(value: float, name: str) -> float:
    """``value`` as a float, if it is >= 0 (NaN is refused)."""
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)
