"""The files of an ``attribute_dataset`` run: ``manifest.json`` and ``shard-NNNNNN.pt`` (layout in
``saliency_fast.dataset``), written atomically with checksums (``saliency_fast._io``), and read
back by :func:`load_attributions`, which trusts nothing in the folder.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Tuple, TypeGuard, Union

import torch
from torch import Tensor

from ._io import (CHECKSUM_KEY, CorruptFileError, atomic_write_text, content_checksum, load_verified,
                  remove_stale_temporaries, save_verified)
from ._version import __version__

__all__ = ["load_attributions", "AttributionSet", "MANIFEST_NAME", "SHARD_PATTERN", "STORAGE_DTYPES", "FORMAT_VERSION"]

FORMAT_VERSION = 2  # 2: shard checksums and run identity in every shard
MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = "shard-{:06d}.pt"
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


# ==============================================================================================
# files
# ==============================================================================================
def _write_manifest(out_dir: Path, manifest: dict) -> None:
    atomic_write_text(out_dir / MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True))


def read_manifest(out_dir: Path) -> Optional[dict]:
    path = out_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptFileError(f"{path} is not valid JSON ({error}); remove the folder or pass resume=False") from error
    if isinstance(manifest, dict) and manifest.get("format") == 1:
        raise CorruptFileError(f"{path} was written by an older saliency_fast (format 1, no checksums); "
                               "recompute with resume=False (CLI: --no-resume) or use a new out_dir")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION or "identity" not in manifest:
        raise CorruptFileError(f"{path} is not a saliency_fast attribution manifest (format {FORMAT_VERSION})")
    return manifest


def _shard_index(path: Path) -> Optional[int]:
    stem = path.name[len("shard-"):-len(".pt")]
    return int(stem) if stem.isdigit() and path.name == SHARD_PATTERN.format(int(stem)) else None


def shard_ranges(count: int, shard_size: int) -> List[Tuple[int, int]]:
    return [(start, min(start + shard_size, count)) for start in range(0, count, shard_size)]


def _load_shard(path: Path) -> dict:
    """A shard, its checksum verified (CorruptFileError naming the file otherwise)."""
    return load_verified(path, "saliency_fast attribution shard")


def _shard_problem(path: Path, run_id: str, start: int, stop: int) -> Optional[str]:
    """Why the shard file at ``path`` cannot be kept (damaged, or not this run's), or None."""
    try:
        record = _load_shard(path)
    except (CorruptFileError, FileNotFoundError) as error:
        return str(error)
    if record.get("run") != run_id or (record.get("start"), record.get("stop")) != (start, stop):
        return f"{path} was written by another run (or for other indices)"
    return None


# ==============================================================================================
# a run (the caller holds the folder's lock; under torchrun, rank 0 writes the manifest)
# ==============================================================================================
def check_resumable(out_dir: Path, identity: dict, resume: bool) -> List[Path]:
    """The shard files already in ``out_dir``, after refusing (ValueError) to resume into a folder
    written by another run (its manifest's identity differs: the fields are named) or not written
    by ``attribute_dataset`` at all."""
    existing = read_manifest(out_dir) if out_dir.is_dir() and resume else None
    if resume and existing is not None:
        differences = _identity_differences(existing["identity"], identity)
        if differences:
            raise ValueError(
                f"{out_dir} holds attributions of a different run; these differ: {'; '.join(differences)}. "
                "Use a new out_dir, or resume=False (CLI: --no-resume) to overwrite it.")
    stray = sorted(out_dir.glob("shard-*.pt")) if out_dir.is_dir() else []
    if resume and existing is None and stray:
        raise ValueError(f"{out_dir} holds shard files but no {MANIFEST_NAME}; it was not written by "
                         "attribute_dataset. Use a new out_dir, or resume=False to overwrite it.")
    return stray


def _identity_differences(saved: dict, current: dict) -> List[str]:
    differences = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            old, new = json.dumps(saved.get(key), sort_keys=True), json.dumps(current.get(key), sort_keys=True)
            if len(old) + len(new) > 200:
                old, new = old[:90] + "…", new[:90] + "…"
            differences.append(f"{key} (saved {old}, now {new})")
    return differences


def new_manifest(identity: dict, source: str) -> dict:
    """The manifest of a run that has not finished. The data's location (``source``) is recorded
    but is not part of the identity: the same images moved elsewhere still resume."""
    return {
        "format": FORMAT_VERSION, "package": "saliency_fast", "version": __version__, "torch": torch.__version__,
        "identity": identity, "run": content_checksum(identity), "source": source, "complete": False,
    }


def start_run(out_dir: Path, manifest: dict, ranges: List[Tuple[int, int]], stray: List[Path], resume: bool,
              stacklevel: int = 2) -> None:
    """Create the folder, remove what a killed run left half-written, drop the shard files that
    are damaged or not this run's (all of them without ``resume``; a warning names each one
    recomputed, ``stacklevel`` frames up) and write ``manifest``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # files of a killed run, never renamed into place (we hold the lock: no live writer owns them)
    remove_stale_temporaries(out_dir, ("shard-*.pt", MANIFEST_NAME))
    for path in stray:
        problem = None if resume else "overwritten (resume=False)"
        if problem is None:
            index = _shard_index(path)
            problem = ("not one of this run's shard files" if index is None or index >= len(ranges)
                       else _shard_problem(path, manifest["run"], *ranges[index]))
            if problem is not None:
                warnings.warn(f"attribute_dataset: recomputing {path.name}: {problem}", stacklevel=stacklevel + 1)
        if problem is not None:
            path.unlink()
    _write_manifest(out_dir, manifest)


def _skipped_record(entry: list) -> dict:
    """A shard's skipped entry [index, reason] or [index, reason, name] as the manifest lists it."""
    return {"index": entry[0], "reason": str(entry[1]), **({"name": str(entry[2])} if len(entry) > 2 else {})}


def missing_shards(out_dir: Path, ranges: List[Tuple[int, int]]) -> List[int]:
    """The indices of the shards whose files are not in ``out_dir``."""
    return [i for i in range(len(ranges)) if not (out_dir / SHARD_PATTERN.format(i)).is_file()]


def write_shard(out_dir: Path, index: int, record: dict) -> None:
    save_verified(out_dir / SHARD_PATTERN.format(index), record)


def finish_run(out_dir: Path, manifest: dict, ranges: List[Tuple[int, int]], settings: dict) -> dict:
    """After every shard is written: the shard index, the skipped images and the run's
    ``settings`` into the manifest, marked complete."""
    shards: List[dict] = []
    skipped: List[dict] = []
    for index, (start, stop) in enumerate(ranges):
        record = _load_shard(out_dir / SHARD_PATTERN.format(index))
        shards.append({"index": index, "file": SHARD_PATTERN.format(index), "start": start, "stop": stop,
                       "images": int(record["indices"].numel()), "skipped": len(record["skipped"]),
                       "checksum": record[CHECKSUM_KEY]})
        skipped.extend(_skipped_record(entry) for entry in record["skipped"])
    manifest = {**manifest, "complete": True, "shards": shards, "skipped": skipped, "settings": settings}
    _write_manifest(out_dir, manifest)
    return manifest


# ==============================================================================================
# reading back
# ==============================================================================================
@dataclass
class AttributionSet:
    """Everything ``attribute_dataset`` stored, in dataset order (N = number of items).

    ``maps`` (N, H, W) in the storage dtype, NaN at skipped indices; ``targets`` (N,) the explained
    class, −1 where skipped; ``valid`` (N,) bool; ``deletion_auc`` / ``insertion_auc`` (N,) float32
    with NaN where skipped (None without ``evaluate``); ``skipped`` [{"index", "reason", ...}].
    """

    maps: Tensor
    targets: Tensor
    valid: Tensor
    deletion_auc: Optional[Tensor]
    insertion_auc: Optional[Tensor]
    skipped: List[dict]
    manifest: dict


def load_attributions(out_dir: Union[str, os.PathLike], details: bool = False) -> Union[Tensor, AttributionSet]:
    """The maps of a finished ``attribute_dataset`` run as one (N, H, W) tensor in dataset order
    (NaN rows at skipped images); ``details=True`` returns an :class:`AttributionSet`.

    Nothing in the folder is trusted: the manifest's fields are checked (types, ranges, the shard
    index against the count and shard size), every shard's checksum is verified and must match the
    manifest's, and each shard's indices, shapes and dtypes must agree with the manifest. Any
    mismatch raises :class:`CorruptFileError` (a ValueError) naming the file.
    """
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir) if out_dir.is_dir() else None
    if manifest is None:
        raise FileNotFoundError(f"{out_dir / MANIFEST_NAME} not found; is {out_dir} an attribute_dataset output folder?")
    count, shard_size, map_shape, storage_dtype, evaluate, entries = _checked_manifest(out_dir, manifest)
    ranges = shard_ranges(count, shard_size)
    missing = missing_shards(out_dir, ranges)
    if missing:
        raise ValueError(f"{out_dir} is incomplete: {len(missing)} of {len(ranges)} shards missing (first: "
                         f"{SHARD_PATTERN.format(missing[0])}); run attribute_dataset again with resume=True to finish")
    maps = torch.full((count, *map_shape), float("nan"), dtype=storage_dtype)
    targets = torch.full((count,), -1, dtype=torch.long)
    scores = {key: torch.full((count,), float("nan")) for key in ("deletion_auc", "insertion_auc")} if evaluate else {}
    skipped = []
    for index, (start, stop) in enumerate(ranges):
        path = out_dir / SHARD_PATTERN.format(index)
        record = _load_shard(path)
        if record[CHECKSUM_KEY] != entries[index]["checksum"]:
            raise CorruptFileError(f"{path} is not the shard this run wrote (its checksum differs from the one in "
                                   f"{out_dir / MANIFEST_NAME}); recompute it: delete it and run attribute_dataset "
                                   "again")
        indices, shard_skipped = _checked_shard(path, record, manifest["run"], start, stop, map_shape, storage_dtype,
                                                evaluate)
        maps[indices] = record["maps"]
        targets[indices] = record["targets"]
        for key, values in scores.items():
            values[indices] = record[key]
        skipped.extend(shard_skipped)
    if not details:
        return maps
    return AttributionSet(maps=maps, targets=targets, valid=targets >= 0, deletion_auc=scores.get("deletion_auc"),
                          insertion_auc=scores.get("insertion_auc"), skipped=skipped, manifest=manifest)


