"""`saliency-fast demo`: SAMP, SAMP++ and a plain gradient on test digits with the shipped model."""
from __future__ import annotations

import os
import time

import torch
from tqdm import tqdm

from .. import SAMP, Saliency
from ..data import load_digits
from ..models import digits_cnn
from ..viz import heatmap_grid


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="explain test digits with SAMP, SAMP++ and the gradient; write a PNG")
    parser.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    parser.add_argument("--images", type=int, default=8, help="number of test digits (default: 8)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.set_defaults(func=run)


def format_table(rows) -> str:
    """The demo's table; completeness that does not apply (no path: the gradient) shows as —."""
    lines = [f"{'method':<10} {'completeness err':>17} {'steps':>6} {'model calls':>12} {'time (s)':>9}"]
    for name, error, steps, calls, seconds in rows:
        shown = "—" if error != error else f"{error:.4f}"
        lines.append(f"{name:<10} {shown:>17} {steps:>6} {calls:>12} {seconds:>9.2f}")
    lines.append("completeness err: |Σ map − (f(x) − f(reference))| / |f(x) − f(reference)|, mean over SAMP's two "
                 "paths;\n  — for the gradient, which follows no path from a reference, so completeness does not apply")
    return "\n".join(lines)


def run(args) -> int:
    if args.images < 1:
        raise ValueError(f"--images must be >= 1, got {args.images}")
    from ._args import parse_device

    device = parse_device(args.device)
    images, labels = load_digits("test")
    images, labels = images[: args.images].to(device), labels[: args.images]
    model = digits_cnn().to(device)
    methods = {"gradient": Saliency(model), "SAMP": SAMP(model), "SAMP++": SAMP.plus(model)}
    maps, rows = {}, []
    for name, method in tqdm(methods.items(), desc="demo", unit="method"):
        start = time.perf_counter()
        if isinstance(method, SAMP):
            result = method.attribute_paths(images)
            maps[name] = result.raw  # signed: 0 is "no effect" (the normalised map moves it per image)
            paths = result.paths.values()
            error = torch.stack([p.completeness_error for p in paths]).mean().item()
            steps = sum(int(p.steps.max()) for p in paths)
            calls = result.model_calls
        else:
            maps[name] = method.attribute(images)
            error, steps, calls = float("nan"), 1, 1
        rows.append((name, error, steps, calls, time.perf_counter() - start))
    predictions = model(images).argmax(1).cpu()
    titles = [f"label {int(y)} → {int(p)}" for y, p in zip(labels, predictions)]
    path = heatmap_grid(images.cpu(), {k: v.cpu() for k, v in maps.items()}, os.path.join(args.out, "demo.png"),
                        titles=titles, title="What makes the digits CNN predict each class (32×32 test digits)",
                        note="red: pixels that support the predicted class, blue: pixels that oppose it; each map "
                             "is scaled by its own largest |value|")
    print(format_table(rows))
    print(f"wrote {path}")
    return 0
