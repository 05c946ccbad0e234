"""Atomic, checksummed files: what training checkpoints and attribution shards are written with.

A file is written to a temporary sibling in the same folder, flushed to disk, then renamed over
the previous one (``os.replace`` is atomic on POSIX and Windows), so a run killed at any moment
leaves either the old or the new file, never a torn one. Everything stored is a tensor, number,
string, list or dict, so files load with ``weights_only=True`` (no pickle code runs).

Checksums: a saved dict carries ``"checksum"``, the sha256 of its content (every key, every
tensor's dtype, shape and bytes, every number and string), and loading recomputes it. Bytes
damaged on disk either fail to load or change the content, so both raise :class:`CorruptFileError`
naming the file. (A digest of the content rather than of the file's bytes lets the checksum live
inside the one file it protects: there is no second file to fall out of step after a kill.)

Also here: the bytes and hash of a tensor, and JSON-safe records of option values (what the
attribution manifests store).
"""
from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, List, Optional

import numpy as np
import torch
from torch import Tensor

from ._jsonable import jsonable

CHECKSUM_KEY = "checksum"


class CorruptFileError(ValueError):
    """A checkpoint or shard that is damaged, truncated, empty or not a saliency_fast file; the
    message names the file."""


# ==============================================================================================
# atomic writes
# ==============================================================================================
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


def atomic_write_bytes(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temporary sibling of ``path``, fsync it, then rename it into place.

    A failed write (full disk, read-only folder) raises ``OSError`` naming ``path``; torch.save
    reports a full disk as a RuntimeError ("enforce fail at inline_container.cc"), so that is
    turned into an OSError too. Nothing is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        if error.errno in DISK_ERRORS:
            raise _cannot_write(path, error.errno) from error
        raise
    except RuntimeError as error:  # torch.save's writer: the OSError it hit is in the chain, or only its text
        cause = _disk_error_in_chain(error)
        if cause is None and "write" not in str(error).lower():
            raise
        raise _cannot_write(path, (cause.errno if cause is not None else None) or errno.ENOSPC) from error
    finally:
        temporary.unlink(missing_ok=True)  # gone already after the rename


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    data = text.encode()
    atomic_write_bytes(path, lambda handle: handle.write(data))


def _cannot_write(path: Path, code: int) -> OSError:
    """The OSError a failed write raises: the file, the reason, and what to do about it."""
    advice = "; free some disk space" if code in (errno.ENOSPC, errno.EDQUOT) else "; choose a writable folder"
    return OSError(code, f"cannot write {path}: {os.strerror(code)}{advice}", str(path))


def _disk_error_in_chain(error: Optional[BaseException]) -> Optional[OSError]:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_ERRORS:
            return error
        error = error.__cause__ or error.__context__
    return None


def remove_stale_temporaries(folder: Path, names: Iterable[str]) -> List[Path]:
    """Delete ``.NAME.tmp-PID`` files (left by a writer killed mid-write) of the given names (glob
    patterns); call only while holding the folder's lock. Returns the removed paths."""
    removed = []
    for name in names:
        for leftover in Path(folder).glob(f".{name}.tmp-*"):
            try:
                leftover.unlink()
                removed.append(leftover)
            except FileNotFoundError:
                pass
    return removed


# ==============================================================================================
# checksummed files
# ==============================================================================================
def content_checksum(value: Any) -> str:
    """sha256 of a nested structure of dicts, lists, tuples, tensors, numbers, strings and None."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:  # digest: a hashlib object
    if isinstance(value, torch.Tensor):
        digest.update(f"T{value.dtype}{tuple(value.shape)}:".encode())
        digest.update(tensor_bytes(value))
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}:".encode())
        for key in sorted(value, key=repr):
            _feed(digest, key)
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}:".encode())
        for item in value:
            _feed(digest, item)
    elif value is None or isinstance(value, (bool, int, float, str, bytes, torch.dtype, torch.device)):
        digest.update(f"{type(value).__name__}:{value!r};".encode())
    elif isinstance(value, np.generic):
        _feed(digest, value.item())
    else:
        raise TypeError(f"cannot checksum a {type(value).__name__}")


def save_verified(path: Path, content: dict) -> None:
    """Atomically save ``content`` with its checksum (see the module docstring)."""
    atomic_write_bytes(path, lambda handle: torch.save({**content, CHECKSUM_KEY: content_checksum(content)}, handle))


def load_verified(path: Path, what: str, map_location: Any = "cpu", mmap: bool = False,
                  require_checksum: bool = True) -> dict:
    """Load a file written by :func:`save_verified` and check its checksum.

    Raises FileNotFoundError if it is missing, :class:`CorruptFileError` (naming ``path`` and
    saying it is a ``what``) if it cannot be loaded (truncated, empty, foreign, or a pickle that
    ``weights_only`` refuses) or its content does not match the checksum.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if path.is_dir():
        raise CorruptFileError(f"{path} is a folder, not a {what} file")
    try:
        content = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:  # torch reports a damaged zip, an empty file or refused pickle in many ways
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CorruptFileError(f"{path} cannot be read as a {what} ({type(error).__name__}: {first_line[:200]}); "
                               "it is damaged, truncated or not such a file") from error
    if not isinstance(content, dict):
        raise CorruptFileError(f"{path} is not a {what} (it holds a {type(content).__name__}, not a dict)")
    saved = content.pop(CHECKSUM_KEY, None)
    if saved is None:
        if require_checksum:
            raise CorruptFileError(f"{path} is not a {what}: it carries no checksum")
        return content
    try:
        actual = content_checksum(content)
    except TypeError as error:
        raise CorruptFileError(f"{path} is not a {what} ({error})") from error
    if actual != saved:
        raise CorruptFileError(f"{path} is damaged: its content does not match its checksum (a {what} "
                               "changed on disk after it was written)")
    content[CHECKSUM_KEY] = saved
    return content


# ==============================================================================================
# tensor bytes and JSON records
# ==============================================================================================
def tensor_bytes(tensor: Tensor) -> bytes:
    """The raw bytes of ``tensor`` (on the CPU, contiguous); b"" when it is empty."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def tensor_hash(tensor: Tensor) -> str:
    """sha256 over the shape, dtype and bytes of ``tensor``."""
    digest = hashlib.sha256(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
    digest.update(tensor_bytes(tensor))
    return digest.hexdigest()


def _manifest_leaf(value: Any) -> Any:
    if isinstance(value, Tensor):
        return {"tensor": list(value.shape), "dtype": str(value.dtype), "sha256": tensor_hash(value)}
    if isinstance(value, np.generic):
        return value.item()
    return repr(value)


def json_record(value: Any) -> Any:
    """A JSON-safe record of an option value, as attribution manifests keep it (tensors by shape
    and content hash, other objects by repr)."""
    return jsonable(value, _manifest_leaf)
