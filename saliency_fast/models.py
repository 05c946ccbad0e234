"""Small models for the embedded digits and for tests, and the bundled pretrained weights.

- :class:`DigitsCNN`: the default classifier of the 32×32 digits (two conv blocks and a linear
  head, ~25k parameters) — small so that SAMP on a batch of 64 images runs quickly on a CPU.
- :func:`digits_cnn`: a DigitsCNN with the weights shipped in saliency_fast/weights/digits_cnn.pt,
  trained by scripts/train_digits.py and loaded with ``torch.load(..., weights_only=True)``.
- :func:`mnist_cnn`: a DigitsCNN for 28×28 MNIST with the weights shipped in
  saliency_fast/weights/mnist_cnn.pt, trained by scripts/train_mnist.py on 4,000 real MNIST digits.
- :class:`LinearModel`: flatten → Linear, a model linear in its input (completeness is exact for
  path methods on it), for tests.
- :class:`Normalized`: applies the input normalisation (mean/std) inside the model, so that images,
  references, baselines, perturbations and budgets all stay in [0, 1] pixel space.
- :func:`load_model`: a model from a spec — "digits", "torchvision:NAME", "timm:NAME" (optional
  dependencies; random weights unless a weights file is given: nothing is downloaded) or
  "module:factory" — as every command's ``--model`` reads it.
"""
from __future__ import annotations

import importlib
import os
from importlib import resources
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

# A weights file as the commands' --weights reads it.
_WeightsPath = Union[str, "os.PathLike[str]"]

__all__ = ["DigitsCNN", "digits_cnn", "LinearModel", "DIGITS_CNN_WEIGHTS", "Normalized", "load_model",
           "torchvision_model", "timm_model", "load_state", "IMAGENET_MEAN", "IMAGENET_STD", "mnist_cnn",
           "MNIST_CNN_WEIGHTS"]

DIGITS_CNN_WEIGHTS = "digits_cnn.pt"  # file name inside saliency_fast/weights/
MNIST_CNN_WEIGHTS = "mnist_cnn.pt"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet models
IMAGENET_STD = (0.229, 0.224, 0.225)


