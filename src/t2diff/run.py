"""Assemble a run from its config: the prepared data, the protocol's split, what the model may know about the
data (``DataInfo``), the training objective, the model. Every command builds through here (train, evaluate,
diagnose, compare, export, retrieve, serve), so a run is put together the same way everywhere.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from t2diff import checkpoint
from t2diff.config import ExperimentConfig, experiment_from_dict, model_config
from t2diff.data.errors import DataError
from t2diff.data.prepare import rebuild
from t2diff.data.prepared import PreparedDataset
from t2diff.data.protocols import Split, make_split, sample_eval_users
from t2diff.losses import Objective
from t2diff.models.base import DataInfo, SeqRecModel
from t2diff.registry import get_model_class

CHECKPOINT_DATA_FORMAT = 1
# meta.json keys that identify a prepared dataset (what the model's ids mean)
_IDENTITY = ("dataset", "num_users", "num_items", "num_interactions", "sources", "filters", "id_type")


def data_info(ds: PreparedDataset, cfg: ExperimentConfig) -> DataInfo:
    feats = torch.from_numpy(ds.item_features) if ds.item_features is not None else None
    ntok = int(ds.meta["item_features"]["num_tokens"]) if ds.meta.get("item_features") else 0
    return DataInfo(num_items=ds.num_items, num_users=ds.num_users, max_len=cfg.data.max_len,
                    has_time=bool(ds.meta.get("has_time")), item_features=feats, num_feature_tokens=ntok)


def build_split(cfg: ExperimentConfig, ds: PreparedDataset) -> Split:
    split = make_split(ds, cfg.data.protocol, cfg.data.options, cfg.data.max_len)
    if cfg.eval.max_users is not None:  # a reduced pass: evaluate a seeded sample of users (labelled in metrics)
        split = sample_eval_users(split, cfg.eval.max_users, cfg.eval.user_sample_seed)
    return split


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


def checkpoint_data(ds: PreparedDataset, info: DataInfo) -> dict[str, Any]:
    """What a checkpoint carries so its model rebuilds without the prepared dataset: DataInfo, the item side
    features, the original item ids, and the dataset's meta (counts, sources, recipe) to find or rebuild it."""
    return {"format": CHECKPOINT_DATA_FORMAT, "path": str(Path(ds.path).resolve()), "meta": ds.meta,
            "info": {"num_items": info.num_items, "num_users": info.num_users, "max_len": info.max_len,
                     "has_time": info.has_time, "num_feature_tokens": info.num_feature_tokens},
            "item_features": info.item_features, "item_ids": list(ds.item_ids)}


def load_dataset(path: str | Path, meta: dict[str, Any] | None = None, log: Any = None) -> PreparedDataset:
    """The prepared dataset at ``path``; when ``meta`` (a checkpoint's record of it) is given it must be that
    dataset, and a deleted cache is rebuilt from the recipe ``t2diff prepare`` recorded."""
    p = Path(path)
    if not (p / "meta.json").exists() and meta is not None:
        (log or _stderr)(f"prepared dataset {p} not found: rebuilding it from its recorded recipe")
        try:
            rebuild(meta, p)
        except DataError as e:
            raise DataError(f"prepared dataset {p} is gone and rebuilding it from its recipe failed ({e}); pass "
                            "--data with the prepared dataset this model was trained on") from None
    ds = PreparedDataset.load(p)
    if meta is not None and any(ds.meta.get(k) != meta.get(k) for k in _IDENTITY):
        raise DataError(f"{p} is not the dataset this checkpoint was trained on (it differs in "
                        f"{[k for k in _IDENTITY if ds.meta.get(k) != meta.get(k)]}); pass the right --data")
    return ds


@dataclass
class LoadedRun:
    """A model rebuilt from its checkpoint alone; the prepared dataset is loaded (or rebuilt) only when a
    command needs its histories (``.ds``)."""

    model: SeqRecModel
    cfg: ExperimentConfig
    info: DataInfo
    item_ids: list[str]  # original item ids, index = internal id (0 = "<pad>")
    meta: dict[str, Any]  # the prepared dataset's meta.json at training time
    checkpoint: Path
    _ds: PreparedDataset | None = None

    @property
    def ds(self) -> PreparedDataset:
        if self._ds is None:
            self._ds = load_dataset(self.cfg.data.path, self.meta)
        return self._ds


LEGACY = ("{path} predates self-contained checkpoints (no 'data' entry): it needs its prepared dataset "
          "({data}), which was not found. Pass --data PREPARED_DIR, or convert it once with "
          "`t2diff upgrade-checkpoint {path} --data PREPARED_DIR`")


def load_run(path: str | Path, data_path: str | None = None) -> LoadedRun:
    """Rebuild a run's model (eval mode, weights loaded) from a run directory or .pt file. ``data_path``
    overrides where the prepared dataset is looked for (it must be the same dataset)."""
    ck_path = checkpoint.resolve(path)
    ck = checkpoint.load(ck_path)
    cfg = experiment_from_dict(ck["config"])
    if data_path is not None:
        cfg.data.path = data_path
    data = ck.get("data")
    ds = None
    if data is None:  # a checkpoint from before this format: the dataset must be there
        if not (Path(cfg.data.path) / "meta.json").exists():
            raise checkpoint.CheckpointError(LEGACY.format(path=ck_path, data=cfg.data.path))
        ds = PreparedDataset.load(cfg.data.path)
        info, item_ids, meta = data_info(ds, cfg), ds.item_ids, ds.meta
    else:
        i = data["info"]
        info = DataInfo(num_items=i["num_items"], num_users=i["num_users"], max_len=i["max_len"],
                        has_time=i["has_time"], item_features=data["item_features"],
                        num_feature_tokens=i["num_feature_tokens"])
        item_ids, meta = data["item_ids"], data["meta"]
    model = build_model(cfg, info)
    model.load_state_dict(ck["model_state"])
    model.eval()
    return LoadedRun(model, cfg, info, item_ids, meta, ck_path, ds)


def build_from_checkpoint(path: str | Path, data_path: str | None = None
                          ) -> tuple[SeqRecModel, ExperimentConfig, PreparedDataset]:
    """Model (eval mode, weights loaded), its config and its prepared dataset (loaded or rebuilt)."""
    r = load_run(path, data_path)
    return r.model, r.cfg, r.ds


def upgrade_checkpoint(path: str | Path, data_path: str | None = None) -> Path:
    """Add the self-contained 'data' entry to a checkpoint written before it existed (in place, atomically)."""
    ck_path = checkpoint.resolve(path)
    ck = checkpoint.load(ck_path)
    if "data" in ck:
        return ck_path
    cfg = experiment_from_dict(ck["config"])
    ds = PreparedDataset.load(data_path or cfg.data.path)
    ck["data"] = checkpoint_data(ds, data_info(ds, cfg))
    checkpoint.save_atomic(ck, ck_path)
    return ck_path


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)