def _is_int(value: Any, low: int = 0) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _checked_manifest(out_dir: Path, manifest: dict
                      ) -> Tuple[int, int, Tuple[int, ...], torch.dtype, bool, List[dict]]:
    """(count, shard_size, (H, W), storage dtype, evaluate, shard entries) after checking every
    field that reading relies on; CorruptFileError naming the manifest and the field otherwise."""
    path = out_dir / MANIFEST_NAME

    def bad(field: str, value: Any, expected: str) -> CorruptFileError:
        text = json.dumps(value)[:80] if not isinstance(value, str) else repr(value[:80])
        return CorruptFileError(f"{path}: {field} is {text}, expected {expected}; the manifest was edited or damaged "
                                "(recompute with resume=False)")

    identity = manifest.get("identity")
    if not isinstance(identity, dict):
        raise bad("identity", identity, "an object")
    if manifest.get("complete") is not True:
        raise ValueError(f"{out_dir} is incomplete (the run was interrupted); run attribute_dataset again with "
                         "resume=True to finish it")
    data = identity.get("input")
    data = data if isinstance(data, dict) else {}  # not an object: reported as a missing count
    count = data.get("count")
    if not _is_int(count):
        raise bad("identity.input.count", count, "an int >= 0")
    shape = data.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(v, 1) for v in shape)):
        raise bad("identity.input.shape", shape, "[C, H, W] of positive ints")
    shard_size = identity.get("shard_size")
    if not _is_int(shard_size, 1):
        raise bad("identity.shard_size", shard_size, "a positive int")
    dtype = identity.get("dtype")
    if dtype not in STORAGE_DTYPES:
        raise bad("identity.dtype", dtype, f"one of {list(STORAGE_DTYPES)}")
    evaluate = identity.get("evaluate")
    if not isinstance(evaluate, bool):
        raise bad("identity.evaluate", evaluate, "true or false")
    if not isinstance(manifest.get("run"), str):
        raise bad("run", manifest.get("run"), "the run's checksum (a string)")
    entries = manifest.get("shards")
    expected_shards = -(-count // shard_size)
    if not isinstance(entries, list) or len(entries) != expected_shards:
        raise bad("shards", f"{len(entries) if isinstance(entries, list) else type(entries).__name__} entries",
                  f"{expected_shards} entries (count {count} / shard_size {shard_size})")
    for index, (entry, (start, stop)) in enumerate(zip(entries, shard_ranges(count, shard_size))):
        if not (isinstance(entry, dict) and entry.get("index") == index and entry.get("start") == start
                and entry.get("stop") == stop and entry.get("file") == SHARD_PATTERN.format(index)
                and isinstance(entry.get("checksum"), str)):
            raise bad(f"shards[{index}]", entry, f"index {index}, file {SHARD_PATTERN.format(index)}, start {start}, "
                      f"stop {stop} and a checksum")
    return count, shard_size, tuple(shape[1:]), STORAGE_DTYPES[dtype], evaluate, entries


def _checked_shard(path: Path, record: dict, run_id: str, start: int, stop: int, map_shape: Tuple[int, ...],
                   storage_dtype: torch.dtype, evaluate: bool) -> Tuple[Tensor, List[dict]]:
    """The shard's dataset indices and skipped entries after checking it against the manifest."""

    def bad(what: str) -> CorruptFileError:
        return CorruptFileError(f"{path}: {what}; the shard does not belong to this manifest (recompute it: delete "
                                "it and run attribute_dataset again)")

    if record.get("run") != run_id:
        raise bad(f"it was written by another run than {path.parent / MANIFEST_NAME} describes (method, model, "
                  "data or settings differ)")
    if (record.get("start"), record.get("stop")) != (start, stop):
        raise bad(f"it covers images [{record.get('start')}, {record.get('stop')}), not [{start}, {stop})")
    indices = record.get("indices")
    if not (isinstance(indices, Tensor) and indices.dtype == torch.long and indices.dim() == 1):
        raise bad("its 'indices' is not a 1-D int64 tensor")
    n = indices.numel()
    if n and (int(indices.min()) < start or int(indices.max()) >= stop or bool((indices[1:] <= indices[:-1]).any())):
        raise bad(f"its indices are not increasing within [{start}, {stop})")
    expected = {"maps": ((n, *map_shape), storage_dtype), "targets": ((n,), torch.long)}
    if evaluate:
        expected.update({key: ((n,), torch.float32) for key in ("deletion_auc", "insertion_auc")})
    for key, (shape, dtype) in expected.items():
        value = record.get(key)
        if not (isinstance(value, Tensor) and tuple(value.shape) == shape and value.dtype == dtype):
            found = f"{tuple(value.shape)} {value.dtype}" if isinstance(value, Tensor) else type(value).__name__
            raise bad(f"its '{key}' is {found}, expected {shape} {dtype}")
    entries = record.get("skipped")
    if not isinstance(entries, list) or not all(
            isinstance(e, list) and len(e) in (2, 3) and _is_int(e[0]) and start <= e[0] < stop for e in entries):
        raise bad("its 'skipped' list is malformed")
    if n + len(entries) != stop - start or set(indices.tolist()) & {e[0] for e in entries}:
        raise bad(f"its {n} maps and {len(entries)} skipped images do not cover [{start}, {stop}) once each")
    return indices, [_skipped_record(entry) for entry in entries]

