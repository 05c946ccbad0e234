"""Output-folder locks: a writer owns its output folder through ``.lock`` (JSON: pid, host,
process start time); a second writer is refused with :class:`FolderInUseError` naming the owner,
and a lock whose process is gone (killed) is taken over with a warning. Used by training
checkpoints and attribution runs alike."""
from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Dict, Optional, Union

from ._io import DISK_ERRORS

LOCK_NAME = ".lock"


class FolderInUseError(RuntimeError):
    """Another live process owns the output folder; the message names it (pid, host, lock file)."""


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

    def __init__(self, folder: Union[str, "os.PathLike[str]"], purpose: str = "writing") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.purpose = purpose

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
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
            if error.errno not in DISK_ERRORS:
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
        self.path.unlink(missing_ok=True)