class DigitsCNN(nn.Module):
    """CNN for (B, 1, 32, 32) digit images with values in [0, 1]; returns (B, 10) logits.

    features:   0 Conv(1→16, 3×3) · 1 ReLU · 2 MaxPool 2 → 16×16
                3 Conv(16→32, 3×3) · 4 ReLU · 5 MaxPool 2 → 8×8
    classifier: 0 Flatten · 1 Linear(32·8·8 → 10)

    Grad-CAM layer: ``GRADCAM_LAYER = "features.4"`` (dotted name, for
    ``model.get_submodule``) — the ReLU output of the last conv block, 32 maps of 16×16, the
    analogue of ResNet's layer4 output. :attr:`layer_for_gradcam` returns that module.
    ReLUs are not in-place so that forward hooks on them see their own output.
    """

    GRADCAM_LAYER = "features.4"

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16, image_size: int = 32):
        super().__init__()
        if image_size % 4 != 0:
            raise ValueError(f"image_size must be a multiple of 4 (two 2×2 poolings), got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * side * side, num_classes))

    @property
    def layer_for_gradcam(self) -> nn.Module:
        """The module whose output Grad-CAM explains (``self.get_submodule(GRADCAM_LAYER)``)."""
        return self.get_submodule(self.GRADCAM_LAYER)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def bundled_weights_path(file_name: str) -> Traversable:
    """A Traversable for a bundled weights file (inside the installed package)."""
    return resources.files("saliency_fast") / "weights" / file_name


def digits_cnn_weights_path() -> Traversable:
    """A Traversable for the bundled digits weights file (inside the installed package)."""
    return bundled_weights_path(DIGITS_CNN_WEIGHTS)


def _bundled(model: nn.Module, path: Traversable, file_name: str, script: str,
             map_location: Union[str, torch.device]) -> nn.Module:
    """Load the bundled weights at ``path`` (weights_only=True), or say how to recreate them."""
    if not path.is_file():
        raise FileNotFoundError(
            f"the bundled weights saliency_fast/weights/{file_name} are missing; reinstall "
            f"saliency_fast, or recreate them with `python scripts/{script}`, or pass pretrained=False"
        )
    with resources.as_file(path) as file:
        model.load_state_dict(torch.load(file, map_location=map_location, weights_only=True))
    return model


def digits_cnn(pretrained: bool = True, map_location: Union[str, torch.device] = "cpu") -> DigitsCNN:
    """A :class:`DigitsCNN` in eval mode; with ``pretrained=True`` it carries the bundled weights
    (test accuracy ≥ 95% on ``load_digits("test")``; see scripts/train_digits.py), loaded with
    ``weights_only=True`` so the file cannot run code.
    """
    model = DigitsCNN()
    if pretrained:
        _bundled(model, digits_cnn_weights_path(), DIGITS_CNN_WEIGHTS, "train_digits.py", map_location)
    return model.to(map_location).eval()


def mnist_cnn(pretrained: bool = True, map_location: Union[str, torch.device] = "cpu") -> DigitsCNN:
    """A :class:`DigitsCNN` for (B, 1, 28, 28) MNIST digits in [0, 1], in eval mode; with
    ``pretrained=True`` the bundled weights trained on the 4,000 training digits of
    :func:`saliency_fast.data.load_mnist` (scripts/train_mnist.py), loaded with ``weights_only=True``.
    """
    model = DigitsCNN(image_size=28)
    if pretrained:
        _bundled(model, bundled_weights_path(MNIST_CNN_WEIGHTS), MNIST_CNN_WEIGHTS, "train_mnist.py", map_location)
    return model.to(map_location).eval()


class LinearModel(nn.Module):
    """logits = W · flatten(x) + b: a model linear in its input, for exactness tests (e.g. SAMP's
    completeness and IG equal input×gradient on it up to the reference term).

    Args:
        input_shape: (C, H, W) of one image.
        num_classes: number of outputs.
        bias: include the bias b.
    """

    def __init__(self, input_shape: Sequence[int] = (1, 32, 32), num_classes: int = 10, bias: bool = True):
        super().__init__()
        features = 1
        for dim in input_shape:
            features *= int(dim)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(features, num_classes, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"LinearModel expects inputs of shape (B, {self.input_shape}), got {tuple(x.shape)}")
        return self.linear(self.flatten(x))


class Normalized(nn.Module):
    """``model((x − mean) / std)``: the input normalisation as part of the model.

    Attribution methods, references (zeros = black), perturbation metrics and SAMP's budgets then
    all work on images in [0, 1] pixel space, as the papers define them, while the wrapped model
    sees the normalised inputs it was trained on. Layer names for the CAM methods may omit the
    ``model.`` prefix ("layer4" names ``model.layer4``).

    Args:
        model: a classifier taking normalised (B, C, H, W) inputs.
        mean, std: per-channel statistics (C values each, std > 0).
    """

    mean: Tensor  # buffers, (1, C, 1, 1)
    std: Tensor

    def __init__(self, model: nn.Module, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        mean_t = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)  # cast to the input dtype per call
        std_t = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
        if mean_t.numel() != std_t.numel() or mean_t.numel() == 0:
            raise ValueError(f"mean and std need one value per channel each, got {mean_t.numel()} and {std_t.numel()}")
        if not bool(torch.isfinite(mean_t).all()) or not bool((std_t > 0).all()) or not bool(torch.isfinite(std_t).all()):
            raise ValueError(f"std must be finite and > 0 and mean finite, got mean={tuple(mean)} std={tuple(std)}")
        self.model = model
        self.input_size: Optional[int] = None  # the side the model was built for, where known (CLI default)
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    @property
    def channels(self) -> int:
        return self.mean.shape[1]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"Normalized expects (B, {self.channels}, H, W) images in [0, 1], got shape {tuple(x.shape)}")
        return self.model((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))

    def extra_repr(self) -> str:
        return f"mean={tuple(round(v, 4) for v in self.mean.flatten().tolist())}, " \
               f"std={tuple(round(v, 4) for v in self.std.flatten().tolist())}"


def _optional(package: str) -> ModuleType:
    try:
        return importlib.import_module(package)
    except (ImportError, RuntimeError) as error:  # RuntimeError: torchvision's "operator torchvision::nms does not exist" mismatch
        raise ImportError(f"--model {package}:NAME needs the optional package {package!r}, which did not import "
                          f"({error}); install one built for your torch (`pip install saliency_fast[models]`; see "
                          "README, 'Real models')") from error


