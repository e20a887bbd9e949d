"""The compared runs from the command line: each model's config with the shared and its own ``MODEL:KEY=VALUE``
overrides, one data.path, the FORCED settings imposed on all, and unique run labels."""

from __future__ import annotations

import copy
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from t2diff.config import ConfigError, ExperimentConfig, load_config, parse_override

# Settings that must be identical for the rows to be comparable: the first model's value (after overrides)
# is imposed on the others. data.path is not in the list: a disagreement there is an error, never forced.
FORCED: tuple[tuple[str, str], ...] = (
    ("data", "protocol"), ("data", "loo"), ("data", "paper"),
    ("data", "max_len"), ("train", "seed"), ("eval", "ks"), ("eval", "mask_seen"),
)


@dataclass
class CompareOptions:
    out: Path
    models: list[str] = field(default_factory=list)  # registry names, configs looked up in config_dir
    configs: list[Path] = field(default_factory=list)  # or explicit config files
    config_dir: Path = Path("configs/ml-1m")
    protocol: str | None = None  # None: the first config's protocol
    overrides: list[str] = field(default_factory=list)  # applied to every model; "MODEL:KEY=VALUE" to one
    paper: bool = False  # add the paper's Table 2 rows
    paper_dataset: str | None = None  # which Table 2 columns; None: the prepared dataset's name
    max_over_epochs: bool = False  # paper protocol: add the authors' max-over-epochs numbers
    resume: bool = False  # skip models whose run holds metrics.json, continue interrupted ones
    only: list[str] = field(default_factory=list)  # train just these run labels (parallel jobs); no table written
    no_train: bool = False  # tabulate finished runs only; never train (models without metrics.json are left out)
    progress: bool = True
    device: str = "cpu"
    infer_batch: int = 256
    infer_repeats: int = 5
    command: str = ""  # recorded in the report; empty: rebuilt by command_line()

    def command_line(self) -> str:
        """The equivalent ``t2diff compare`` command line."""
        parts = ["t2diff", "compare"]
        if self.models:
            parts += ["--models", *self.models, "--config-dir", str(self.config_dir)]
        else:
            parts += ["--configs", *map(str, self.configs)]
        if self.protocol:
            parts += ["--protocol", self.protocol]
        parts += ["--out", str(self.out)]
        flags = {"--paper": self.paper, "--max-over-epochs": self.max_over_epochs, "--resume": self.resume,
                 "--no-train": self.no_train, "--no-progress": not self.progress}
        parts += [f for f, on in flags.items() if on]
        if self.paper_dataset:
            parts += ["--paper-dataset", self.paper_dataset]
        if self.only:
            parts += ["--only", *self.only]
        if self.device != "cpu":
            parts += ["--device", self.device]
        return shlex.join([*parts, *self.overrides])


@dataclass
class Entry:
    name: str  # run label, unique: DIR/runs/<name>
    config_path: Path
    cfg: ExperimentConfig


def _overridden(overrides: list[str], key: str) -> bool:
    return any(".".join(parse_override(o)[0]) == key for o in overrides)


def config_path_for(model: str, config_dir: Path, protocol: str | None) -> Path:
    """``<model>-<protocol>.yaml`` (e.g. sasrec-paper.yaml, t2diff-loo.yaml) when it exists, else ``<model>.yaml``
    (its protocol is then overridden by the forced one)."""
    if protocol and (config_dir / f"{model}-{protocol}.yaml").exists():
        return config_dir / f"{model}-{protocol}.yaml"
    p = config_dir / f"{model}.yaml"
    if not p.exists():
        raise ConfigError(f"no config for model {model!r}: {p} not found (pass --configs or --config-dir)")
    return p


def split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Shared overrides, and per-model ones written ``MODEL:KEY=VALUE`` (e.g. ``sasrec:train.epochs=6``, so
    each model gets its own epoch budget); MODEL is a model name or a config file's stem."""
    shared: list[str] = []
    per: dict[str, list[str]] = {}
    for o in overrides:
        key = o.split("=", 1)[0]
        if ":" in key:  # only the key is looked at: values may hold ':'
            label, rest = o.split(":", 1)
            per.setdefault(label, []).append(rest)
        else:
            shared.append(o)
    return shared, per


def resolve_entries(opts: CompareOptions) -> tuple[list[Entry], list[str]]:
    """Load every model's config with the shared (then its own) overrides, check data.path and force the shared
    settings. Returns the entries and notes on each forced change."""
    if opts.models and opts.configs:
        raise ConfigError("give --models (configs looked up in --config-dir) or --configs, not both")
    if not opts.models and not opts.configs:
        raise ConfigError("nothing to compare: give --models or --configs")
    shared, per = split_overrides(opts.overrides)
    extra = [f"data.protocol={opts.protocol}"] if opts.protocol else []
    used: set[str] = set()

    def own(*labels: str) -> list[str]:
        hits = [lab for lab in dict.fromkeys(labels) if lab in per]
        used.update(hits)
        return [o for lab in hits for o in per[lab]]

    entries: list[Entry] = []
    if opts.configs:
        for p in opts.configs:
            name = load_config(p, [*extra, *shared]).model["name"]
            cfg = load_config(p, [*extra, *shared, *own(name, Path(p).stem)])
            entries.append(Entry(name, Path(p), cfg))
    else:
        for m in opts.models:
            p = config_path_for(m, opts.config_dir, opts.protocol)
            cfg = load_config(p, [*extra, *shared, *own(m)])
            if cfg.model["name"] != m:
                raise ConfigError(f"{p} configures model {cfg.model['name']!r}, not {m!r}")
            entries.append(Entry(m, p, cfg))
    if set(per) - used:
        raise ConfigError(f"per-model override(s) for {sorted(set(per) - used)} match no compared model")
    _label_runs(entries)
    if not _overridden(shared, "data.path"):
        paths = {str(Path(e.cfg.data.path).resolve()) for e in entries}
        if len(paths) > 1:
            listing = ", ".join(f"{e.config_path}: {e.cfg.data.path}" for e in entries)
            raise ConfigError(f"the configs disagree on data.path ({listing}); a comparison uses one prepared "
                              "dataset: fix the configs or pass data.path=... to override all of them")
    return entries, _force_shared(entries)


def _label_runs(entries: list[Entry]) -> None:
    """Two configs of one model: label their runs by config file name; labels must end up unique."""
    seen: dict[str, int] = {}
    for e in entries:
        seen[e.name] = seen.get(e.name, 0) + 1
    for e in entries:
        if seen[e.name] > 1:
            e.name = e.config_path.stem
    if len({e.name for e in entries}) < len(entries):
        raise ConfigError(f"run labels collide: {[e.name for e in entries]}; give configs distinct file names")


def _force_shared(entries: list[Entry]) -> list[str]:
    """Impose the first entry's FORCED settings on the others; a note on each change."""
    notes: list[str] = []
    ref = entries[0]
    for sec, key in FORCED:
        want = getattr(getattr(ref.cfg, sec), key)
        for e in entries[1:]:
            have = getattr(getattr(e.cfg, sec), key)
            if have != want:
                setattr(getattr(e.cfg, sec), key, copy.deepcopy(want))  # never share a section object
                notes.append(f"{e.name}: {sec}.{key} {have!r} -> {want!r} (forced equal to {ref.name}'s)")
    return notes
