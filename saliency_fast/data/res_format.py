"""User datasets with explanation annotations: the released RES format and plain mask files.

Released RES format (Gao et al., KDD 2022): images in class folders (``<root>/<split>/<class>/
<name>.jpg``) and CSV annotation files (``<root>/attention_label/*.csv``) with the columns

- ``img_idx``: the image's file name without extension (the released script appends ".jpg"),
- ``attention``: the mask as a JSON list of lists of 0/1, at the resized image's resolution
  (224×224 in the released data) or at the image file's own resolution,
- ``img_check``: only rows whose value is "good" are used.

Files whose name contains "counterfactual" hold negative masks, the others positive masks.
An image counts as annotated when it has a good positive row (as in the released script); a
negative row without a positive one is an error, since the script would silently drop it.

Plain masks: a folder of ``<image name>.png`` / ``.npy`` / ``.npz`` files (binary: 0/1 or
0/255), or a dict {image name: array}, for positive and optionally negative masks.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .annotated import Item, collate_annotated

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MASK_EXTENSIONS = (".png", ".npy", ".npz", ".bmp", ".gif", ".tif", ".tiff")
CSV_COLUMNS = ("img_idx", "attention", "img_check")
ANNOTATION_FOLDER = "attention_label"  # the released layout: <root>/attention_label/*.csv
Masks = Dict[str, np.ndarray]
MaskSource = Union[str, os.PathLike, Mapping[str, np.ndarray], None]
# released CSV files: one file, a folder of them, or a list; None looks beside the images' folder
Annotations = Union[str, os.PathLike, Iterable[Union[str, os.PathLike]], None]
Normalization = Tuple[Tuple[float, ...], Tuple[float, ...]]  # (mean, std) per channel


# -- masks ------------------------------------------------------------------------------------------
def binary_mask(array: Any, where: str) -> np.ndarray:
    """A 2-D bool mask from 0/1 (or 0/255 from an 8-bit image) values; anything else is an error."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):  # an image file with channels: must be grey
        if not (array[..., :3] == array[..., :1]).all():
            raise ValueError(f"{where}: a colour mask image; save masks as single-channel 0/1 or 0/255 images")
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"{where}: a mask must be 2-D (H, W), got shape {array.shape}")
    values = np.unique(array)
    if set(values.tolist()) <= {0, 1}:
        return array.astype(bool)
    if array.dtype == np.uint8 and set(values.tolist()) <= {0, 255}:
        return array == 255
    shown = ", ".join(str(v) for v in values[:6])
    raise ValueError(f"{where}: a mask must be binary (0/1, or 0/255 in an 8-bit image), found values {shown}"
                     f"{' ...' if values.size > 6 else ''}; binarise it first")


def load_mask(path: Union[str, os.PathLike]) -> np.ndarray:
    """One binary mask from a .npy, .npz (its only array, or the one named "mask") or image file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            names = archive.files
            if "mask" not in names and len(names) != 1:
                raise ValueError(f"{path}: an .npz mask needs one array or one named 'mask', found {names}")
            array = archive["mask" if "mask" in names else names[0]]
    else:
        from PIL import Image

        with Image.open(path) as image:
            array = np.asarray(image.convert("L") if image.mode in ("P", "1") else image)
            if image.mode == "1":
                array = array.astype(np.uint8)
    return binary_mask(array, str(path))


def masks_from_folder(folder: Union[str, os.PathLike]) -> Masks:
    """{file stem: mask} for every mask file in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"mask folder {folder} does not exist")
    masks: Masks = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in MASK_EXTENSIONS:
            if path.stem in masks:
                raise ValueError(f"{folder} holds two masks for {path.stem!r}; keep one file per image")
            masks[path.stem] = load_mask(path)
    return masks


