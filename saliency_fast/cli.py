"""`saliency-fast` / `python -m saliency_fast`: one entry point, one module per subcommand.

Each module in ``saliency_fast.commands`` exposes ``add_parser(subparsers)`` (which sets
``func`` on its parser) so subcommands stay independent of each other.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("demo", "explain", "evaluate", "train", "attribute", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saliency-fast", description="Faithful, fast saliency maps for PyTorch.")
    parser.add_argument("--version", action="store_true", help="print the version and build information")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc as it is (by default freed memory is kept for reuse: "
                             "faster on CPU, at the cost of resident memory; see saliency_fast.allocator)")
    subparsers = parser.add_subparsers(dest="command")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"saliency_fast.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"saliency_fast.commands.{name}":
                raise
            continue  # a subcommand not shipped in this build
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__
        from ._native import format_build_info

        print(f"saliency_fast {__version__}\n{format_build_info()}")
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if not args.default_malloc:
        from .allocator import tune_cpu_allocator

        tune_cpu_allocator()
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"saliency-fast {args.command}: error: {error}", file=sys.stderr)
        return 2
