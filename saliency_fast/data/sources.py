"""Images to attribute, from wherever they are: a tensor or NumPy array (N, C, H, W) or (N, H, W),
a .pt/.npy file, a folder of image files, or any map-style dataset.

:func:`open_source` turns ``data`` into a source: ``len(source)``, ``source.load(index)`` → a
(C, H, W) float tensor (uint8 scaled to [0, 1]; it may raise for an unreadable item),
``source.fingerprint()`` (a sha256 identifying the data, from a sample of a folder or a dataset)
and ``source.description``; a folder source also has ``name(index)``, the file's relative path.
:func:`prepare_image` / :class:`PreparedImages` fit images to a model (size, channels).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .._io import tensor_bytes

__all__ = ["open_source", "prepare_image", "PreparedImages", "ArraySource", "FolderSource", "DatasetSource",
           "load_checked", "first_image", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
FINGERPRINT_SAMPLES = 64  # items hashed from a folder or a Dataset (a full hash would read everything)


def _to_float_image(value: Any) -> Tensor:
    """One item → a (C, H, W) floating tensor; uint8 is scaled to [0, 1]; PIL images are decoded."""
    if isinstance(value, (tuple, list)):  # (image, label, ...) items
        if not value:
            raise ValueError("the item is an empty tuple")
        value = value[0]
    if isinstance(value, dict):
        for key in ("image", "images", "input", "inputs", "x"):
            if key in value:
                value = value[key]
                break
        else:
            raise ValueError(f"the item is a dict without an 'image'/'input'/'x' key (keys: {sorted(value)})")
    if _is_pil_image(value):
        return _pil_to_tensor(value)
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.array(value))
    if not isinstance(value, Tensor):
        raise TypeError(f"the item is a {type(value).__name__}, not an image tensor, array or PIL image")
    if value.dtype == torch.uint8:
        value = value.float() / 255.0
    elif value.dtype in (torch.float16, torch.bfloat16):
        value = value.float()
    elif not value.is_floating_point():
        raise TypeError(f"the item has dtype {value.dtype}; images must be floating or uint8")
    if value.dim() == 2:
        value = value.unsqueeze(0)
    if value.dim() != 3:
        raise ValueError(f"the item has shape {tuple(value.shape)}, not (C, H, W) or (H, W)")
    return value


def _is_pil_image(value: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency of the folder source only
        return False
    return isinstance(value, Image.Image)


def _pil_to_tensor(image: Any) -> Tensor:  # a PIL.Image.Image
    """Grayscale modes → 1 channel, everything else → RGB; values scaled to [0, 1]."""
    if image.mode.startswith("I;16"):
        array = np.asarray(image, dtype=np.float32) / 65535.0
    else:
        image = image.convert("L" if image.mode in ("1", "L", "LA") else "RGB")
        array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()


class ArraySource:
    """A torch tensor or a (possibly memory-mapped) NumPy array of shape (N, C, H, W) or (N, H, W)."""

    def __init__(self, array: Union[Tensor, np.ndarray], description: str) -> None:
        if array.ndim not in (3, 4):
            raise ValueError(f"data must have shape (N, C, H, W) or (N, H, W), got {tuple(array.shape)}")
        self.array, self.description = array, description

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def load(self, index: int) -> Tensor:
        item = self.array[index]
        return _to_float_image(item.clone() if isinstance(item, Tensor) else np.array(item))

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"array{tuple(self.array.shape)}{self.array.dtype}".encode())
        rows = max(1, (1 << 26) // max(1, int(np.prod(self.array.shape[1:]))))  # ~64M elements a chunk
        for start in range(0, len(self), rows):
            chunk = self.array[start : start + rows]
            digest.update(tensor_bytes(chunk) if isinstance(chunk, Tensor) else np.ascontiguousarray(chunk).tobytes())
        return digest.hexdigest()


class FolderSource:
    """Image files under a folder (recursively, sorted by relative path), decoded with Pillow."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files = sorted((p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                            key=lambda p: p.relative_to(folder).as_posix())
        if not self.files:
            raise ValueError(f"the folder {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        self.description = f"folder {folder}"

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Tensor:
        from PIL import Image

        with Image.open(self.files[index]) as image:
            image.load()
            return _pil_to_tensor(image)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(b"folder")
        for path in self.files:
            digest.update(f"|{path.relative_to(self.folder).as_posix()}|{path.stat().st_size}".encode())
        for index in _sample_indices(len(self)):
            digest.update(self.files[index].read_bytes())
        return digest.hexdigest()

    def name(self, index: int) -> str:
        return self.files[index].relative_to(self.folder).as_posix()


class DatasetSource:
    """Any map-style dataset (``__len__`` and ``__getitem__``); items may be (image, label, ...)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.description = f"dataset {type(dataset).__qualname__}"

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> Tensor:
        return _to_float_image(self.dataset[index])

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"dataset|{type(self.dataset).__qualname__}|{len(self)}".encode())
        for index in _sample_indices(len(self)):
            try:
                digest.update(tensor_bytes(self.load(index)))
            except Exception as error:  # an unreadable item is part of the data's identity too
                digest.update(f"error:{type(error).__name__}".encode())
        return digest.hexdigest()


def _sample_indices(count: int) -> List[int]:
    if count <= FINGERPRINT_SAMPLES:
        return list(range(count))
    return sorted({round(i * (count - 1) / (FINGERPRINT_SAMPLES - 1)) for i in range(FINGERPRINT_SAMPLES)})


Source = Union[ArraySource, FolderSource, DatasetSource]


def open_source(data: Any) -> Source:
    """The source that reads ``data`` (see the module docstring); a clear error for anything else."""
    if isinstance(data, Tensor):
        return ArraySource(data.detach().cpu(), "tensor")
    if isinstance(data, np.ndarray):
        return ArraySource(data, "array")
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.is_dir():
            return FolderSource(path)
        if not path.is_file():
            raise FileNotFoundError(f"data path {path} does not exist (expected a .pt/.npy file or an image folder)")
        if path.suffix == ".npy":
            return ArraySource(np.load(path, mmap_mode="r"), f"file {path}")
        if path.suffix in (".pt", ".pth"):
            return ArraySource(_images_from_pt(torch.load(path, map_location="cpu", weights_only=True), path),
                               f"file {path}")
        raise ValueError(f"data file {path} must be .pt, .pth or .npy (or pass an image folder)")
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return DatasetSource(data)
    raise TypeError(f"data must be a tensor, a .pt/.npy path, an image folder or a torch Dataset, got {type(data).__name__}")


def _images_from_pt(content: Any, path: Path) -> Tensor:
    if isinstance(content, (tuple, list)) and content and isinstance(content[0], Tensor):
        return content[0]  # (images, labels)
    if isinstance(content, dict):
        for key in ("images", "inputs", "x", "data"):
            if isinstance(content.get(key), Tensor):
                return content[key]
    if isinstance(content, Tensor):
        return content
    raise ValueError(f"{path} must hold a tensor, an (images, labels) tuple or a dict with an 'images' tensor")


def load_checked(source: Source, index: int, shape: Optional[Tuple[int, ...]]) -> Tuple[Optional[Tensor], Optional[str]]:
    """(image, None) or (None, why it is skipped)."""
    try:
        image = source.load(index)
    except Exception as error:
        return None, f"unreadable: {type(error).__name__}: {error}"
    if shape is not None and tuple(image.shape) != shape:
        return None, f"shape {tuple(image.shape)} differs from the dataset's {shape}"
    if not bool(torch.isfinite(image).all()):
        return None, "contains NaN or Inf"
    return image, None


def first_image(source: Source) -> Tensor:
    """The first readable image (its shape is the reference; CAM methods find their layer on it)."""
    for index in range(len(source)):
        image, _ = load_checked(source, index, None)
        if image is not None:
            return image
    raise ValueError(f"none of the {len(source)} items of the data could be read as an image")


def prepare_image(image: Tensor, image_size: Optional[int] = None, channels: Optional[int] = None) -> Tensor:
    """A (C, H, W) image made to fit a model: grayscale repeated to ``channels`` (3 for RGB models),
    and with ``image_size``, the shorter side resized to it (bilinear, antialiased) and the centre
    cropped to image_size × image_size (torchvision's Resize + CenterCrop)."""
    if channels is not None and image.shape[0] != channels:
        if image.shape[0] != 1:
            raise ValueError(f"the image has {image.shape[0]} channels but the model takes {channels}")
        image = image.expand(channels, -1, -1)
    if image_size is not None:
        height, width = image.shape[-2:]
        scale = image_size / min(height, width)
        size = (max(image_size, round(height * scale)), max(image_size, round(width * scale)))
        if size != (height, width):
            # antialiased bilinear weights are convex: the values stay in the image's range
            image = torch.nn.functional.interpolate(image[None].float(), size=size, mode="bilinear",
                                                    align_corners=False, antialias=True)[0]
        top, left = (size[0] - image_size) // 2, (size[1] - image_size) // 2
        image = image[:, top : top + image_size, left : left + image_size]
    return image.contiguous()


class PreparedImages:
    """A map-style dataset over any ``data`` that ``attribute_dataset`` reads, each image passed
    through :func:`prepare_image` (the CLI's ``--image-size`` and grayscale-to-RGB)."""

    def __init__(self, data: Any, image_size: Optional[int] = None, channels: Optional[int] = None) -> None:
        self.source = open_source(data)
        self.image_size, self.channels = image_size, channels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Tensor:
        return prepare_image(self.source.load(index), self.image_size, self.channels)