def read_res_csv(path: Union[str, os.PathLike]) -> Masks:
    """{img_idx: mask} of the rows of one released CSV file whose img_check is "good"."""
    path = Path(path)
    masks: Masks = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in CSV_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing the column(s) {missing}; RES annotation files have the columns "
                             f"{list(CSV_COLUMNS)} (found {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            if (row["img_check"] or "").strip() != "good":
                continue
            name = (row["img_idx"] or "").strip()
            where = f"{path}, line {line} (img_idx {name!r})"
            if not name:
                raise ValueError(f"{where}: empty img_idx")
            try:
                values = json.loads(row["attention"])
            except (TypeError, json.JSONDecodeError) as error:
                raise ValueError(f"{where}: the attention column is not a JSON list of lists of 0/1 ({error})") from None
            try:
                array = np.asarray(values)
            except ValueError:
                raise ValueError(f"{where}: the attention rows have different lengths") from None
            if array.dtype == object or not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
                raise ValueError(f"{where}: the attention column must hold numbers 0/1")
            if name in masks:
                raise ValueError(f"{where}: a second good row for the same image in one file")
            masks[name] = binary_mask(array, where)
    return masks


def read_res_annotations(paths: Iterable[Union[str, os.PathLike]]) -> Tuple[Masks, Masks]:
    """(positive, negative) masks from released CSV files ("counterfactual" in a name: negative)."""
    positive: Masks = {}
    negative: Masks = {}
    paths = sorted(Path(p) for p in paths)
    if not paths:
        raise FileNotFoundError("no annotation CSV files were given")
    for path in paths:
        target = negative if "counterfactual" in path.name else positive
        for name, mask in read_res_csv(path).items():
            if name in target:
                raise ValueError(f"{path}: image {name!r} already has a "
                                 f"{'negative' if target is negative else 'positive'} mask from another file")
            target[name] = mask
    orphans = sorted(set(negative) - set(positive))
    if orphans:
        raise ValueError(f"negative (counterfactual) masks without a positive row for {len(orphans)} image(s), e.g. "
                         f"{orphans[:5]}; add their positive rows (or mark them not 'good') — the released script "
                         "drops such negative masks silently")
    return positive, negative


