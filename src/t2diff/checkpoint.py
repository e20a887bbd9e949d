"""Checkpoints: written atomically, carrying their full config, loaded with weights_only=True (no pickle)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from t2diff.config import ExperimentConfig, experiment_from_dict, model_config
from t2diff.data.prepared import PreparedDataset
from t2diff.models.base import DataInfo, SeqRecModel
from t2diff.registry import get_model_class


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / "best.pt" if (p / "best.pt").exists() else p / "last.pt"
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} not found")
    return torch.load(p, map_location="cpu", weights_only=True)


def data_info(ds: PreparedDataset, cfg: ExperimentConfig) -> DataInfo:
    feats = torch.from_numpy(ds.item_features) if ds.item_features is not None else None
    ntok = int(ds.meta["item_features"]["num_tokens"]) if ds.meta.get("item_features") else 0
    return DataInfo(num_items=ds.num_items, num_users=ds.num_users, max_len=cfg.data.max_len,
                    has_time=bool(ds.meta.get("has_time")), item_features=feats, num_feature_tokens=ntok)


def build_model(cfg: ExperimentConfig, ds: PreparedDataset) -> SeqRecModel:
    cls = get_model_class(cfg.model["name"])
    return cls(model_config(cfg), data_info(ds, cfg))


def build_from_checkpoint(path: str | Path, data_path: str | None = None
                          ) -> tuple[SeqRecModel, ExperimentConfig, PreparedDataset]:
    """Model (eval mode, weights loaded), its config and its prepared dataset from a checkpoint."""
    ck = load(path)
    cfg = experiment_from_dict(ck["config"])
    if data_path is not None:
        cfg.data.path = data_path
    ds = PreparedDataset.load(cfg.data.path)
    model = build_model(cfg, ds)
    model.load_state_dict(ck["model_state"])
    model.eval()
    return model, cfg, ds
