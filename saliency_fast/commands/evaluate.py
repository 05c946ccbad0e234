"""`saliency-fast evaluate`: methods × metrics on one model and data set.

Prints a table (Deletion↓, Insertion↑ in the SAMP paper's form, Gini, completeness error, time
per image), writes results.csv / results.json and a PNG of the mean deletion and insertion
curves. Default: the bundled digits CNN on the first test digits, every registered method that
applies to the model (a method that does not fit the architecture, e.g. CAM without global average
pooling, is reported and left out; named in --methods, it is an error).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import time
from typing import Any, Iterable, Optional

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .. import metrics
from ..methods import SAMP, AttributionMethod, IntegratedGradients
from ..methods.gradcam import UnsupportedArchitecture
from ..methods.registry import METHOD_NAMES, make_method
from ._args import (IMAGE_SIZE_HELP, MODEL_HELP, check_model_accepts, image_preparation, load_images, load_model,
                    parse_device, parse_options)

# every registered method, the baselines first and SAMP/SAMP++ last (the paper's table order)
DEFAULT_METHODS = tuple(n for n in METHOD_NAMES if not n.startswith("samp")) + tuple(
    n for n in METHOD_NAMES if n.startswith("samp"))


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("evaluate", help="compare methods on Deletion/Insertion, Gini and completeness")
    parser.add_argument("--model", default="digits", help=MODEL_HELP)
    parser.add_argument("--weights", help="a state_dict file for the model (loaded with weights_only=True)")
    parser.add_argument("--image-size", type=int, metavar="N", help=IMAGE_SIZE_HELP)
    parser.add_argument("--images", help="a .pt/.npy file or image folder (default: the digits test split)")
    parser.add_argument("--count", type=int, default=64, help="evaluate the first N images (default 64)")
    parser.add_argument("--methods", help=f"comma-separated, from {', '.join(METHOD_NAMES)} (default: all that "
                        "apply to the model)")
    parser.add_argument("--pixels-per-step", type=int, help="curve step (default: 10 up to 64×64, else 8·H)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default="out/evaluate", help="output folder (default out/evaluate)")
    parser.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                        help="an option for one method, e.g. ig.n_steps=128")
    parser.set_defaults(func=run)


def method_options(pairs: Iterable[str]) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        name, separator, rest = pair.partition(".")
        if not separator:
            raise ValueError(f"--option must be METHOD.KEY=VALUE, got {pair!r}")
        options.setdefault(name, {}).update(parse_options([rest]))
    return options


FORMS_NOTE = (
    "Deletion / Insertion: the SAMP paper's form, the mean of the curve of scores (logits) divided by the\n"
    "score of the image, so not bounded to [0, 1] (a logit that turns negative makes Deletion negative;\n"
    "Insertion can exceed 1). (prob AUC): the [0, 1] form of most papers, the area under the softmax-\n"
    "probability curve. Lower Deletion and higher Insertion are better in both forms.\n"
    "completeness error: |Σ map − (f(x) − f(x'))| / |f(x) − f(x')|; — for methods without a path from a reference x'.")


def attribute_with_completeness(method: AttributionMethod, model: nn.Module, images: Tensor,
                                target: Tensor) -> tuple[Tensor, float]:
    """Maps and their mean completeness error where the method claims completeness (the method's
    own hook: SAMP per path, from the same run; IG against its baseline); NaN for the others."""
    maps, errors = method.attribute_with_completeness(images, target)
    return maps, float("nan") if errors is None else float(errors.mean())


def evaluate_method(name: str, method: AttributionMethod, model: nn.Module, images: Tensor, target: Tensor,
                    pixels_per_step: Optional[int]) -> tuple[dict[str, Any], list[Tensor]]:
    start = time.perf_counter()
    maps, completeness_error = attribute_with_completeness(method, model, images, target)
    seconds = time.perf_counter() - start
    scores = metrics.deletion_insertion(model, images, maps, target=target, pixels_per_step=pixels_per_step,
                                        allow_constant=True)
    # both paths (the default) were run: none of their fields is None
    assert scores.deletion_auc is not None and scores.insertion_auc is not None
    assert scores.deletion_auc_prob is not None and scores.insertion_auc_prob is not None
    assert scores.deletion_curve is not None and scores.insertion_curve is not None
    row = {
        "method": name,
        "deletion_auc": float(scores.deletion_auc.mean()),
        "insertion_auc": float(scores.insertion_auc.mean()),
        "deletion_auc_prob": float(scores.deletion_auc_prob.mean()),
        "insertion_auc_prob": float(scores.insertion_auc_prob.mean()),
        "gini": float(metrics.gini(maps).mean()),
        "completeness_error": completeness_error,
        "seconds_per_image": seconds / images.shape[0],
    }
    curves = (scores.deletion_curve / scores.deletion_curve[:, :1], scores.insertion_curve / scores.insertion_curve[:, -1:])
    return row, [c.mean(0).cpu() for c in curves]


def write_outputs(rows: list[dict[str, Any]], curves: dict[str, list[Tensor]], out: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out, "results.json"), "w") as handle:
        json.dump(rows, handle, indent=2)
    from ..viz import _pyplot

    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    aucs = {row["method"]: row for row in rows}
    palette = plt.get_cmap("tab20")  # 20 distinct colours: the default cycle repeats after 10 methods
    for index, (name, (deletion, insertion)) in enumerate(curves.items()):
        x = torch.linspace(0, 1, deletion.numel())
        style = {"color": palette(index % 20), "linewidth": 2.4 if name.startswith("samp") else 1.2}
        axes[0].plot(x, deletion, label=f"{name} ({aucs[name]['deletion_auc']:.2f} / {aucs[name]['insertion_auc']:.2f})",
                     **style)
        axes[1].plot(x, insertion, **style)
    for axis, title in zip(axes, ("Deletion: most important pixels removed first (lower is better)",
                                  "Insertion: most important pixels restored first (higher is better)")):
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("fraction of pixels perturbed")
        axis.set_ylabel("logit of the explained class / logit of the image")
        axis.axhline(0, color="0.6", linewidth=0.8)
        axis.grid(alpha=0.3)
    figure.legend(loc="center right", fontsize=8, title="method (Deletion / Insertion AUC)", title_fontsize=8)
    figure.text(0.42, 0.01, "AUC in the SAMP paper's form: the mean of the curve; not bounded to [0, 1]. "
                "results.csv also has the [0, 1] probability AUCs. Thick lines: SAMP and SAMP++.",
                ha="center", fontsize=8)
    figure.tight_layout(rect=(0, 0.04, 0.85, 1))
    figure.savefig(os.path.join(out, "curves.png"), dpi=120)
    plt.close(figure)


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | Deletion ↓ | Insertion ↑ | Deletion (prob AUC) ↓ | Insertion (prob AUC) ↑ | Gini ↑ | "
             "completeness error | ms / image |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        complete = "—" if r["completeness_error"] != r["completeness_error"] else f"{r['completeness_error']:.3f}"
        lines.append(f"| {r['method']} | {r['deletion_auc']:.3f} | {r['insertion_auc']:.3f} | "
                     f"{r['deletion_auc_prob']:.3f} | {r['insertion_auc_prob']:.3f} | {r['gini']:.3f} | {complete} | "
                     f"{1e3 * r['seconds_per_image']:.1f} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    chosen = args.methods is not None
    names = [n.strip() for n in args.methods.split(",") if n.strip()] if chosen else list(DEFAULT_METHODS)
    unknown = [n for n in names if n not in METHOD_NAMES]
    if unknown or not names:
        raise ValueError(f"--methods: unknown {unknown}; choose from {', '.join(METHOD_NAMES)}")
    options = method_options(args.option)
    device = parse_device(args.device)
    model = load_model(args.model, args.weights, args.image_size).to(device)
    images = load_images(args.images, args.model, args.count, *image_preparation(model, args.image_size)).to(device)
    check_model_accepts(model, tuple(images.shape[1:]), f"--images {args.images or 'digits'}", device)
    with torch.no_grad():
        target = model(images).argmax(1)
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[Tensor]] = {}
    for name in tqdm(names, desc="evaluate", unit="method"):
        try:  # a method that cannot explain this architecture refuses at construction or at the call
            method = make_method(name, model, **options.get(name, {}))
            row, curves[name] = evaluate_method(name, method, model, images, target, args.pixels_per_step)
        except UnsupportedArchitecture as error:
            if chosen:
                raise
            print(f"{name}: left out: {error}")
            continue
        rows.append(row)
    write_outputs(rows, curves, args.out)
    print(format_table(rows))
    print(FORMS_NOTE)
    print(f"wrote {args.out}/results.csv, results.json, curves.png")
    return 0
