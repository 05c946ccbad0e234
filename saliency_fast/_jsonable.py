"""JSON-ready records of nested settings: the trainer's run config (``train/fit.py``) and the
attribution manifest's method parameters (``dataset.py``) record options this way, so that a
resumed run notices any changed setting.

Containers and JSON scalars are walked here, once; what a record says about any other value (a
tensor by shape and checksum, a module by repr, ...) is the caller's ``leaf``, because each file
format has its own and must not change.
"""
from __future__ import annotations

from typing import Any, Callable


def jsonable(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """``value`` as JSON-ready data: None, bools, numbers and strings as they are (subclasses such
    as ``numpy.float64`` included), lists and tuples as lists, dicts with ``str`` keys, recursively;
    every other value becomes ``leaf(value)``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(item, leaf) for item in value]
    if isinstance(value, dict):
        return {str(key): jsonable(item, leaf) for key, item in value.items()}
    return leaf(value)