def torchvision_model(name: str, image_size: Optional[int] = None) -> Normalized:
    """torchvision's architecture ``name`` with random weights (nothing is downloaded), wrapped in
    :class:`Normalized` with the ImageNet mean/std. ``image_size`` sets the input size of the
    models that fix it (vit_*); the others take any size."""
    models = _optional("torchvision").models
    if name not in models.list_models():
        raise ValueError(f"torchvision has no model {name!r}; see torchvision.models.list_models()")
    options = {"image_size": image_size} if image_size is not None and name.startswith("vit_") else {}
    model = Normalized(models.get_model(name, weights=None, **options), IMAGENET_MEAN, IMAGENET_STD)
    model.input_size = image_size or int(getattr(model.model, "image_size", 224))
    return model.eval()


def timm_model(name: str, image_size: Optional[int] = None) -> Normalized:
    """timm's model ``name`` with random weights (pretrained=False: nothing is downloaded), wrapped in
    :class:`Normalized` with the mean/std of its pretrained configuration. ``image_size`` sets the
    input size of the models that fix it (those with a patch embedding: ViT, DeiT, Swin, ...)."""
    timm = _optional("timm")
    if not timm.is_model(name):
        raise ValueError(f"timm has no model {name!r}; see timm.list_models()")
    model = timm.create_model(name, pretrained=False)
    if image_size is not None and hasattr(model, "patch_embed"):
        model = timm.create_model(name, pretrained=False, img_size=image_size)
    config = timm.data.resolve_data_config({}, model=model)
    wrapped = Normalized(model, config["mean"], config["std"])
    wrapped.input_size = image_size or int(config["input_size"][-1])
    return wrapped.eval()


def load_state(model: nn.Module, path: _WeightsPath, spec: str = "the model") -> nn.Module:
    """Load a state_dict file (``torch.save(model.state_dict(), path)``; a checkpoint dict with a
    "state_dict" entry, or a saliency-fast training checkpoint, too) with ``weights_only=True``: no
    pickled code runs. For a :class:`Normalized` model, the file may hold the wrapped architecture's
    state or the wrapper's. Every problem with the file is a ValueError (or FileNotFoundError)
    naming it and saying what to pass instead."""
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
    target = model.model if isinstance(model, Normalized) and not any(k.startswith("model.") for k in state) else model
    try:
        target.load_state_dict(state)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        raise ValueError(f"--weights {path} does not fit --model {spec}: {' '.join(lines)[:300]}; pass the weights "
                         "saved from that model") from error
    return model


def import_factory(spec: str) -> Callable[..., Any]:
    """``module:factory`` → the callable (ValueError naming --model if it cannot be imported)."""
    module_name, separator, factory_name = spec.partition(":")
    if not separator or not module_name or not factory_name:
        raise ValueError(f"--model must be 'digits', 'mnist', 'torchvision:NAME', 'timm:NAME' or 'module:factory', "
                         f"got {spec!r}")
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


def load_model(spec: str, weights: Optional[_WeightsPath] = None, image_size: Optional[int] = None) -> nn.Module:
    """The model named by ``spec``, in eval mode:

    - "digits" / "mnist": :func:`digits_cnn` / :func:`mnist_cnn` (bundled weights unless ``weights``);
    - "torchvision:NAME" / "timm:NAME": :func:`torchvision_model` / :func:`timm_model` (random
      weights unless ``weights``; inputs in [0, 1], normalised inside the model);
    - "package.module:factory": ``factory()``, an nn.Module.
    ``weights``: a state_dict file, loaded with ``weights_only=True`` (see :func:`load_state`).
    """
    if not isinstance(spec, str):
        raise TypeError(f"--model must be a string, got {type(spec).__name__}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"--image-size must be a positive int, got {image_size!r}")
    source, separator, name = spec.partition(":")
    model: nn.Module
    if spec in ("digits", "mnist"):
        model = (digits_cnn if spec == "digits" else mnist_cnn)(pretrained=weights is None)
    elif separator and source in ("torchvision", "timm") and name:
        model = (torchvision_model if source == "torchvision" else timm_model)(name, image_size)
    else:
        model = import_factory(spec)()
        if not isinstance(model, nn.Module):
            raise TypeError(f"--model {spec}: {name}() returned a {type(model).__name__}, not an nn.Module")
    if weights is not None:
        load_state(model, weights, spec)
    return model.eval()
