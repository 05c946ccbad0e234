"""`saliency-fast` / `python -m saliency_fast`: one entry point, one module per subcommand.

Each module in ``saliency_fast.commands`` exposes ``add_parser(subparsers)`` (which sets
``func`` on its parser) so subcommands stay independent of each other.

Errors: a failure the user can fix (bad arguments or files, a device this machine lacks, a full
disk, a diverged training run, an output folder in use, …) prints one line saying what is wrong
and what to do, and exits 2 (130 when interrupted); ``--debug`` shows the traceback instead. Any
other exception is a bug in saliency_fast and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("demo", "explain", "evaluate", "train", "attribute", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saliency-fast", description="Faithful, fast saliency maps for PyTorch.")
    parser.add_argument("--version", action="store_true", help="print the version and build information")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
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


def user_errors() -> tuple:
    """Exception classes that mean "the input or the environment is wrong", not "saliency_fast is
    broken": printed in one line (with --debug, raised)."""
    from .methods.samp import StepLimitExceeded
    from ._lock import FolderInUseError
    from .train.fit import TrainingDiverged

    out_of_memory = getattr(__import__("torch"), "OutOfMemoryError", MemoryError)
    # OSError covers missing, unreadable and unwritable files, a full disk and a read-only folder;
    # ValueError/TypeError every validated argument (CorruptFileError is a ValueError).
    return (ValueError, TypeError, OSError, FolderInUseError, TrainingDiverged, StepLimitExceeded, out_of_memory,
            MemoryError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "command", None) == "bench":  # everything after it goes to pytest as typed (-k samp, -x, …)
        args.pytest_args = argv[argv.index("bench") + 1:]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.version:
        from ._version import __version__
        from ._native import format_build_info

        print(f"saliency_fast {__version__}\n{format_build_info()}")
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if not args.default_malloc:
        from .allocator import tune_cpu_allocator

        tune_cpu_allocator()
    if args.debug:
        return int(args.func(args) or 0)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"saliency-fast {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except user_errors() as error:
        print(f"saliency-fast {args.command}: error: {describe(error)}", file=sys.stderr)
        print("(add --debug before the subcommand for the traceback)", file=sys.stderr)
        return 2


def describe(error: BaseException) -> str:
    """The error's message on one line (an OSError's strerror and file name when it has no message)."""
    text = " ".join(str(error).split())
    if isinstance(error, OSError) and error.strerror:
        if error.strerror.startswith("cannot"):  # ours (atomic writes, locks): already names the file
            return error.strerror
        where = f": {error.filename}" if error.filename else ""
        text = f"{error.strerror}{where}" + ("" if error.errno is None else f" (errno {error.errno})")
    return text or type(error).__name__
