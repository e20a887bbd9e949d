"""Experiment configuration: dataclasses, YAML files plus dotted overrides; unknown keys are errors."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from t2diff.data.protocols import PROTOCOLS, LooOptions, PaperOptions
from t2diff.losses import LOSSES, SAMPLERS
from t2diff.metrics import METRICS
from t2diff.optim import ITEM_UPDATES
from t2diff.precision import PRECISIONS


class ConfigError(ValueError):
    pass


def choice(default: Any, choices: tuple[Any, ...]) -> Any:
    """A field whose value must be one of ``choices`` (checked by ``from_dict`` at load, naming the key)."""
    return field(default=default, metadata={"choices": choices})


def at_least(default: int, low: int = 1) -> Any:
    """An int field that must be >= ``low``."""
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return f"expected int, got {v!r}"
        return None if v >= low else f"must be >= {low}, got {v}"
    return field(default=default, metadata={"check": check})


def check_fields(obj: Any, where: str) -> None:
    """The ``choice`` / ``check`` rules of every field of the dataclass instance ``obj`` (the loader checks the
    keys a file gives; this also covers Python construction and later edits). ``where``: its dotted key."""
    for f in fields(obj):
        v = getattr(obj, f.name)
        if "choices" in f.metadata and v not in f.metadata["choices"]:
            raise ConfigError(f"{where}.{f.name}: {v!r} is not one of {', '.join(map(str, f.metadata['choices']))}")
        if "check" in f.metadata and (msg := f.metadata["check"](v)) is not None:
            raise ConfigError(f"{where}.{f.name}: {msg}")


def check_attention_sizes(obj: Any, where: str, dropouts: tuple[str, ...] = ("dropout",)) -> None:
    """The rules an attention encoder's config shares: ``num_heads`` divides ``hidden``, an ``ffn_dim`` of None or
    >= 1 (when the config has one), and each key in ``dropouts`` in [0, 1)."""
    if obj.hidden % obj.num_heads:
        raise ConfigError(f"{where}.num_heads: {obj.num_heads} does not divide {where}.hidden={obj.hidden}")
    ffn = getattr(obj, "ffn_dim", None)
    if ffn is not None and ffn < 1:
        raise ConfigError(f"{where}.ffn_dim: must be >= 1 (or null), got {ffn}")
    for key in dropouts:
        if not 0.0 <= getattr(obj, key) < 1.0:
            raise ConfigError(f"{where}.{key}: must lie in [0, 1), got {getattr(obj, key)}")


def _metric_problem(value: str) -> str | None:
    name, _, k = value.partition("@")
    if name not in METRICS or not k.isdigit() or int(k) < 1:
        return f"{value!r} is not a metric such as ndcg@10 (metrics: {', '.join(METRICS)}; K >= 1)"
    return None


@dataclass
class DataConfig:
    """``data``: the prepared dataset, the history length, the protocol and, in a section named after each
    protocol, that protocol's own options (``data.paper.split_seed``...; only the chosen one is used)."""

    path: str = "cache/ml-1m"  # a prepared dataset (``t2diff prepare`` output)
    protocol: str = choice("loo", PROTOCOLS)
    max_len: int = 50  # history length L fed to the user tower
    loo: LooOptions = field(default_factory=LooOptions)
    paper: PaperOptions = field(default_factory=PaperOptions)

    @property
    def options(self) -> LooOptions | PaperOptions:
        return getattr(self, self.protocol)

    @classmethod
    def upgrade_config(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """Flat protocol keys of older configs and checkpoints -> their sections (train_targets meant both)."""
        raw = dict(raw)
        for key, sections in LEGACY_DATA_KEYS.items():
            if key in raw:
                value = raw.pop(key)
                for sec in sections:  # the flat key wins over a nested one given beside it (an override)
                    raw[sec] = {**(raw.get(sec) or {}), key: value}
        return raw

    def validate_config(self, where: str) -> None:
        if self.max_len < 1:
            raise ConfigError(f"{where}.max_len: must be >= 1, got {self.max_len}")


# data.<key> of older configs -> the protocol sections that now hold it
LEGACY_DATA_KEYS = {"split_seed": ("paper",), "test_frac": ("paper",), "train_targets": ("loo", "paper")}


@dataclass
class TrainConfig:
    epochs: int = 50
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = 5.0
    seed: int = 2025
    patience: int = 10  # epochs without validation improvement before stopping (loo)
    # learning-rate cut on a plateau (loo): after this many epochs without a better validation value, the
    # learning rate is multiplied by lr_plateau_factor (and again after as many more); None = constant lr
    lr_plateau_patience: int | None = None
    lr_plateau_factor: float = 0.5
    select_metric: str = field(default="ndcg@10", metadata={"check": _metric_problem})  # model selection (loo)
    loss: str = choice("full", LOSSES)  # sampled: sampled softmax with logQ correction
    num_negatives: int = 1024  # sampled softmax
    negative_sampler: str = choice("popularity", SAMPLERS)
    # causal models: a loss at every position of each window (None = auto: yes when the protocol's windows
    # cover each target once (loo), no when it fixes the target positions (paper: the loss is on those only))
    all_positions: bool | None = None
    threads: int | None = None  # torch intra-op threads; None = torch default
    # wall-clock budget of one `t2diff train` invocation: the epoch that crosses it is the last (committed, so
    # --resume continues the same run); None = no limit
    max_minutes: float | None = None
    report_max_over_epochs: bool = False  # paper: also report the authors' max-over-epochs test number
    # the item table's updates: sparse = row-sparse gradients + lazy Adam (only the rows a step used; sampled
    # loss only); auto = sparse for sampled loss from t2diff.optim.SPARSE_AUTO_ITEMS items (docs/scaling.md)
    item_updates: str = choice("auto", ITEM_UPDATES)
    # fp32, or bf16 mixed precision for the training forward (t2diff.precision; evaluation is always fp32)
    precision: str = choice("fp32", PRECISIONS)

    def validate_config(self, where: str) -> None:
        for key in ("epochs", "batch_size", "patience"):
            if getattr(self, key) < (0 if key == "epochs" else 1):
                raise ConfigError(f"{where}.{key}: must be >= {0 if key == 'epochs' else 1}, "
                                  f"got {getattr(self, key)}")
        if not self.lr > 0:
            raise ConfigError(f"{where}.lr: must be > 0, got {self.lr}")
        if self.loss == "sampled" and self.negative_sampler != "in_batch" and self.num_negatives < 1:
            raise ConfigError(f"{where}.num_negatives: sampler {self.negative_sampler!r} needs >= 1, "
                              f"got {self.num_negatives}")
        if self.lr_plateau_patience is not None and self.lr_plateau_patience < 1:
            raise ConfigError(f"{where}.lr_plateau_patience: must be >= 1 (or null), got {self.lr_plateau_patience}")
        if not 0 < self.lr_plateau_factor < 1:
            raise ConfigError(f"{where}.lr_plateau_factor: must be in (0, 1), got {self.lr_plateau_factor}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"{where}.max_minutes: must be > 0 (or null), got {self.max_minutes}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"{where}.threads: must be >= 1 (or null), got {self.threads}")


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [10, 20])
    batch_size: int = 512
    mask_seen: bool = False  # off, as in the paper
    # items scored at a time per user chunk (memory O(batch_size * item_block), identical ranks; t2diff.ranking);
    # null = the whole catalogue at once (the former path)
    item_block: int | None = 2048
    # paper protocol only: also report the test metrics as the authors' test() computes them with this test batch
    # size (512 on ML-1M: the first 512 test rows counted twice; t2diff.data.protocols.authors_test_counts), beside
    # the honest ones and labelled; None = off
    authors_test_batch: int | None = None
    # a reduced pass: validation and test on a seeded sample of this many test users (the same in both; training
    # unchanged); metrics.json says so under "eval_users". None = every user, as every reported number should be
    max_users: int | None = None
    user_sample_seed: int = 0

    def validate_config(self, where: str) -> None:
        if self.max_users is not None and self.max_users < 1:
            raise ConfigError(f"{where}.max_users: must be >= 1 (or null), got {self.max_users}")
        if self.authors_test_batch is not None and self.authors_test_batch < 1:
            raise ConfigError(f"{where}.authors_test_batch: must be >= 1 (or null), got {self.authors_test_batch}")
        if not self.ks or any(k < 1 for k in self.ks):
            raise ConfigError(f"{where}.ks: needs cut-offs >= 1, got {self.ks}")
        if self.batch_size < 1:
            raise ConfigError(f"{where}.batch_size: must be >= 1, got {self.batch_size}")
        if self.item_block is not None and self.item_block < 1:
            raise ConfigError(f"{where}.item_block: must be >= 1 (or null), got {self.item_block}")


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=lambda: {"name": "sasrec"})
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate_config(self, where: str) -> None:
        if self.eval.authors_test_batch is not None and self.data.protocol != "paper":
            raise ConfigError(f"eval.authors_test_batch: the authors' test loop belongs to the paper protocol "
                              f"(data.protocol: paper); data.protocol is {self.data.protocol!r}: set it to null")


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
    if hasattr(cls, "upgrade_config"):  # a section whose layout changed maps its legacy keys first
        data = cls.upgrade_config(data)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    for f in fields(cls):
        if f.name not in kwargs:
            continue
        v = kwargs[f.name]
        if "choices" in f.metadata and v not in f.metadata["choices"]:
            raise ConfigError(f"{where}.{f.name}: {v!r} is not one of {', '.join(map(str, f.metadata['choices']))}")
        if "check" in f.metadata and (msg := f.metadata["check"](v)) is not None:
            raise ConfigError(f"{where}.{f.name}: {msg}")
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as e:  # a dataclass's own __post_init__ rule
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{where}: {e}") from None
    if hasattr(obj, "validate_config"):  # cross-field rules, with the dotted key in the message
        try:
            obj.validate_config(where)
        except ValueError as e:  # modules below config raise ValueError (they cannot import ConfigError)
            raise e if isinstance(e, ConfigError) else ConfigError(str(e)) from None
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=0.001' -> (['train', 'lr'], 0.001); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form dotted.key=value")
    key, val = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(val)


