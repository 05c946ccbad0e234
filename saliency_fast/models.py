"""Small models for the embedded digits and for tests, and the bundled pretrained weights.

- :class:`DigitsCNN`: the default classifier of the 32×32 digits (two conv blocks and a linear
  head, ~25k parameters) — small so that SAMP on a batch of 64 images runs quickly on a CPU.
- :func:`digits_cnn`: a DigitsCNN with the weights shipped in saliency_fast/weights/digits_cnn.pt,
  trained by scripts/train_digits.py and loaded with ``torch.load(..., weights_only=True)``.
- :class:`LinearModel`: flatten → Linear, a model linear in its input (completeness is exact for
  path methods on it), for tests.
"""
from __future__ import annotations

from importlib import resources
from typing import Sequence, Union

import torch
from torch import Tensor, nn

__all__ = ["DigitsCNN", "digits_cnn", "LinearModel", "DIGITS_CNN_WEIGHTS"]

DIGITS_CNN_WEIGHTS = "digits_cnn.pt"  # file name inside saliency_fast/weights/


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


def digits_cnn_weights_path():
    """A Traversable for the bundled weights file (inside the installed package)."""
    return resources.files("saliency_fast") / "weights" / DIGITS_CNN_WEIGHTS


def digits_cnn(pretrained: bool = True, map_location: Union[str, torch.device] = "cpu") -> DigitsCNN:
    """A :class:`DigitsCNN` in eval mode; with ``pretrained=True`` it carries the bundled weights
    (test accuracy ≥ 95% on ``load_digits("test")``; see scripts/train_digits.py), loaded with
    ``weights_only=True`` so the file cannot run code.
    """
    model = DigitsCNN()
    if pretrained:
        path = digits_cnn_weights_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"the bundled weights saliency_fast/weights/{DIGITS_CNN_WEIGHTS} are missing; reinstall "
                "saliency_fast, or recreate them with `python scripts/train_digits.py`, or pass pretrained=False"
            )
        with resources.as_file(path) as file:
            state = torch.load(file, map_location=map_location, weights_only=True)
        model.load_state_dict(state)
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
