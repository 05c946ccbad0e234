"""Train DigitsCNN on the embedded digits and write the bundled weights.

Reproduces saliency_fast/weights/digits_cnn.pt:

    python scripts/train_digits.py

Fixed seeds (split, initialisation, batch order), deterministic algorithms and one CPU thread, so
a rerun on the same torch version and CPU writes the same weights; other versions or machines
may differ in the last bits but reach the same accuracy. Fails (exit 1) if the test accuracy is
below --min-accuracy, so a bad run never replaces the shipped file silently.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing

from saliency_fast.data import digits_loaders  # noqa: E402
from saliency_fast.models import DigitsCNN  # noqa: E402

DEFAULT_OUT = os.path.join(ROOT, "saliency_fast", "weights", "digits_cnn.pt")


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels in each direction, filling with zeros
    (the background): the digits are centred by construction, so shifts teach position tolerance."""
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator)
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(dim=1) == y).sum())
        total += len(y)
    return correct / total


def train(make_loaders, make_model, epochs: int, lr: float, batch_size: int, seed: int, max_shift: int,
          weight_decay: float) -> tuple[DigitsCNN, float]:
    """The recipe both bundled CNNs are trained with (this script's digits, train_mnist.py's MNIST)."""
    torch.manual_seed(seed)
    train_loader, test_loader = make_loaders(batch_size=batch_size, shuffle_seed=seed)
    model = make_model()
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


def main(argv=None, *, description: str = __doc__, make_loaders=digits_loaders, make_model=DigitsCNN,
         default_out: str = DEFAULT_OUT, epochs: int = 30, side: int = 32,
         test_set: str = "the stratified test split (split seed 0, 20%") -> int:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shift", type=int, default=2, help=f"random translation in pixels ({side}×{side} images)")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--min-accuracy", type=float, default=0.95)
    parser.add_argument("--out", default=default_out, help="where to write the state_dict (default: %(default)s)")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # reduction order, hence the bits, would depend on the thread count
    torch.use_deterministic_algorithms(True)
    model, test_accuracy = train(make_loaders, make_model, args.epochs, args.lr, args.batch_size, args.seed,
                                 args.max_shift, args.weight_decay)
    print(f"final test accuracy {test_accuracy:.4f} on {test_set}; training seed {args.seed})")
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