def upgrade_raw(raw: dict[str, Any], model_name: str | None = None) -> dict[str, Any]:
    """A raw config (one file or one override) in the current layout: legacy keys of the data and model
    sections mapped by their ``upgrade_config`` hooks. Each source is upgraded BEFORE it is merged with the
    others, so the later source wins whichever layout each one uses. ``model_name``: the model a section
    without ``name`` belongs to (from the files merged so far)."""
    from t2diff.registry import MODELS

    raw = dict(raw)
    if isinstance(raw.get("data"), dict):
        raw["data"] = DataConfig.upgrade_config(raw["data"])
    model = raw.get("model")
    if isinstance(model, dict):
        cls = MODELS.get(model.get("name") or model_name or "sasrec")
        if cls is not None and hasattr(cls, "upgrade_config"):
            raw["model"] = cls.upgrade_config(model)
    return raw


def _model_name(raw: dict[str, Any]) -> str | None:
    m = raw.get("model")
    return m.get("name") if isinstance(m, dict) else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for ov in overrides:
        path, value = parse_override(ov)
        node = one = {}
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
        for i in range(1, len(path)):  # a section in the way must be a mapping
            cur = raw
            for p in path[:i]:
                cur = cur.get(p) if isinstance(cur, dict) else None
            if cur is not None and not isinstance(cur, dict):
                raise ConfigError(f"override {ov!r}: {'.'.join(path[:i])!r} is not a section")
        raw = _merge(raw, upgrade_raw(one, _model_name(raw)))
    return raw


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: sections merge key by key, any other value in ``over`` replaces the base's."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config with ``base:`` inheritance: ``base: sasrec.yaml`` (relative to this file, or a list of
    files merged in order) is read first and this file's keys are merged over it, so a derived file states
    only what differs. ``model.name`` changing resets nothing: set every model key the new model needs."""
    p = Path(path).resolve()
    if not p.exists():
        raise ConfigError(f"config file {path} not found")
    if p in _seen:
        raise ConfigError(f"config file {p}: 'base:' inheritance loops ({' -> '.join(map(str, (*_seen, p)))})")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {p}: expected a mapping at the top level")
    bases = raw.pop("base", None)
    merged: dict[str, Any] = {}
    for b in [] if bases is None else [bases] if isinstance(bases, str) else bases:
        if not isinstance(b, str):
            raise ConfigError(f"config file {p}: base must be a file name or a list of them, got {b!r}")
        merged = _merge(merged, read_yaml(p.parent / b, (*_seen, p)))
    return _merge(merged, upgrade_raw(raw, _model_name(raw) or _model_name(merged)))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    raw: dict[str, Any] = read_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    return experiment_from_dict(raw)


def experiment_from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    raw = dict(raw)
    if isinstance(raw.get("model"), dict) and "name" not in raw["model"]:
        raw["model"] = {"name": "sasrec", **raw["model"]}
    cfg = from_dict(ExperimentConfig, raw)
    model_config(cfg)  # validate the model section now, not after data loading
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
    upgrade = getattr(cls, "upgrade_config", None)
    if upgrade is not None:  # a model whose config layout changed maps its legacy keys (old YAML, checkpoints)
        section = upgrade(section)
    return from_dict(cls.Config, section, "model")


# train keys a resumed run may change: its budget, to extend it, and the torch threads of the machine it runs on
BUDGET_KEYS = ("epochs", "patience", "max_minutes", "threads")


def same_run(saved: dict[str, Any], cfg: ExperimentConfig, ignore_budget: bool = True) -> bool:
    """Whether a run saved with config ``saved`` (a checkpoint's or config.yaml's dict, of any layout version)
    is the run ``cfg`` describes; by default the epoch budget and patience may differ."""
    def norm(d: dict[str, Any]) -> dict[str, Any]:
        if ignore_budget:
            d = {**d, "train": {k: v for k, v in d["train"].items() if k not in BUDGET_KEYS}}
        return d
    return norm(experiment_from_dict(saved).to_dict()) == norm(cfg.to_dict())
