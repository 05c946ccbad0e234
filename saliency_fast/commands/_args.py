"""What the subcommands share (no subcommand imports another): the help of shared flags, and
checks that turn what a user typed into objects, or into a ValueError that names the flag and says
what to do (``cli.main`` prints it in one line, no traceback)."""
from __future__ import annotations

import json
from typing import Any, Iterable, Optional

import torch
from torch import nn

from ..data.sources import open_source, prepare_image
from ..dataset import check_model_accepts  # noqa: F401  (re-exported for the subcommands)
from ..models import Normalized
from ..models import load_model as _load_model

MODEL_HELP = ("'digits' (the bundled digits CNN), 'mnist' (the bundled MNIST CNN), 'torchvision:NAME' or 'timm:NAME' (random weights unless "
              "--weights; optional packages), or 'module:factory' (factory() returns an nn.Module)")
IMAGE_SIZE_HELP = ("resize each image's shorter side to N and crop the centre N×N (and build the models with a "
                   "fixed input size, e.g. ViT, for N); default: the torchvision/timm model's own size, else as they are")


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


def parse_options(pairs: Iterable[str]) -> dict[str, Any]:
    """``--option KEY=VALUE`` (repeatable) → {KEY: VALUE}, VALUE parsed as JSON when it can be."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise ValueError(f"--option must be KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value  # a plain string such as a layer name
    return options


def load_model(spec: str, weights: str | None, image_size: int | None = None) -> nn.Module:
    """``--model`` / ``--weights`` / ``--image-size``: see ``saliency_fast.models.load_model``. A missing
    optional package is reported as a bad ``--model`` (the CLI prints it as one line)."""
    try:
        return _load_model(spec, weights, image_size)
    except ImportError as error:
        raise ValueError(str(error)) from error


def image_preparation(model: nn.Module, image_size: int | None) -> tuple[int | None, int | None]:
    """(side, channels) the images are brought to: ``--image-size`` or the wrapped model's own size,
    and the channels of a :class:`Normalized` model (grayscale is repeated)."""
    if isinstance(model, Normalized):
        return image_size or model.input_size, model.channels
    return image_size, None


def load_images(path: str | None, model_spec: str, count: int, image_size: int | None = None,
                channels: int | None = None) -> torch.Tensor:
    """``--images`` / ``--count``: the first ``count`` images of a file or folder, or by default the
    first test digits (MNIST digits with ``--model mnist``), prepared as :func:`prepare_image` does."""
    if count < 1:
        raise ValueError(f"--count must be >= 1, got {count}")
    if path is None:
        if model_spec not in ("digits", "mnist") and not model_spec.startswith(("torchvision:", "timm:")):
            raise ValueError("--images is required with a user model")
        from ..data import load_digits, load_mnist

        images = list((load_mnist if model_spec == "mnist" else load_digits)("test")[0][:count])
    else:
        source = open_source(path)
        if len(source) == 0:
            raise ValueError(f"--images {path} holds no images")
        images = [source.load(i) for i in range(min(count, len(source)))]
    return torch.stack([prepare_image(image, image_size, channels) for image in images]).float()
