"""Atomic, checksummed files (training checkpoints, attribution shards), output-folder locks,
and the random-number state a checkpoint carries.

A file is written to a temporary sibling in the same folder, flushed to disk, then renamed over
the previous one (``os.replace`` is atomic on POSIX and Windows), so a run killed at any moment
leaves either the old or the new file, never a torn one. Everything stored is a tensor, number,
string, list or dict, so files load with ``weights_only=True`` (no pickle code runs).

Checksums: a saved dict carries ``"checksum"``, the sha256 of its content (every key, every
tensor's dtype, shape and bytes, every number and string), and loading recomputes it. Bytes
damaged on disk either fail to load or change the content, so both raise :class:`CorruptFileError`
naming the file. (A digest of the content rather than of the file's bytes lets the checksum live
inside the one file it protects: there is no second file to fall out of step after a kill.)

Locks: a writer owns its output folder through ``.lock`` (JSON: pid, host, process start time);
a second writer is refused with :class:`FolderInUseError` naming the owner, and a lock whose
process is gone (killed) is taken over with a warning.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

CHECKPOINT_NAME = "last.pt"
LOG_NAME = "log.jsonl"
LOCK_NAME = ".lock"
FORMAT_VERSION = 2  # 2: content checksum ("checksum"); 1 (no checksum) still loads, with a warning
CHECKSUM_KEY = "checksum"


class CorruptFileError(ValueError):
    """A checkpoint or shard that is damaged, truncated, empty or not a saliency_fast file; the
    message names the file."""


class FolderInUseError(RuntimeError):
    """Another live process owns the output folder; the message names it (pid, host, lock file)."""


# ==============================================================================================
# atomic writes
# ==============================================================================================
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


def atomic_write_bytes(path: Path, write) -> None:
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
        if error.errno in _DISK_ERRORS:
            raise OSError(error.errno, f"cannot write {path}: {os.strerror(error.errno)}"
                          + ("; free some disk space" if error.errno in (errno.ENOSPC, errno.EDQUOT) else
                             "; choose a writable folder"), str(path)) from error
        raise
    except RuntimeError as error:  # torch.save's writer: the OSError it hit is in the chain, or only its text
        cause = _disk_error_in_chain(error)
        if cause is None and "write" not in str(error).lower():
            raise
        code = cause.errno if cause is not None else errno.ENOSPC
        raise OSError(code, f"cannot write {path}: {os.strerror(code)}"
                      + ("; free some disk space" if code in (errno.ENOSPC, errno.EDQUOT) else
                         "; choose a writable folder"), str(path)) from error
    finally:
        try:
            temporary.unlink()
        except FileNotFoundError:
            pass


def _disk_error_in_chain(error: BaseException) -> Optional[OSError]:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_ERRORS:
            return error
        error = error.__cause__ or error.__context__
    return None


def remove_stale_temporaries(folder: Path, names) -> list:
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


def _feed(digest, value) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}:".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
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


# ==============================================================================================
# output-folder locks
# ==============================================================================================
_HELD: Dict[str, int] = {}  # lock path -> how many times this process holds it (re-entrant)


def _process_start(pid: int) -> Optional[str]:
    """The kernel's start time of ``pid`` (Linux /proc), which tells a reused pid apart; None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner: dict) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    started = owner.get("started")
    return started is None or _process_start(pid) in (None, started)


class FolderLock:
    """``with FolderLock(folder):`` — own ``folder`` for writing (re-entrant within a process).

    Refuses (FolderInUseError) while another live process on this host, or any process on
    another host, holds the lock; takes over, with a warning, a lock whose process is gone.
    """

    def __init__(self, folder, purpose: str = "writing"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.purpose = purpose

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        key = str(self.path.resolve())
        if _HELD.get(key):
            _HELD[key] += 1
            return
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"{self.folder} is a file, not a folder; choose a folder for the output")
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": _process_start(os.getpid()),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S"), "purpose": self.purpose}
        for _ in range(3):
            if self._create(record):
                _HELD[key] = 1
                return
            owner = self._owner()
            if owner is None:
                continue  # removed meanwhile, or unreadable and removed as stale: try again
            if owner.get("host") == record["host"] and not _alive(owner):
                warnings.warn(f"{self.path}: taking over the lock of process {owner.get('pid')} on "
                              f"{owner.get('host')}, which is no longer running (it was killed)", stacklevel=3)
                self._remove()
                continue
            raise FolderInUseError(
                f"{self.folder} is in use by process {owner.get('pid')} on {owner.get('host')} ({owner.get('purpose')} "
                f"since {owner.get('since')}); wait for it to finish or use another folder. If that process is gone, "
                f"delete {self.path}")
        raise FolderInUseError(f"could not take the lock {self.path}; another process keeps replacing it")

    def release(self) -> None:
        key = str(self.path.resolve())
        if not _HELD.get(key):
            return
        _HELD[key] -= 1
        if _HELD[key] == 0:
            del _HELD[key]
            self._remove()

    def _create(self, record: dict) -> bool:
        """Write the lock atomically with its content: a complete temporary file hard-linked to
        the lock's name (link fails if the name exists)."""
        temporary = self.path.with_name(f"{LOCK_NAME}.tmp-{os.getpid()}")
        try:
            temporary.write_text(json.dumps(record))
        except OSError as error:
            if error.errno not in _DISK_ERRORS:
                raise
            raise OSError(error.errno, f"cannot write in {self.folder}: {os.strerror(error.errno)}; choose a "
                          "writable folder with free space", str(self.folder)) from error
        try:
            os.link(temporary, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            temporary.unlink()

    def _owner(self) -> Optional[dict]:
        try:
            owner = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, OSError):  # not written by us: remove it only if it is old
            if time.time() - self.path.stat().st_mtime > 60:
                self._remove()
                return None
            return {"pid": "?", "host": "?", "purpose": "unknown", "since": "less than a minute ago"}
        return owner if isinstance(owner, dict) else {"pid": "?", "host": "?"}

    def _remove(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


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
