"""Atomic training checkpoints and the random-number state they carry.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then renamed
over the previous one (``os.replace`` is atomic on POSIX and Windows), so a run killed at any
moment leaves either the old or the new checkpoint, never a torn one. Everything stored is a
tensor, number, string, list or dict, so checkpoints load with ``weights_only=True``.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

CHECKPOINT_NAME = "last.pt"
LOG_NAME = "log.jsonl"
FORMAT_VERSION = 1


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary sibling of ``path``, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write_bytes(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict:
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a saliency_fast training checkpoint (format {FORMAT_VERSION})")
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
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)],
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
