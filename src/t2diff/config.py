"""Experiment configuration: dataclasses, YAML files plus dotted overrides; unknown keys are errors."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    pass


@dataclass
class DataConfig:
    path: str = "cache/ml-1m"  # a prepared dataset (``t2diff prepare`` output)
    protocol: str = "loo"  # loo | paper
    max_len: int = 50  # history length L fed to the user tower
    split_seed: int = 42  # paper: the train/test user split and the target positions
    test_frac: float = 0.2  # paper: share of test users
    train_targets: int = 10  # paper: target positions per train user; loo: per user per epoch (non-causal)


@dataclass
class TrainConfig:
    epochs: int = 50
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = 5.0
    seed: int = 2025
    patience: int = 10  # epochs without validation improvement before stopping (loo)
    select_metric: str = "ndcg@10"  # validation metric for model selection (loo)
    loss: str = "full"  # full | sampled (sampled softmax with logQ correction)
    num_negatives: int = 1024  # sampled softmax
    negative_sampler: str = "popularity"  # uniform | popularity | in_batch | mixed
    # causal models: a loss at every position of each window (None = auto: yes when the protocol's windows
    # cover each target once (loo), no when it fixes the target positions (paper: the loss is on those only))
    all_positions: bool | None = None
    threads: int | None = None  # torch intra-op threads; None = torch default
    report_max_over_epochs: bool = False  # paper: also report the authors' max-over-epochs test number


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [10, 20])
    batch_size: int = 512
    mask_seen: bool = False  # off, as in the paper


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=lambda: {"name": "sasrec"})
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} is not a valid {tp}")
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads '1e-3' as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected float, got {value!r}") from None
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    return value


def from_dict(cls: type, data: dict[str, Any] | None, where: str = "config") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=0.001' -> (['train', 'lr'], 0.001); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form dotted.key=value")
    key, val = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(val)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for ov in overrides:
        path, value = parse_override(ov)
        node = raw
        for p in path[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {ov!r}: {p!r} is not a section")
        node[path[-1]] = value
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} not found")
        raw = yaml.safe_load(p.read_text()) or {}
    raw = apply_overrides(raw, overrides or [])
    return experiment_from_dict(raw)


def experiment_from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    raw = dict(raw)
    if isinstance(raw.get("model"), dict) and "name" not in raw["model"]:
        raw["model"] = {"name": "sasrec", **raw["model"]}
    cfg = from_dict(ExperimentConfig, raw)
    model_config(cfg)  # validate the model section now, not after data loading
    if cfg.data.protocol not in ("loo", "paper"):
        raise ConfigError(f"data.protocol: unknown protocol {cfg.data.protocol!r}; choose loo or paper")
    return cfg


def model_config(cfg: ExperimentConfig) -> Any:
    """The model's own Config dataclass from the ``model`` section (``name`` plus its fields)."""
    from t2diff.registry import get_model_class

    section = dict(cfg.model)
    name = section.pop("name", None)
    if name is None:
        raise ConfigError("model.name is required")
    try:
        cls = get_model_class(name)
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from None
    return from_dict(cls.Config, section, f"model ({name})")
