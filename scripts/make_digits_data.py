"""Write saliency_fast/data/digits.npz from scikit-learn's bundled handwritten digits.

The package embeds the digits themselves so that neither scikit-learn nor a download is needed
at run time. Only this script needs scikit-learn (the `data` extra). The data is the UCI
"Optical Recognition of Handwritten Digits" test set as shipped by scikit-learn: 1,797 images of
8×8 pixels, integer intensities 0..16, labels 0..9 (CC BY 4.0, Alpaydin & Kaynak, 1998).

Usage:  python scripts/make_digits_data.py [--out saliency_fast/data/digits.npz]
"""
from __future__ import annotations

import argparse
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "saliency_fast", "data", "digits.npz")


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (1797, 8, 8) in 0..16, labels uint8 (1797,)) in scikit-learn's order."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images
    # The bundled values are integers stored as float64; check before narrowing to uint8.
    if not (np.array_equal(images, np.round(images)) and images.min() >= 0 and images.max() <= 16):
        raise RuntimeError("unexpected digits data from scikit-learn: values are not integers in 0..16")
    return images.astype(np.uint8), bunch.target.astype(np.uint8)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT, help="where to write the .npz (default: %(default)s)")
    args = parser.parse_args(argv)

    images, labels = digits_arrays()
    np.savez_compressed(args.out, images=images, labels=labels)
    counts = np.bincount(labels, minlength=10)
    print(f"wrote {args.out}: {len(labels)} images {images.shape[1:]}, "
          f"{os.path.getsize(args.out)} bytes, per-class counts {counts.tolist()}")


if __name__ == "__main__":
    main()
