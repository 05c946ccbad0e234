"""`saliency-fast bench`: run the benchmark suites of a source checkout and rewrite its BENCHMARKS.md.

The suites (bench/, pytest-benchmark) are not part of the installed package: they compare this
package with its peers and write the checkout's BENCHMARKS.md. So the command works inside a clone
of the repository (the current folder, or the nearest folder above it, that holds
bench/write_benchmarks.py next to saliency_fast/), and measures that checkout's package; anywhere
else it says so in one line.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Optional

SCRIPT = os.path.join("bench", "write_benchmarks.py")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("bench", help="in a source checkout: run bench/ (pytest-benchmark) and rewrite "
                                   "BENCHMARKS.md")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, e.g. -k samp")
    parser.set_defaults(func=run)


def find_checkout(start: str) -> Optional[str]:
    """The nearest folder from ``start`` upwards holding bench/write_benchmarks.py and saliency_fast/."""
    folder = os.path.abspath(start)
    while True:
        if os.path.exists(os.path.join(folder, SCRIPT)) and os.path.isdir(os.path.join(folder, "saliency_fast")):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def run(args: argparse.Namespace) -> int:
    root = find_checkout(os.getcwd())
    if root is None:
        raise FileNotFoundError(
            f"no source checkout here: the benchmark suites (bench/) are not installed with the package; run "
            f"saliency-fast bench inside a clone of the saliency_fast repository (the folder holding {SCRIPT}), "
            "or `make bench` there")
    return subprocess.call([sys.executable, os.path.join(root, SCRIPT), *args.pytest_args], cwd=root)
