"""Checks shared by the subcommands: turn what a user typed into objects, or into a ValueError
that names the flag and says what to do (``cli.main`` prints it in one line, no traceback)."""
from __future__ import annotations

import importlib
from typing import Optional

import torch
from torch import nn

from ..dataset import check_model_accepts  # noqa: F401  (re-exported for the subcommands)


def parse_device(text: Optional[str], flag: str = "--device") -> Optional[torch.device]:
    """A usable torch.device from ``text`` (None stays None); a device this machine lacks is refused."""
    if text is None:
        return None
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"{flag} {text!r} is not a device; use cpu, cuda or cuda:N") from error
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"{flag} {text}: {why}; use {flag} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {text}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0 … cuda:{torch.cuda.device_count() - 1})")
        return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())
    if device.type == "mps" and torch.backends.mps.is_available():
        return device
    raise ValueError(f"{flag} {text}: unsupported here; use cpu or cuda")


