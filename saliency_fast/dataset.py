"""Dataset-scale attribution: ``attribute_dataset`` writes maps to shard files, ``load_attributions``
reads them back in dataset order.

Layout of ``out_dir``::

    manifest.json          what was computed (method and all its parameters, model and input
                           fingerprints, package version, storage dtype, shard index, skipped images)
    shard-000000.pt        one file per ``shard_size`` consecutive dataset indices: the maps of the
    shard-000001.pt        readable images, their dataset indices and explained classes, optional
    ...                    Deletion/Insertion AUCs, and the images of that range that were skipped

Why it is built this way:

- **Kill-safe.** Every file is written to a temporary sibling, flushed to disk and renamed into place
  (``os.replace`` is atomic), so a shard file either exists complete or not at all. A run killed at any
  moment (even ``kill -9``) loses at most the shards it was computing; ``resume=True`` (the default)
  skips every finished shard. Temporary files a killed run left are removed by the next run.
- **Checksummed.** Every shard carries a checksum of its content and the identity of the run that
  wrote it; the manifest records each shard's checksum. Resuming recomputes a shard that is damaged,
  truncated or from another run (with a warning naming it); ``load_attributions`` raises
  ``CorruptFileError`` naming the file, and validates the manifest's fields before trusting them.
- **One writer.** The run owns ``out_dir`` through a lock file (``.lock``: pid, host); a second run
  into the same folder raises ``FolderInUseError`` naming the owner. The lock of a killed run is
  taken over with a warning.
- **Attribution mode.** The model runs in eval mode with frozen parameters (a model passed in train
  mode is put back in train mode afterwards), so BatchNorm statistics never change and dropout never
  randomises the explained class.
- **Reproducible.** A shard is always cut into the same batches (consecutive readable images,
  ``batch_size`` at a time, counted from the shard's start), whoever computes it and whenever, so a
  resumed run and a ``torchrun`` run give the same maps as one uninterrupted process.
- **Refuses to mix runs.** The manifest records an identity (method + every parameter, model weights
  fingerprint, input fingerprint, shard size, storage dtype, AMP, evaluation); resuming into a folder
  whose identity differs raises a ``ValueError`` naming the fields that differ.
- **Multi-process.** Under ``torchrun`` (WORLD_SIZE > 1) the pending shards are dealt round-robin to the
  ranks (gloo on CPU, NCCL on CUDA); each rank writes its own shard files and rank 0 the manifest.
- **Memory-safe.** An out-of-memory error halves the batch (and the method's internal pass size) and
  retries, down to one image; the size that worked is kept for the rest of the run.
- **Bad input is reported, not fatal.** An image that cannot be read, has a different shape from the
  first readable image, or holds NaN/Inf is skipped with a warning naming its index and listed in the
  manifest; ``load_attributions`` returns NaN maps at those indices so dataset indices stay aligned.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import inspect
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from .methods import CAM, GradCAM, GradCAMPlusPlus, GuidedIG, InputXGradient, IntegratedGradients, SAMP, Saliency, SmoothGrad
from .methods import LIME, LRP, RISE, XRAI, BlurIG, DeepLift
from ._common import BoundModel, attribution_mode, check_positive_int
from ._distributed import ProcessGroup
from ._version import __version__
from ._io import (CHECKSUM_KEY, CorruptFileError, atomic_write_bytes, content_checksum, load_verified,
                  remove_stale_temporaries, save_verified)
from ._lock import FolderInUseError, FolderLock

__all__ = ["attribute_dataset", "load_attributions", "make_method", "method_parameters", "AttributionSet",
           "PreparedImages", "prepare_image", "resolve_cam_options",
           "METHOD_NAMES", "MANIFEST_NAME", "CorruptFileError", "FolderInUseError"]

FORMAT_VERSION = 2  # 2: shard checksums and run identity in every shard
MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = "shard-{:06d}.pt"
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
FINGERPRINT_SAMPLES = 64  # items hashed from a folder or a Dataset (a full hash would read everything)

# name → (class, defaults layered under the user's options)
_METHODS: Dict[str, Tuple[type, Dict[str, Any]]] = {
    "samp": (SAMP, {}),
    "samp++": (SAMP, {"n_frag": 50, "momentum": 0.5}),  # exactly SAMP.plus
    "ig": (IntegratedGradients, {}),
    "saliency": (Saliency, {}),
    "inputxgradient": (InputXGradient, {}),
    "smoothgrad": (SmoothGrad, {}),
    "gradcam": (GradCAM, {}),
    "guidedig": (GuidedIG, {}),
    "lrp": (LRP, {}),
    "deeplift": (DeepLift, {}),
    "rise": (RISE, {}),
    "lime": (LIME, {}),
    "xrai": (XRAI, {}),
    "blurig": (BlurIG, {}),
    "gradcam++": (GradCAMPlusPlus, {}),
    "cam": (CAM, {}),
}
# methods at a layer (layer=None: found on the model, see find_cam_layer)
_CAM_FAMILY = (GradCAM, GradCAMPlusPlus, CAM)
METHOD_NAMES = tuple(_METHODS)
# torch >= 2.5 names it torch.OutOfMemoryError; before, only the CUDA alias existed.
OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
# Options naming a method's internal images-per-pass; shrunk together with the batch on OOM.
_PASS_SIZE_ATTRIBUTES = ("internal_batch_size", "batch_size")


# ==============================================================================================
# method registry
# ==============================================================================================
def _method_entry(name: str) -> Tuple[type, Dict[str, Any]]:
    if not isinstance(name, str) or name.lower() not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(METHOD_NAMES)}, got {name!r}")
    return _METHODS[name.lower()]


def _layer_name(model: nn.Module, layer) -> str:
    """The full dotted name of ``layer`` (a module or a name, "layer4" → "model.layer4" in a wrapper)."""
    from .methods.gradcam import layer_name, resolve_layer

    return layer_name(model, resolve_layer(model, layer))


def resolve_cam_options(name: str, model: nn.Module, options: Dict[str, Any], example: Tensor) -> Dict[str, Any]:
    """For a CAM-family method without a ``layer`` option: the layer (and reshape transform) that
    ``find_cam_layer`` picks on one ``example`` image, filled into the options and logged, so the
    manifest records the choice. Other methods' options are returned as they are."""
    cls, _ = _method_entry(name)
    if cls not in _CAM_FAMILY or options.get("layer") is not None:
        return options
    from .methods.gradcam import vit_reshape_transform

    probe = cls(model, **{**options, "upsample": False})
    device = next((t.device for t in list(model.parameters()) + list(model.buffers())), example.device)
    probe.attribute(example[None].to(device))  # finds (and logs) the layer as the method itself would
    resolved = {**options, "layer": _layer_name(model, probe.layer)}
    if probe.reshape_transform is not None and options.get("reshape_transform") is None:
        found = probe.reshape_transform
        resolved["reshape_transform"] = "vit" if found == vit_reshape_transform else found
    return resolved


