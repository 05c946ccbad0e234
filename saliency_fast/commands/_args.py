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


def import_factory(spec: str):
    """``module:factory`` → the callable (ValueError naming --model if it cannot be imported)."""
    module_name, separator, factory_name = spec.partition(":")
    if not separator or not module_name or not factory_name:
        raise ValueError(f"--model must be 'digits' or 'module:factory', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        if isinstance(error, ModuleNotFoundError) and error.name and not module_name.startswith(error.name):
            raise  # the user's module imports something missing: its own traceback explains it
        raise ValueError(f"--model {spec}: cannot import module {module_name!r} ({error}); check the name and that "
                         "it is on PYTHONPATH") from error
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ValueError(f"--model {spec}: {module_name} has no callable {factory_name!r}")
    return factory


def load_weights(model: nn.Module, path: str, spec: str) -> nn.Module:
    """Load a state_dict file into ``model`` (weights_only=True: no pickled code runs)."""
    import os

    if os.path.isdir(path):
        raise ValueError(f"--weights {path} is a folder; pass the state_dict file "
                         "(torch.save(model.state_dict(), path))")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--weights {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, text, a pickle weights_only refuses, …: all the user's file
        first_line = str(error).strip().splitlines()[0][:150] if str(error).strip() else ""
        why = ("it holds Python objects other than tensors, which are not loaded because loading them could run code"
               if type(error).__name__ == "UnpicklingError" else f"{type(error).__name__}: {first_line}")
        raise ValueError(f"--weights {path} is not a readable state_dict file ({why}); save one with "
                         "torch.save(model.state_dict(), path)") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and "optimizer" in state:
        state = state["model"]  # a saliency-fast train checkpoint (last.pt)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--weights {path} does not hold a state_dict (a dict of tensors); save one with "
                         "torch.save(model.state_dict(), path)")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        raise ValueError(f"--weights {path} does not fit --model {spec}: {' '.join(lines)[:300]}; pass the weights "
                         "saved from that model") from error
    return model
