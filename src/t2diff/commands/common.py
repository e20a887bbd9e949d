"""Argument helpers shared by commands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML experiment config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. train.epochs=5 data.protocol=paper model.hidden=128")


def command_parser(sub: argparse._SubParsersAction, name: str, help: str, doc: str | None) -> argparse.ArgumentParser:
    """A command's parser; its --help description is the command module's docstring (one place for both)."""
    return sub.add_parser(name, help=help, description=(doc or help).strip(),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """--runtime / --onnx-threads of the commands that run a user tower (serve, retrieve)."""
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="user tower runtime: the PyTorch model, or onnxruntime on the export's user_tower.onnx "
                   "(needs an export made with `t2diff export --onnx`)")
    p.add_argument("--onnx-threads", type=int, default=1, help="onnxruntime intra-op threads (--runtime onnx)")


def add_sampler_args(p: argparse.ArgumentParser) -> None:
    """--sampler / --steps: the reverse chain of a diffusion model (T2Diff, T2DiffCausal), chosen at inference."""
    p.add_argument("--sampler", choices=["ddpm", "ddim"],
                   help="reverse-chain sampler at inference (default: the run's); ddim may visit fewer steps")
    p.add_argument("--steps", type=int, help="steps the sampler visits (default: all T with --sampler, else the run's)")


def apply_sampler(model: Any, args: argparse.Namespace) -> str | None:
    """Swap the model's inference sampler as --sampler / --steps ask; an error message, or None."""
    if args.sampler is None and args.steps is None:
        return None
    if not hasattr(model, "set_sampler"):
        return f"--sampler / --steps need a diffusion model; {type(model).__name__} has no reverse chain"
    sampler = model.sampler
    name = args.sampler or sampler.name
    try:
        model.set_sampler(name, args.steps)
    except ValueError as e:  # ConfigError included: the combination the model rejects, with its key
        return str(e)
    return None


def add_progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def metrics_table(rows: dict[str, dict[str, Any]]) -> str:
    """Markdown table: one row per split/model, one column per metric."""
    cols: list[str] = []
    for m in rows.values():
        cols += [k for k in m if "@" in k and k not in cols]
    lines = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.5f}" if c in m else "" for c in cols) + " |")
    return "\n".join(lines)


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
