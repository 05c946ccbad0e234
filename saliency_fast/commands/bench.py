"""`saliency-fast bench`: run the bench/ suites of a source checkout and rewrite BENCHMARKS.md."""
from __future__ import annotations

import os
import subprocess
import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="run bench/ (pytest-benchmark) and rewrite BENCHMARKS.md")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, e.g. -k samp")
    parser.set_defaults(func=run)


def run(args) -> int:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = os.path.join(root, "bench", "write_benchmarks.py")
    if not os.path.exists(script):
        raise FileNotFoundError("bench/ is not installed with the package; run this from a source checkout")
    return subprocess.call([sys.executable, script, *args.pytest_args], cwd=root)
