"""Command line: ``t2diff <command> ...``. Each command lives in its own module under t2diff.commands
with ``add_parser(subparsers)`` and ``run(args) -> int``; this list is the explicit registry."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: list[str] = [
    # module names under t2diff.commands, in --help order
    "prepare",
    "train",
    "evaluate",
    "diagnose",
    "compare",
    "reproduce",
    "export",
    "retrieve",
    "serve",
    "upgrade_checkpoint",
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t2diff", description="T2Diff and baselines: prepare data, train, "
                                "evaluate with full ranking, compare, export, serve.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"t2diff.commands.{name}").add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from t2diff.runtime import tune_allocator

    tune_allocator()  # every command: freed tensor memory reused (t2diff.runtime; T2DIFF_ALLOCATOR=default: off)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
