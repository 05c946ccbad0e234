"""RES on annotated digits: Baseline vs GRADIA vs HAICS vs RES-G vs RES-L (res.md).

Setting (a small analogue of the released experiments): 100 training images of the embedded
digits (10 per class), all annotated with stroke masks; DigitsCNN from scratch, Grad-CAM at
``features.4`` (16×16 maps for 32×32 inputs); Adam, batch 20; the final epoch is evaluated (no
model selection). Test: the whole held-out split (359 images) with clean masks; accuracy and
IoU / precision / recall / F1 of the predicted-class Grad-CAM (res.md's protocol).

Experiments:
- ``main``: clean vs noisy training masks (boundary jitter + incompleteness), all methods.
- ``sweep``: the explanation weight of GRADIA and RES-G.
- ``decoy``: a bright patch at a class-dependent place in every training image (negative mask),
  at a random place at test time; a model that uses the shortcut loses test accuracy.

    python scripts/res_experiment.py                 # all three, 3 seeds (a few minutes on 2 cores)
    python scripts/res_experiment.py --quick         # a smoke run

Writes ``<out>/results.json`` (every run) and prints Markdown tables of mean ± std over seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from saliency_fast.data.annotated import annotated_digits_loaders
from saliency_fast.models import DigitsCNN
from saliency_fast.train import GRADIA, HAICS, RES, Plain, fit
from saliency_fast.train.res_eval import evaluate_explanations

METHODS = {
    "Baseline": lambda weight: Plain(),
    "GRADIA": lambda weight: GRADIA(weight=weight),
    "HAICS": lambda weight: HAICS(weight=weight),
    "HAICS-released": lambda weight: HAICS(weight=weight, form="released"),
    "RES-G": lambda weight: RES("G", weight=weight),
    "RES-L": lambda weight: RES("L", weight=weight),
    "RES-L+reg": lambda weight: RES("L", weight=weight, reg=1.0),
}
NOISY = {"jitter": 2, "incompleteness": 0.4}
METRICS = ("accuracy", "iou", "precision", "recall", "f1")


def run_one(method_name: str, seed: int, epochs: int, lr: float, weight: float = 1.0, **data) -> dict:
    train, test = annotated_digits_loaders(batch_size=20, n_train=100, seed=seed, shuffle_seed=seed, **data)
    torch.manual_seed(seed)
    model = DigitsCNN()
    method = METHODS[method_name](weight)
    optimizer = torch.optim.Adam(list(model.parameters()) + list(method.parameters()), lr=lr)
    started = time.perf_counter()
    fit(model, method, train, epochs, optimizer=optimizer, progress=False)
    seconds = time.perf_counter() - started
    report = evaluate_explanations(model, test)
    return {"method": method_name, "seed": seed, "weight": weight, **data, "train_seconds": seconds,
            **{name: report[name] for name in METRICS}}


def summarise(rows, keys) -> str:
    groups = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    header = "| " + " | ".join(keys) + " | " + " | ".join(METRICS) + " | s/run |"
    lines = [header, "|" + "---|" * (len(keys) + len(METRICS) + 1)]
    for group, members in groups.items():
        cells = []
        for metric in METRICS:
            values = [m[metric] for m in members]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}")
        seconds = statistics.mean(m["train_seconds"] for m in members)
        lines.append("| " + " | ".join(str(g) for g in group) + " | " + " | ".join(cells) + f" | {seconds:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--experiments", default="main,sweep,decoy")
    parser.add_argument("--out", default="out/res_experiment")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for this tiny CNN)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs: checks that everything runs")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs = 1, 2
    torch.set_num_threads(args.threads)
    seeds = range(args.seeds)
    chosen = set(args.experiments.split(","))
    rows = []
    tables = []

    def collect(name, runs, keys):
        done = []
        for kwargs in runs:
            row = run_one(epochs=args.epochs, lr=args.lr, **kwargs)
            row["experiment"] = name
            done.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        rows.extend(done)
        tables.append(f"### {name}\n\n" + summarise(done, keys))

    if "main" in chosen:
        collect("main", [dict(method_name=m, seed=s, **({} if not noisy else NOISY))
                         for noisy in (False, True) for m in METHODS for s in seeds],
                ["method", "jitter", "incompleteness"])
    if "sweep" in chosen:
        collect("sweep", [dict(method_name=m, seed=s, weight=w) for m in ("GRADIA", "RES-G")
                          for w in (0.1, 1.0, 10.0) for s in seeds], ["method", "weight"])
    if "decoy" in chosen:
        collect("decoy", [dict(method_name=m, seed=s, decoy=True) for m in METHODS for s in seeds],
                ["method", "decoy"])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump({"args": vars(args), "runs": rows}, handle, indent=1)
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
