"""Training checkpoints (atomic and checksummed, see ``saliency_fast._io``), the training log,
and the random-number state a checkpoint carries. The output folder's lock is
``saliency_fast._lock.FolderLock``."""
from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

# the file primitives, also imported from here by fit.py and by users (CorruptFileError, LOCK_NAME, ...)
from .._io import (CHECKSUM_KEY, CorruptFileError, atomic_write_bytes, content_checksum,  # noqa: F401
                   load_verified, remove_stale_temporaries, save_verified)
from .._lock import LOCK_NAME, FolderInUseError, FolderLock  # noqa: F401

CHECKPOINT_NAME = "last.pt"
LOG_NAME = "log.jsonl"
FORMAT_VERSION = 2  # 2: content checksum ("checksum"); 1 (no checksum) still loads, with a warning


def save_checkpoint(path: Path, state: dict) -> None:
    save_verified(path, state)


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict:
    """A checkpoint written by :func:`save_checkpoint`, its checksum verified; raises
    :class:`CorruptFileError` naming ``path`` if it is damaged or not a training checkpoint."""
    state = load_verified(path, "saliency_fast training checkpoint", map_location, require_checksum=False)
    if state.get("format") not in (1, FORMAT_VERSION):
        raise CorruptFileError(f"{path} is not a saliency_fast training checkpoint (format {FORMAT_VERSION})")
    if state["format"] == 1:
        warnings.warn(f"{path} is an older checkpoint without a checksum; it cannot be verified", stacklevel=2)
    missing = sorted({"epoch", "method_name", "model", "optimizer", "method", "history", "rng"} - set(state))
    if missing:
        raise CorruptFileError(f"{path} is not a complete training checkpoint (it lacks {', '.join(missing)})")
    return state


def write_log(path: Path, records: list) -> None:
    """The JSON-lines log: one object per finished epoch, rewritten atomically from the history."""
    text = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)
    atomic_write_bytes(path, lambda handle: handle.write(text.encode()))


def capture_rng(generators: Optional[list] = None) -> dict:
    """Python, NumPy, torch CPU and CUDA generator states, plus those of given torch.Generators."""
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(position), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": [generator.get_state() for generator in generators or []],
    }
    return state


def restore_rng(state: dict, generators: Optional[list] = None) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    for generator, saved in zip(generators or [], state["generators"]):
        generator.set_state(saved.cpu())