def _jsonable(value):
    """A JSON-safe record of an option value (tensors by shape and content hash)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Tensor):
        return {"tensor": list(value.shape), "dtype": str(value.dtype), "sha256": _tensor_hash(value)}
    if isinstance(value, np.generic):
        return value.item()
    return repr(value)


def method_parameters(name: str, model: Optional[nn.Module] = None, **options) -> Dict[str, Any]:
    """Every constructor parameter of method ``name`` with the defaults filled in (JSON-safe): the
    record the manifest keeps, so that changing any option is detected on resume."""
    cls, defaults = _method_entry(name)
    options = {**defaults, **options}
    signature = inspect.signature(cls.__init__)
    accepted = [p for p in signature.parameters if p not in ("self", "model")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"method {name!r} has no option(s) {', '.join(unknown)}; it accepts: {', '.join(accepted)}")
    if cls in _CAM_FAMILY and model is not None:
        declared = getattr(model, "GRADCAM_LAYER", None)
        layer = options.get("layer", declared if isinstance(declared, str) else None)
        options["layer"] = None if layer is None else _layer_name(model, layer)
    transform = options.get("reshape_transform")
    if callable(transform) and hasattr(transform, "__qualname__"):  # a function: its name, not its address
        options["reshape_transform"] = f"{transform.__module__}.{transform.__qualname__}"
    bound = signature.bind(None, None, **options)
    bound.apply_defaults()
    return {k: _jsonable(v) for k, v in bound.arguments.items() if k not in ("self", "model")}


def make_method(name: str, model: nn.Module, **options):
    """The attribution method called ``name`` on ``model``.

    Names: samp, samp++ (SAMP.plus: n_frag=50, momentum=0.5), ig, saliency, inputxgradient,
    smoothgrad, gradcam, gradcam++ and cam (default layer: ``model.GRADCAM_LAYER``, else found at the
    first call by ``find_cam_layer`` and logged), guidedig, lrp, deeplift, rise, lime, xrai, blurig.
    ``options`` go to the method's constructor (e.g. ``make_method("ig", model, n_steps=16)``).
    """
    return _build_method(name, model, model, options)


def _build_method(name: str, run_model: nn.Module, user_model: nn.Module, options: Dict[str, Any]):
    """Build on ``run_model`` (the model possibly wrapped for AMP/channels-last/compile); layer
    names are resolved on ``user_model``, whose submodules ``run_model`` contains."""
    cls, defaults = _method_entry(name)
    options = {**defaults, **options}
    method_parameters(name, user_model, **options)  # validates option names
    if cls in _CAM_FAMILY and options.get("layer") is not None:
        from .methods.gradcam import resolve_layer

        options["layer"] = resolve_layer(user_model, options["layer"])
    return cls(run_model, **options)


# ==============================================================================================
# fingerprints
# ==============================================================================================
def _tensor_bytes(tensor: Tensor) -> bytes:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def _tensor_hash(tensor: Tensor) -> str:
    digest = hashlib.sha256(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
    digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the model's class name and its state_dict (names, dtypes, shapes, values)."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"|{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


# ==============================================================================================
# data sources: len(), load(index) -> (C, H, W) float tensor (may raise), fingerprint()
# ==============================================================================================
def _to_float_image(value) -> Tensor:
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


def _is_pil_image(value) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency of the folder source only
        return False
    return isinstance(value, Image.Image)


def _pil_to_tensor(image) -> Tensor:
    """Grayscale modes → 1 channel, everything else → RGB; values scaled to [0, 1]."""
    if image.mode.startswith("I;16"):
        array = np.asarray(image, dtype=np.float32) / 65535.0
    else:
        image = image.convert("L" if image.mode in ("1", "L", "LA") else "RGB")
        array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()


class _ArraySource:
    """A torch tensor or a (possibly memory-mapped) NumPy array of shape (N, C, H, W) or (N, H, W)."""

    def __init__(self, array, description: str):
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
            digest.update(_tensor_bytes(chunk) if isinstance(chunk, Tensor) else np.ascontiguousarray(chunk).tobytes())
        return digest.hexdigest()


class _FolderSource:
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

    def __init__(self, data, image_size: Optional[int] = None, channels: Optional[int] = None):
        self.source = _open_source(data)
        self.image_size, self.channels = image_size, channels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Tensor:
        return prepare_image(self.source.load(index), self.image_size, self.channels)


class _DatasetSource:
    """Any map-style dataset (``__len__`` and ``__getitem__``); items may be (image, label, ...)."""

    def __init__(self, dataset):
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
                digest.update(_tensor_bytes(self.load(index)))
            except Exception as error:  # an unreadable item is part of the data's identity too
                digest.update(f"error:{type(error).__name__}".encode())
        return digest.hexdigest()


def _sample_indices(count: int) -> List[int]:
    if count <= FINGERPRINT_SAMPLES:
        return list(range(count))
    return sorted({round(i * (count - 1) / (FINGERPRINT_SAMPLES - 1)) for i in range(FINGERPRINT_SAMPLES)})


def _open_source(data):
    if isinstance(data, Tensor):
        return _ArraySource(data.detach().cpu(), "tensor")
    if isinstance(data, np.ndarray):
        return _ArraySource(data, "array")
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.is_dir():
            return _FolderSource(path)
        if not path.is_file():
            raise FileNotFoundError(f"data path {path} does not exist (expected a .pt/.npy file or an image folder)")
        if path.suffix == ".npy":
            return _ArraySource(np.load(path, mmap_mode="r"), f"file {path}")
        if path.suffix in (".pt", ".pth"):
            return _ArraySource(_images_from_pt(torch.load(path, map_location="cpu", weights_only=True), path),
                                f"file {path}")
        raise ValueError(f"data file {path} must be .pt, .pth or .npy (or pass an image folder)")
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return _DatasetSource(data)
    raise TypeError(f"data must be a tensor, a .pt/.npy path, an image folder or a torch Dataset, got {type(data).__name__}")


def _images_from_pt(content, path: Path) -> Tensor:
    if isinstance(content, (tuple, list)) and content and isinstance(content[0], Tensor):
        return content[0]  # (images, labels)
    if isinstance(content, dict):
        for key in ("images", "inputs", "x", "data"):
            if isinstance(content.get(key), Tensor):
                return content[key]
    if isinstance(content, Tensor):
        return content
    raise ValueError(f"{path} must hold a tensor, an (images, labels) tuple or a dict with an 'images' tensor")


def _load_checked(source, index: int, shape: Optional[Tuple[int, ...]]) -> Tuple[Optional[Tensor], Optional[str]]:
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


def _reference_shape(source) -> Tuple[int, ...]:
    """The (C, H, W) of the first readable image: the shape every image must have."""
    return tuple(_first_image(source).shape)


def _first_image(source) -> Tensor:
    """The first readable image (its shape is the reference; CAM methods find their layer on it)."""
    for index in range(len(source)):
        image, _ = _load_checked(source, index, None)
        if image is not None:
            return image
    raise ValueError(f"none of the {len(source)} items of the data could be read as an image")


# ==============================================================================================
# files
# ==============================================================================================
def _write_manifest(out_dir: Path, manifest: dict) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True).encode()
    atomic_write_bytes(out_dir / MANIFEST_NAME, lambda handle: handle.write(text))


def _read_manifest(out_dir: Path) -> Optional[dict]:
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


def _shard_ranges(count: int, shard_size: int) -> List[Tuple[int, int]]:
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


def check_model_accepts(model: nn.Module, shape: Tuple[int, ...], where: str, device=None) -> None:
    """One forward of a zero image of ``shape`` (C, H, W): refuse images the model cannot take,
    or a model that does not return (B, classes) logits, naming ``where`` the images come from."""
    parameter = next((t for t in [*model.parameters(), *model.buffers()]), None)
    device = device if device is not None else (parameter.device if parameter is not None else "cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    try:
        with attribution_mode(model), torch.no_grad():
            output = model(torch.zeros((1, *shape), device=device, dtype=dtype))
    except OutOfMemoryError:
        return  # not a shape problem: the run's own out-of-memory handling decides
    except RuntimeError as error:
        raise ValueError(f"the model cannot take the {'×'.join(map(str, shape))} (C×H×W) images of {where}: "
                         f"{str(error).strip().splitlines()[0][:200]}. Pass images of the size and channel count the "
                         "model was built for (the digits model takes 1×32×32)") from error
    if isinstance(output, torch.Tensor) and output.dim() != 2:
        raise ValueError(f"the model must return (B, classes) logits, but returned shape {tuple(output.shape)} "
                         "for a batch of 1")


# ==============================================================================================
# processes and devices
# ==============================================================================================
def _amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where supported: its range keeps small input gradients from underflowing to zero."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


class _RunModel(nn.Module):
    """The user's model under autocast and/or channels-last and/or torch.compile, with float32
    logits out, so every method sees an ordinary float32 classifier."""

    def __init__(self, model: nn.Module, amp_dtype: Optional[torch.dtype], channels_last: bool, compiled: bool):
        super().__init__()
        self.model = model
        self.amp_dtype, self.channels_last = amp_dtype, channels_last
        object.__setattr__(self, "_call", torch.compile(model) if compiled else model)  # not a submodule

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.amp_dtype is None:
            return self._call(x)
        with torch.autocast(device_type=x.device.type, dtype=self.amp_dtype):
            logits = self._call(x)
        return logits.float()


# ==============================================================================================
# the run
# ==============================================================================================

def _identity_differences(saved: dict, current: dict) -> List[str]:
    differences = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            old, new = json.dumps(saved.get(key), sort_keys=True), json.dumps(current.get(key), sort_keys=True)
            if len(old) + len(new) > 200:
                old, new = old[:90] + "…", new[:90] + "…"
            differences.append(f"{key} (saved {old}, now {new})")
    return differences


class _Runner:
    """Computes the shards of one rank; holds the batch size that last fit in memory."""

    def __init__(self, method, run_model, device, batch_size, storage_dtype, evaluate, progress_bar):
        self.method, self.run_model, self.device = method, run_model, device
        self.batch_size, self.storage_dtype, self.evaluate = batch_size, storage_dtype, evaluate
        self.eval_max_batch: Optional[int] = None
        self.progress_bar = progress_bar

    # -- one shard -------------------------------------------------------------------------
    def shard(self, source, index: int, start: int, stop: int, shape) -> dict:
        outputs: Dict[str, List[Tensor]] = {"maps": [], "targets": [], "deletion_auc": [], "insertion_auc": []}
        indices: List[int] = []
        skipped: List[List] = []
        pending: List[Tuple[int, Tensor]] = []
        items = self._valid_items(source, start, stop, shape, skipped)
        exhausted = False
        while True:
            while not exhausted and len(pending) < self.batch_size:
                item = next(items, None)
                exhausted = item is None
                if item is not None:
                    pending.append(item)
            if not pending:
                break
            chunk = pending[: self.batch_size]
            out_of_memory = None
            try:
                result = self._batch(torch.stack([image for _, image in chunk]))
            except OutOfMemoryError as error:
                out_of_memory = str(error)
            if out_of_memory is not None:  # outside the except block: the failed graph is released
                self._shrink(out_of_memory, len(chunk))
                continue
            for key, value in result.items():
                outputs[key].append(value)
            indices.extend(i for i, _ in chunk)
            pending = pending[len(chunk):]
            self.progress_bar.update(len(chunk))
        self.progress_bar.update(len(skipped))
        record = {"shard": index, "start": start, "stop": stop, "indices": torch.tensor(indices, dtype=torch.long),
                  "skipped": skipped, "batch_size": self.batch_size}
        for key, values in outputs.items():
            if values:
                record[key] = torch.cat(values)
        if not indices:  # an all-skipped shard still records empty tensors of the right kind
            record["maps"] = torch.empty((0,) + tuple(shape[1:]), dtype=self.storage_dtype)
            record["targets"] = torch.empty(0, dtype=torch.long)
        return record

    def _valid_items(self, source, start, stop, shape, skipped) -> Iterator[Tuple[int, Tensor]]:
        for index in range(start, stop):
            image, reason = _load_checked(source, index, shape)
            if image is None:
                name = source.name(index) if hasattr(source, "name") else None
                where = f"image {index}" + (f" ({name})" if name else "")
                warnings.warn(f"attribute_dataset: skipping {where}: {reason}", stacklevel=4)
                skipped.append([index, reason] + ([name] if name else []))
                continue
            yield index, image

    # -- one batch -------------------------------------------------------------------------
    def _batch(self, images: Tensor) -> Dict[str, Tensor]:
        x = images.to(self.device, non_blocking=True)
        with torch.no_grad():
            target = self.run_model(x).argmax(dim=1)
        maps = self.method.attribute(x, target).detach()
        result = {"maps": maps.to(self.storage_dtype).cpu(), "targets": target.cpu()}
        if self.evaluate:
            from .metrics import deletion_insertion

            scores = deletion_insertion(self.run_model, x, maps.float(), target=target,
                                        max_batch=self.eval_max_batch, allow_constant=True)
            result["deletion_auc"] = scores.deletion_auc.float().cpu()
            result["insertion_auc"] = scores.insertion_auc.float().cpu()
        return result

    def _shrink(self, error: str, attempted: int) -> None:
        """After an OOM: halve the batch, make the method's internal passes one batch copy, halve
        the evaluation's images per call. Raise when everything is already at one image."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        pass_sizes = [getattr(self.method, a) for a in _PASS_SIZE_ATTRIBUTES if hasattr(self.method, a)]
        eval_at_minimum = not self.evaluate or self.eval_max_batch == 1
        if attempted == 1 and all(size == 1 for size in pass_sizes) and eval_at_minimum:
            raise OutOfMemoryError(
                f"out of memory with a single image per model call ({error}); use a device with more memory, "
                "smaller images, or a smaller model")
        self.batch_size = max(1, attempted // 2)
        for attribute in _PASS_SIZE_ATTRIBUTES:
            if hasattr(self.method, attribute):
                setattr(self.method, attribute, self.batch_size)
        if self.evaluate:
            current = self.eval_max_batch or (1 << 22)
            self.eval_max_batch = max(1, current // 2)
        warnings.warn(f"attribute_dataset: out of memory with {attempted} images; retrying with "
                      f"batch_size={self.batch_size}", stacklevel=4)


def attribute_dataset(
    model: nn.Module,
    data,
    method: str,
    out_dir: Union[str, os.PathLike],
    batch_size: int = 64,
    shard_size: int = 1024,
    resume: bool = True,
    device: Union[str, torch.device, None] = None,
    amp: bool = False,
    channels_last: bool = False,
    compile: bool = False,
    evaluate: bool = False,
    *,
    method_options: Optional[Dict[str, Any]] = None,
    dtype: str = "float32",
    progress: bool = True,
    output=None,
) -> dict:
    """Attribute every image of ``data`` with ``method`` and store the maps in ``out_dir``.

    Args:
        model: a classifier (B, C, H, W) → (B, classes); moved to ``device``. The explained class of
            each image is the model's prediction (stored as ``targets``).
        data: a (N, C, H, W) or (N, H, W) tensor or NumPy array (uint8 is scaled to [0, 1]), a path
            to a .pt file (a tensor, an (images, labels) tuple or {"images": tensor}) or a .npy file
            (memory-mapped), a folder of images (recursive, sorted by relative path, decoded with
            Pillow: grayscale → 1 channel, else RGB, scaled to [0, 1]), or any map-style Dataset
            whose items are images or (image, label, ...) tuples.
        method: one of ``METHOD_NAMES``; ``method_options`` go to its constructor. Or an
            attribution method object built on ``model`` (e.g. ``sf.interop.from_captum(...)``); its
            ``config()`` (or repr) identifies it for resume, and amp/channels_last/compile are refused.
        out_dir: output folder (created). See the module docstring for its layout.
        batch_size: images per attribution call (reduced automatically on out-of-memory).
        shard_size: images per shard file: the unit of resumption and of work between processes.
        resume: skip the shards already in ``out_dir`` (refusing a folder written by a different
            model, method, options or data); False deletes them and starts over.
        device: where to compute (default: the model's device; under torchrun with CUDA, the local GPU).
        amp: run the model's forward under autocast (bfloat16, or float16 on GPUs without bf16).
        channels_last: channels-last model and inputs (faster convolutions on GPUs).
        compile: ``torch.compile`` the model.
        evaluate: also store each image's Deletion and Insertion AUC (``sf.metrics.deletion_insertion``
            with its defaults) in the shards.
        dtype: storage dtype of the maps, "float32" or "float16".
        progress: a tqdm bar (images/s, ETA) on rank 0.
        output: which part of the model's output holds the logits when it returns a tuple, dict or
            object (an index, a key such as "logits", or a callable), as in the methods.

    Returns:
        the manifest (also in ``out_dir/manifest.json``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    batch_size = check_positive_int(batch_size, "batch_size")
    shard_size = check_positive_int(shard_size, "shard_size")
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {tuple(STORAGE_DTYPES)}, got {dtype!r}")
    options = dict(method_options or {})
    if isinstance(method, str) or not hasattr(method, "attribute"):
        method_name = method.lower() if isinstance(method, str) else method
        parameters = method_parameters(method_name, model, **options)
    else:  # a method object: identified by its class and configuration
        if options or amp or channels_last or compile:
            raise ValueError("method_options, amp, channels_last and compile need a method name; a method object "
                             "runs as it was built")
        method_name = type(method).__qualname__
        parameters = _jsonable(method.config() if hasattr(method, "config") else repr(method))
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"out_dir {out_dir} is a file, not a folder; pass a folder (it is created if missing)")
    source = _open_source(data)

    processes = ProcessGroup()
    try:
        with contextlib.ExitStack() as held:
            _own_folder(held, out_dir, f"attribute_dataset {method_name}", processes)
            held.enter_context(attribution_mode(model))  # eval, frozen parameters; the caller's modes restored
            return _attribute(model, source, method, method_name, output, options, parameters, out_dir, batch_size,
                              shard_size, resume, device, amp, channels_last, compile, evaluate, dtype, progress, processes)
    finally:
        if channels_last:  # give the caller's model back in its usual layout
            model.to(memory_format=torch.contiguous_format)
        processes.close()


def _own_folder(stack: contextlib.ExitStack, out_dir: Path, purpose: str, processes: ProcessGroup) -> None:
    """Rank 0 takes the folder's lock; every rank raises if it could not."""
    refusal = None
    if processes.rank == 0:
        try:
            stack.enter_context(FolderLock(out_dir, purpose))
        except (FolderInUseError, OSError) as error:
            refusal = error
    if not processes.all_true(refusal is None):
        raise refusal if refusal is not None else FolderInUseError(f"rank 0 could not take the lock of {out_dir}")


def _attribute(model, source, method, method_name, output, options, parameters, out_dir, batch_size, shard_size,
               resume, device, amp, channels_last, compile, evaluate, dtype, progress, processes) -> dict:
    device = processes.device(model, device)
    model.to(device)
    shape = _reference_shape(source)
    check_model_accepts(model, shape, f"the data ({source.description})", device)
    if isinstance(method, str) and method_parameters(method_name, model, **options).get("layer", "") is None:
        options = resolve_cam_options(method_name, model, options, _first_image(source))  # a CAM method's layer
        parameters = method_parameters(method_name, model, **options)
    amp_dtype = _amp_dtype(device) if amp else None
    identity = {
        "method": method_name, "method_parameters": parameters,
        "model": {"class": type(model).__qualname__, "sha256": model_fingerprint(model)},
        "input": {"count": len(source), "shape": list(shape), "sha256": source.fingerprint()},
        "shard_size": shard_size, "dtype": dtype, "amp": str(amp_dtype).replace("torch.", "") if amp else False,
        "evaluate": bool(evaluate),
    }
    if output is not None:
        identity["output"] = output if isinstance(output, (int, str)) else \
            f"callable {getattr(output, '__qualname__', type(output).__name__)}"
    ranges = _shard_ranges(len(source), shard_size)
    manifest = _prepare(out_dir, identity, resume, processes, source.description, ranges)
    pending = [i for i in range(len(ranges)) if not (out_dir / SHARD_PATTERN.format(i)).is_file()]
    processes.barrier()  # everyone has listed the finished shards before any new one appears
    mine = pending[processes.rank :: processes.world]

    if channels_last:
        model.to(memory_format=torch.channels_last)
    selected = BoundModel(model, output)  # logits picked by output=, one row per image checked
    run_model = _RunModel(selected, amp_dtype, channels_last, compile) if (amp or channels_last or compile) else selected
    attribution = _build_method(method_name, run_model, model, options) if isinstance(method, str) else method
    from tqdm import tqdm

    todo = sum(ranges[i][1] - ranges[i][0] for i in mine)
    with tqdm(total=todo, unit="img", desc=f"{method_name} rank {processes.rank}/{processes.world}"
              if processes.active else method_name, disable=not progress or processes.rank != 0,
              dynamic_ncols=True) as bar:
        runner = _Runner(attribution, run_model, device, batch_size, STORAGE_DTYPES[dtype], evaluate, bar)
        for index in mine:
            start, stop = ranges[index]
            record = runner.shard(source, index, start, stop, shape)
            record["rank"] = processes.rank
            record["run"] = manifest["run"]
            save_verified(out_dir / SHARD_PATTERN.format(index), record)
    processes.barrier()
    if processes.rank == 0:
        manifest = _finalize(out_dir, manifest, ranges, device, batch_size, runner.batch_size, channels_last,
                             compile, processes.world)
    processes.barrier()
    return manifest if processes.rank == 0 else _read_manifest(out_dir)


def _prepare(out_dir: Path, identity: dict, resume: bool, processes: ProcessGroup, source: str, ranges) -> dict:
    """Check an existing manifest against this run (every rank, so all raise alike), then let rank 0
    clear or create the folder, drop damaged or foreign shards and write the manifest. The data's
    location (``source``) is recorded but is not part of the identity: the same images moved
    elsewhere still resume."""
    existing = _read_manifest(out_dir) if out_dir.is_dir() and resume else None
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
    processes.barrier()  # all ranks have read the old manifest before rank 0 touches the folder
    manifest = {
        "format": FORMAT_VERSION, "package": "saliency_fast", "version": __version__, "torch": torch.__version__,
        "identity": identity, "run": content_checksum(identity), "source": source, "complete": False,
    }
    if processes.rank == 0:
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
                    warnings.warn(f"attribute_dataset: recomputing {path.name}: {problem}", stacklevel=4)
            if problem is not None:
                path.unlink()
        _write_manifest(out_dir, manifest)
    processes.barrier()
    return manifest


def _finalize(out_dir, manifest, ranges, device, batch_size, final_batch_size, channels_last, compiled, world) -> dict:
    """Rank 0, after every rank finished: the shard index and the skipped images into the manifest."""
    shards, skipped = [], []
    for index, (start, stop) in enumerate(ranges):
        record = _load_shard(out_dir / SHARD_PATTERN.format(index))
        shards.append({"index": index, "file": SHARD_PATTERN.format(index), "start": start, "stop": stop,
                       "images": int(record["indices"].numel()), "skipped": len(record["skipped"]),
                       "checksum": record[CHECKSUM_KEY]})
        skipped.extend({"index": entry[0], "reason": entry[1], **({"name": entry[2]} if len(entry) > 2 else {})}
                       for entry in record["skipped"])
    manifest = {**manifest, "complete": True, "shards": shards, "skipped": skipped,
                "settings": {"device": str(device), "batch_size": batch_size, "final_batch_size_rank0": final_batch_size,
                             "channels_last": bool(channels_last), "compile": bool(compiled), "processes": world}}
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
    manifest = _read_manifest(out_dir) if out_dir.is_dir() else None
    if manifest is None:
        raise FileNotFoundError(f"{out_dir / MANIFEST_NAME} not found; is {out_dir} an attribute_dataset output folder?")
    count, shard_size, map_shape, storage_dtype, evaluate, entries = _checked_manifest(out_dir, manifest)
    ranges = _shard_ranges(count, shard_size)
    missing = [i for i in range(len(ranges)) if not (out_dir / SHARD_PATTERN.format(i)).is_file()]
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


def _is_int(value, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _checked_manifest(out_dir: Path, manifest: dict):
    """(count, shard_size, (H, W), storage dtype, evaluate, shard entries) after checking every
    field that reading relies on; CorruptFileError naming the manifest and the field otherwise."""
    path = out_dir / MANIFEST_NAME

    def bad(field: str, value, expected: str):
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
    count = data.get("count") if isinstance(data, dict) else None
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
    for index, entry in enumerate(entries):
        start, stop = index * shard_size, min((index + 1) * shard_size, count)
        if not (isinstance(entry, dict) and entry.get("index") == index and entry.get("start") == start
                and entry.get("stop") == stop and entry.get("file") == SHARD_PATTERN.format(index)
                and isinstance(entry.get("checksum"), str)):
            raise bad(f"shards[{index}]", entry, f"index {index}, file {SHARD_PATTERN.format(index)}, start {start}, "
                      f"stop {stop} and a checksum")
    return count, shard_size, tuple(shape[1:]), STORAGE_DTYPES[dtype], evaluate, entries


def _checked_shard(path: Path, record: dict, run_id: str, start: int, stop: int, map_shape, storage_dtype,
                   evaluate: bool) -> Tuple[Tensor, List[dict]]:
    """The shard's dataset indices and skipped entries after checking it against the manifest."""

    def bad(what: str):
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
    skipped = [{"index": e[0], "reason": str(e[1]), **({"name": str(e[2])} if len(e) > 2 else {})} for e in entries]
    return indices, skipped
