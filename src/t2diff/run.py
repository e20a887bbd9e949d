"""Assemble a run from its config: the prepared data, the protocol's split, what the model may know about the
data (``DataInfo``), the training objective, the model. Every command builds through here (train, evaluate,
diagnose, compare, export, retrieve, serve), so a run is put together the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from t2diff import checkpoint
from t2diff.config import ExperimentConfig, experiment_from_dict, model_config
from t2diff.data.prepared import PreparedDataset
from t2diff.data.protocols import Split, make_split
from t2diff.losses import Objective
from t2diff.models.base import DataInfo, SeqRecModel
from t2diff.registry import get_model_class


def data_info(ds: PreparedDataset, cfg: ExperimentConfig) -> DataInfo:
    feats = torch.from_numpy(ds.item_features) if ds.item_features is not None else None
    ntok = int(ds.meta["item_features"]["num_tokens"]) if ds.meta.get("item_features") else 0
    return DataInfo(num_items=ds.num_items, num_users=ds.num_users, max_len=cfg.data.max_len,
                    has_time=bool(ds.meta.get("has_time")), item_features=feats, num_feature_tokens=ntok)


def build_split(cfg: ExperimentConfig, ds: PreparedDataset) -> Split:
    if cfg.data.protocol == "paper":
        return make_split(ds, "paper", seed=cfg.data.split_seed, test_frac=cfg.data.test_frac,
                          history_cap=cfg.data.max_len, train_targets=cfg.data.train_targets)
    return make_split(ds, cfg.data.protocol)


def objective(cfg: ExperimentConfig, ds: PreparedDataset | None = None, split: Split | None = None) -> Objective:
    """The training objective of ``cfg.train``; popularity counts from the split's training part."""
    t = cfg.train
    counts = None
    if t.loss == "sampled" and t.negative_sampler != "uniform":
        if ds is None or split is None:
            raise ValueError(f"train.negative_sampler={t.negative_sampler!r} needs the data to count items")
        counts = split.train_item_counts(ds)
    return Objective(t.loss, t.num_negatives, t.negative_sampler, counts)


def build_model(cfg: ExperimentConfig, info: DataInfo, obj: Objective | None = None) -> SeqRecModel:
    return get_model_class(cfg.model["name"])(model_config(cfg), info, obj)


@dataclass
class Assembled:
    """A run's parts for training: data, split, model (with its objective)."""

    cfg: ExperimentConfig
    ds: PreparedDataset
    split: Split
    info: DataInfo
    model: SeqRecModel


def assemble(cfg: ExperimentConfig, ds: PreparedDataset | None = None) -> Assembled:
    """Everything a training run needs, from its config (the model's weights are initialised from the
    global torch seed the caller set)."""
    ds = ds or PreparedDataset.load(cfg.data.path)
    split = build_split(cfg, ds)
    info = data_info(ds, cfg)
    return Assembled(cfg, ds, split, info, build_model(cfg, info, objective(cfg, ds, split)))


def build_from_checkpoint(path: str | Path, data_path: str | None = None
                          ) -> tuple[SeqRecModel, ExperimentConfig, PreparedDataset]:
    """Model (eval mode, weights loaded), its config and its prepared dataset from a checkpoint."""
    ck = checkpoint.load(path)
    cfg = experiment_from_dict(ck["config"])
    if data_path is not None:
        cfg.data.path = data_path
    ds = PreparedDataset.load(cfg.data.path)
    model = build_model(cfg, data_info(ds, cfg))
    model.load_state_dict(ck["model_state"])
    model.eval()
    return model, cfg, ds
