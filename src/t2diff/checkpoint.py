"""Checkpoints: written atomically, carrying their full config, loaded with weights_only=True (no pickle)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

PENDING = "best.pt.pending"  # a new best model, written before last.pt and promoted to best.pt after it


class CheckpointError(ValueError):
    """A run directory whose checkpoints disagree with each other."""


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def promote(src: Path, dst: Path) -> None:
    """Atomically move a fully written checkpoint into place."""
    os.replace(src, dst)


def _epoch_of(path: Path) -> int:
    # mmap: only the small header is read, not the weights (last.pt also carries the optimizer state)
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])


def resolve(path: str | Path) -> Path:
    """A run directory or a .pt file -> the checkpoint file to use.

    In a run directory last.pt is the commit point of every epoch (the trainer writes a new best model to
    best.pt.pending, then last.pt, then promotes the pending file), and it records the selected epoch. The
    file returned holds exactly that epoch: best.pt, or best.pt.pending when a crash came between the last two
    writes (the next --resume promotes it); last.pt when the protocol selects nothing (paper). A best.pt that
    last.pt does not vouch for (a kill before last.pt was written) is never used."""
    p = Path(path)
    if not p.is_dir():
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint {p} not found")
        return p
    last, best, pending = p / "last.pt", p / "best.pt", p / PENDING
    if not last.is_file():
        what = " (best.pt without last.pt: the first epoch was interrupted)" if best.exists() else ""
        raise FileNotFoundError(f"checkpoint {last} not found{what}")
    state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)["state"]
    want = int(state.get("best_epoch", 0))
    if want == 0:  # nothing selected (paper protocol): the last epoch
        return last
    for cand in (best, pending):
        if cand.is_file() and _epoch_of(cand) == want:
            return cand
    have = {c.name: _epoch_of(c) for c in (best, pending) if c.is_file()}
    raise CheckpointError(f"{p}: last.pt records epoch {want} as the selected one, but {have or 'no best.pt'} "
                          "holds another; the run directory was modified by hand (retrain, or resume to repair)")


def load(path: str | Path) -> dict[str, Any]:
    return torch.load(resolve(path), map_location="cpu", weights_only=True)
