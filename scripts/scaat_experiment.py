"""SCAAT on scikit-learn's digits: plain vs Saliency Guided Training vs PGD-AT vs SCAAT (and
SCAAT's budget modes), several seeds. Trains DigitsCNN from scratch with each method for the
same number of epochs, then measures on the test split: clean accuracy, Gini of the
vanilla-gradient maps, Deletion/Insertion AUC of those maps (paper form and probability
trapezoid), accuracy with the top 10%/30% most-salient pixels removed, and time per epoch.

    .venv/bin/python scripts/scaat_experiment.py            # the EXPERIMENTS.md run
    .venv/bin/python scripts/scaat_experiment.py --seeds 0 --epochs 5 --configs plain scaat   # quick look

Writes OUT/results.json (every run), OUT/table.md (mean ± std over seeds) and OUT/maps.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from saliency_fast import metrics, train
from saliency_fast.data import digits_loaders, load_digits
from saliency_fast.methods.gradients import Saliency
from saliency_fast.models import DigitsCNN
from saliency_fast.viz import heatmap_grid, normalized


def make_configs(args):
    scaat = dict(epsilon=args.epsilon, steps=args.steps, rho=args.rho, lam=args.lam, k=args.k,
                 warmup_epochs=args.warmup, ramp_epochs=args.ramp)
    return {
        "plain": lambda: train.Plain(),
        "sgt": lambda: train.SaliencyGuided(k=0.5),
        "pgdat": lambda: train.PGDAT(epsilon=args.epsilon, steps=args.steps),
        "scaat": lambda: train.SCAAT(budget="mass", **scaat),
        "scaat-topk": lambda: train.SCAAT(budget="topk", **scaat),
        "scaat-inverse": lambda: train.SCAAT(budget="inverse", **scaat),
        "scaat-uniform": lambda: train.SCAAT(budget="uniform", **scaat),
    }


def gradient_maps(model, images):
    """|∂ logit_c / ∂x| of the predicted class, (B, H, W)."""
    return Saliency(model, abs=True).attribute(images)


def measure(model, images, labels):
    model.eval()
    with torch.no_grad():
        accuracy = float((model(images).argmax(1) == labels).float().mean())
    maps = gradient_maps(model, images)
    curves = metrics.deletion_insertion(model, images, maps)
    masked = metrics.masked_accuracy(model, images, maps, labels, fractions=(0.1, 0.3))
    return {
        "accuracy": accuracy,
        "gini": float(metrics.gini(maps).mean()),
        "deletion": float(curves.deletion_auc.mean()),
        "insertion": float(curves.insertion_auc.mean()),
        "deletion_prob": float(curves.deletion_auc_prob.mean()),
        "insertion_prob": float(curves.insertion_auc_prob.mean()),
        "masked10": float(masked.accuracy[0]),
        "masked30": float(masked.accuracy[1]),
    }


def run_one(name, factory, seed, epochs, lr, batch_size):
    train_loader, _ = digits_loaders(batch_size=batch_size, shuffle_seed=seed)
    torch.manual_seed(seed)
    model = DigitsCNN()
    history = train.fit(model, factory(), train_loader, epochs, optimizer=torch.optim.Adam(model.parameters(), lr=lr),
                        progress=False)
    images, labels = load_digits("test")
    result = measure(model, images, labels)
    result["seconds_per_epoch"] = statistics.mean(history["time"][-max(1, epochs // 2):])  # after warm-up
    return model, result


def task(name, seed, args):
    """One (configuration, seed) run in a worker process: its metrics and, for the figure, its maps."""
    torch.set_num_threads(args.threads)
    model, result = run_one(name, make_configs(args)[name], seed, args.epochs, args.lr, args.batch_size)
    result.update(config=name, seed=seed)
    return result, normalized(gradient_maps(model, load_digits("test")[0][:8])).detach()


def table(results, configs):
    keys = ["accuracy", "gini", "deletion", "insertion", "deletion_prob", "insertion_prob", "masked10", "masked30",
            "seconds_per_epoch"]
    header = ["method", "clean acc (%)", "Gini ↑", "Deletion ↓", "Insertion ↑", "Del. prob ↓", "Ins. prob ↑",
              "acc −10% ↓", "acc −30% ↓", "s/epoch"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in configs:
        runs = [r for r in results if r["config"] == name]
        if not runs:
            continue
        cells = [name]
        for key in keys:
            values = [r[key] * (100 if key in ("accuracy", "masked10", "masked30") else 1) for r in runs]
            mean = statistics.mean(values)
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            digits = 1 if key in ("accuracy", "masked10", "masked30", "seconds_per_epoch") else 3
            cells.append(f"{mean:.{digits}f} ± {spread:.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--configs", nargs="+", default=None, help="subset of the configurations")
    parser.add_argument("--epsilon", type=float, default=0.3, help="tuned on digits (EXPERIMENTS.md)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rho", type=float, default=0.1)
    parser.add_argument("--k", type=float, default=0.5)
    parser.add_argument("--lam", type=float, default=1.0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--ramp", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (worker processes)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared CPU, more threads oversubscribe it)")
    parser.add_argument("--out", default="out/scaat_experiment")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configs = make_configs(args)
    names = args.configs or list(configs)
    unknown = set(names) - set(configs)
    if unknown:
        parser.error(f"unknown configurations {sorted(unknown)}; choose from {sorted(configs)}")
    os.makedirs(args.out, exist_ok=True)
    results, maps = [], {}
    shown = load_digits("test")[0][:8]
    started = time.perf_counter()
    jobs = [(name, seed) for seed in args.seeds for name in names]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:  # one torch thread per worker
        futures = {pool.submit(task, name, seed, args): (name, seed) for name, seed in jobs}
        for future in as_completed(futures):
            result, seed_maps = future.result()
            results.append(result)
            print(json.dumps(result), flush=True)
            if result["seed"] == args.seeds[0]:
                maps[result["config"]] = seed_maps
    results.sort(key=lambda r: (r["seed"], names.index(r["config"])))
    maps = {name: maps[name] for name in names if name in maps}
    markdown = table(results, names)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump({"settings": settings, "machine": platform.platform(), "threads": torch.get_num_threads(),
                   "torch": torch.__version__, "wall_seconds": time.perf_counter() - started, "runs": results},
                  handle, indent=1)
    with open(os.path.join(args.out, "table.md"), "w") as handle:
        handle.write(markdown + "\n")
    heatmap_grid(shown, maps, os.path.join(args.out, "maps.png"), overlay=False)
    print(markdown)
    print(f"settings: {settings}; wall {time.perf_counter() - started:.0f} s; wrote {args.out}/")


if __name__ == "__main__":
    main()