def write_res_csv(path: Union[str, os.PathLike], masks: Mapping[str, np.ndarray], check: str = "good") -> Path:
    """Write masks in the released format (to export annotations or build test fixtures)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for name, mask in masks.items():
            array = np.asarray(mask)
            writer.writerow([name, json.dumps((array.astype(int) if array.dtype == bool else array).tolist()), check])
    return path


# -- images -----------------------------------------------------------------------------------------
def _class_folder_images(root: Path) -> Tuple[List[Tuple[Path, int]], List[str]]:
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (expected {root}/<class>/<image>)")
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class sub-folders; lay images out as {root}/<class>/<image>")
    samples = [(path, index) for index, name in enumerate(classes) for path in sorted((root / name).iterdir())
               if path.suffix.lower() in IMAGE_EXTENSIONS]
    if not samples:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}/<class>/")
    return samples, classes


def _as_masks(source: MaskSource) -> Masks:
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return {str(name): binary_mask(mask, f"mask {name!r}") for name, mask in source.items()}
    return masks_from_folder(source)


class AnnotatedImageFolder(Dataset):
    """Class-folder images with positive/negative masks, yielding (x, y, positive, negative, has_mask).

    Args:
        root: ``root/<class>/<image>`` (one split of the released layout, e.g. ``data/train``).
        annotations: released CSV files, or a folder of them (default: ``root/../attention_label``
            when it exists); or give ``positive_masks`` (and ``negative_masks``): a folder of mask
            files named like the images, or a dict {image name: array}.
        image_size: images are resized (bilinear) to image_size × image_size; masks at the resized
            size are used as they are, masks at the image file's size are resized with nearest;
            any other size is an error.
        require_masks: every image must be annotated (otherwise unannotated images get empty masks
            and has_mask False, so batches mix both kinds).
        annotated_only: keep only the annotated images.
        transform: joint ``transform(image, positive, negative)`` (see ``data.annotated``).
        normalize: (mean, std) per channel applied after [0, 1] scaling, or None.
    """

    def __init__(self, root: Union[str, os.PathLike], annotations: Annotations = None, positive_masks: MaskSource = None,
                 negative_masks: MaskSource = None, image_size: int = 224, require_masks: bool = False,
                 annotated_only: bool = False, transform: Optional[Callable] = None,
                 normalize: Optional[Normalization] = None, channels: int = 3):
        self.root = Path(root)
        self.samples, self.classes = _class_folder_images(self.root)
        self.image_size, self.transform, self.normalize, self.channels = int(image_size), transform, normalize, channels
        self.positive, self.negative = self._annotations(annotations, positive_masks, negative_masks)
        names = {path.stem for path, _ in self.samples}
        missing = sorted(names - set(self.positive))
        if require_masks and missing:
            raise ValueError(f"{len(missing)} image(s) under {self.root} have no positive mask (no good CSV row), "
                             f"e.g. {missing[:5]}; annotate them or pass require_masks=False")
        if annotated_only:
            self.samples = [(path, label) for path, label in self.samples if path.stem in self.positive]
            if not self.samples:
                raise ValueError(f"no image under {self.root} has a positive mask; check the img_idx column "
                                 "(the image's file name without extension)")

    def _annotations(self, annotations: Annotations, positive_masks: MaskSource, negative_masks: MaskSource
                     ) -> Tuple[Masks, Masks]:
        if annotations is not None and (positive_masks is not None or negative_masks is not None):
            raise ValueError("give either annotations (released CSV files) or positive_masks/negative_masks, not both")
        if positive_masks is not None:
            return _as_masks(positive_masks), _as_masks(negative_masks)
        if annotations is None:
            default = self.root.parent / ANNOTATION_FOLDER
            if not default.is_dir():
                raise FileNotFoundError(f"no annotations given and {default} does not exist; pass annotations=... "
                                        "(CSV files or their folder) or positive_masks=...")
            annotations = default
        if isinstance(annotations, (str, os.PathLike)) and Path(annotations).is_dir():
            annotations = sorted(Path(annotations).glob("*.csv"))
        elif isinstance(annotations, (str, os.PathLike)):
            annotations = [annotations]
        return read_res_annotations(annotations)

    def __len__(self) -> int:
        return len(self.samples)

    def _load_image(self, path: Path) -> Tuple[Tensor, Tuple[int, int]]:
        from PIL import Image

        with Image.open(path) as file:
            image = file.convert("RGB" if self.channels == 3 else "L")
            original = (image.height, image.width)
            pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
        pixels = pixels.permute(2, 0, 1) if pixels.dim() == 3 else pixels.unsqueeze(0)
        if tuple(pixels.shape[-2:]) != (self.image_size,) * 2:
            pixels = F.interpolate(pixels.unsqueeze(0), size=(self.image_size,) * 2, mode="bilinear",
                                   align_corners=False, antialias=True).squeeze(0).clamp_(0, 1)
        if self.normalize is not None:
            mean, std = (torch.tensor(v, dtype=pixels.dtype).view(-1, 1, 1) for v in self.normalize)
            pixels = (pixels - mean) / std
        return pixels.contiguous(), original

    def _mask(self, masks: Masks, name: str, original: Tuple[int, int], kind: str) -> Optional[Tensor]:
        if name not in masks:
            return None
        mask = torch.from_numpy(np.ascontiguousarray(masks[name]))
        size = (self.image_size, self.image_size)
        if tuple(mask.shape) == size:
            return mask
        if tuple(mask.shape) == tuple(original):
            return F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0] > 0
        raise ValueError(f"the {kind} mask of {name!r} is {tuple(mask.shape)}, but the image is {original} and is "
                         f"resized to {size}; masks must match one of the two")

    def __getitem__(self, index: int) -> Item:
        path, label = self.samples[index]
        image, original = self._load_image(path)
        positive = self._mask(self.positive, path.stem, original, "positive")
        negative = self._mask(self.negative, path.stem, original, "negative")
        has_mask = positive is not None
        size = tuple(image.shape[-2:])
        positive = positive if positive is not None else torch.zeros(size, dtype=torch.bool)
        negative = negative if negative is not None and has_mask else torch.zeros(size, dtype=torch.bool)
        if self.transform is not None:
            image, positive, negative = self.transform(image, positive, negative)
        return image, torch.tensor(label), positive, negative, torch.tensor(has_mask)


def res_format_loaders(root: Union[str, os.PathLike], batch_size: int = 20, image_size: int = 224,
                       train_split: str = "train", test_split: str = "test", annotated_only: bool = True,
                       seed: int = 0, transform: Optional[Callable] = None, channels: int = 3,
                       normalize: Optional[Normalization] = None) -> Tuple[DataLoader, DataLoader, List[str]]:
    """(train_loader, test_loader, classes) over the released layout ``root/{train,test}/<class>/`` with
    ``root/attention_label/*.csv``. ``annotated_only`` trains on the annotated images only (the
    released experiments' setting); the test loader keeps every test image."""
    root = Path(root)
    annotations = root / ANNOTATION_FOLDER
    train = AnnotatedImageFolder(root / train_split, annotations, image_size=image_size,
                                 annotated_only=annotated_only, transform=transform, channels=channels,
                                 normalize=normalize)
    test = AnnotatedImageFolder(root / test_split, annotations, image_size=image_size, channels=channels,
                                normalize=normalize)
    if test.classes != train.classes:
        raise ValueError(f"{root / train_split} has classes {train.classes} but {root / test_split} {test.classes}")
    generator = torch.Generator().manual_seed(seed)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate_annotated),
            DataLoader(test, batch_size=batch_size, shuffle=False, collate_fn=collate_annotated), train.classes)


def explanation_loaders(data: str = "digits", batch_size: int = 20, seed: int = 0, n_train: Optional[int] = 100,
                        n_annotated: Optional[int] = None, jitter: int = 0, incompleteness: float = 0.0,
                        decoy: bool = False, image_size: int = 32, channels: int = 1
                        ) -> Tuple[DataLoader, DataLoader, int, int, int]:
    """Loaders for explanation supervision, as the ``train`` CLI needs them:
    (train_loader, test_loader, channels, size, classes).

    ``data``: "digits" (annotated digits: ``n_train`` images of which ``n_annotated`` carry masks,
    with the noise knobs and decoys of :func:`annotated_digits`) or the root of a dataset in the
    released RES layout (images resized to ``image_size``, ``channels`` 1 or 3).
    """
    if data in ("digits", "annotated-digits"):
        from .annotated import annotated_digits_loaders

        train, test = annotated_digits_loaders(batch_size=batch_size, n_train=n_train, n_annotated=n_annotated,
                                               decoy=decoy, jitter=jitter, incompleteness=incompleteness, seed=seed,
                                               shuffle_seed=seed)
        return train, test, 1, 32, 10
    if not Path(data).is_dir():
        raise FileNotFoundError(f"{data!r} is neither 'digits' nor a folder in the released RES layout "
                                f"(<root>/train/<class>/, <root>/test/<class>/, <root>/{ANNOTATION_FOLDER}/*.csv)")
    train, test, classes = res_format_loaders(data, batch_size, image_size, seed=seed, channels=channels)
    return train, test, channels, image_size, len(classes)


__all__ = ["AnnotatedImageFolder", "res_format_loaders", "explanation_loaders", "read_res_csv",
           "read_res_annotations", "write_res_csv", "load_mask", "masks_from_folder", "binary_mask"]
