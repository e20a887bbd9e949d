"""What ``t2diff reproduce`` runs: the paper's Table 2, 3 and 4 as studies of runs, each run a config file.

A study is one ``t2diff compare`` over one protocol and one scale; its runs are written as self-contained YAML
files (the repository config with the study's overrides merged in) so a report names exactly what ran, and a
later invocation with ``--resume`` finds the same runs by value.

Where each run's config comes from (``configs/<dataset>/``):

- scale ``ours`` (d = 64), protocol ``paper``: ``<model>-paper.yaml``, else ``<model>.yaml``;
  protocol ``loo``: ``<model>-200.yaml`` (the converged settings of the training-engine issue), else
  ``<model>-loo.yaml``, else ``<model>.yaml``;
- scale ``paper`` (the authors' 4-d models): ``paper-scale/<model>.yaml``;
- the protocol is then forced by the study, as ``t2diff compare --protocol`` does.

T2Diff's ablations and Tables 3-4 are T2Diff's config of that protocol and scale with one switch changed (Table 2's
Mixed-attention: no diffusion; W/O DP: no drift; Table 3: ``model.diffusion.schedule``; Table 4:
``model.diffusion.steps``), so a variant never differs from T2Diff in anything else. A Table 3 / 4 row whose
setting equals Table 2's T2Diff run is that run, not a second training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from t2diff.config import ConfigError, apply_overrides, experiment_from_dict, load_config, read_yaml

DATASETS = ("ml-1m", "kuairand")
PROTOCOLS = ("paper", "loo")
SCALES = ("ours", "paper")
KINDS = ("table2", "table3", "table4")

# Table 2's rows (the paper's method names, as in paper_tables.csv) and the config each one starts from;
# ablations are T2Diff plus overrides.
TABLE2: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("SASRec", "sasrec", ()),
    ("Caser", "caser", ()),
    ("GRU4Rec", "gru4rec", ()),
    ("Bert4Rec", "bert4rec", ()),
    ("DAT+", "dat", ()),
    ("Mamba4Rec", "mamba4rec", ()),
    ("ContrastVAE", "contrastvae", ()),
    ("STOSA", "stosa", ()),
    ("DiffuRec", "diffurec", ()),
    ("Mixed-attention", "t2diff", ("model.diffusion.enabled=false",)),
    ("W/O DP", "t2diff", ("model.diffusion.drift=false",)),
    ("T2Diff", "t2diff", ()),
)
ABLATION_LABELS = {"Mixed-attention": "t2diff-mixed-attention", "W/O DP": "t2diff-wo-dp"}  # as configs/ml-1m names them
OURS_ROWS: tuple[tuple[str, str, tuple[str, ...]], ...] = (("T2DiffCausal (ours)", "t2diff-causal", ()),)
TABLE3 = ("linear", "log", "exp")  # model.diffusion.schedule
TABLE4 = (10, 50, 200)  # model.diffusion.steps T
# the paper's cut-offs per dataset (Table 2 columns); the loo studies use ours
PAPER_KS = {"ml-1m": [2, 20], "kuairand": [10, 100]}
LOO_KS = [1, 5, 10, 20]
AUTHORS_TEST_BATCH = 512  # the authors' test batch size (their loop counts the first batch twice on ML-1M)

CANDIDATES: dict[tuple[str, str], tuple[str, ...]] = {
    ("ours", "paper"): ("{m}-paper.yaml", "{m}.yaml"),
    ("ours", "loo"): ("{m}-200.yaml", "{m}-loo.yaml", "{m}.yaml"),
    ("paper", "paper"): ("paper-scale/{m}.yaml",),
    ("paper", "loo"): ("paper-scale/{m}.yaml",),
}


@dataclass
class RunSpec:
    label: str  # unique within its study: the config file's stem and the run folder's name
    method: str  # the paper's row name (Table 2), or the study's setting ("beta=log", "T=10")
    source: Path  # the repository config it starts from
    overrides: tuple[str, ...] = ()
    reuse: str | None = None  # "<study key>/<label>": this row is that run (same config), not trained again


@dataclass
class Study:
    key: str  # e.g. table2-paper-ours: its folder under the output directory
    kind: str  # table2 | table3 | table4
    protocol: str
    scale: str
    runs: list[RunSpec] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # rows without a config: listed in the report

    @property
    def trained(self) -> list[RunSpec]:
        return [r for r in self.runs if r.reuse is None]


def study_key(kind: str, protocol: str, scale: str) -> str:
    return f"{kind}-{protocol}-{scale}" if kind == "table2" else f"{kind}-{scale}"


def find_config(config_root: Path, dataset: str, model: str, scale: str, protocol: str) -> Path | None:
    """The repository config a run of ``model`` starts from, or None (see the module docstring)."""
    base = config_root / dataset
    for pattern in CANDIDATES[(scale, protocol)]:
        p = base / pattern.format(m=model)
        if p.exists():
            return p
    return None


def study_overrides(dataset: str, protocol: str) -> list[str]:
    """What every run of a study shares, whatever its config says: the protocol and the cut-offs."""
    ks = PAPER_KS.get(dataset, PAPER_KS["ml-1m"]) if protocol == "paper" else LOO_KS
    out = [f"data.protocol={protocol}", f"eval.ks=[{','.join(map(str, ks))}]"]
    if protocol == "paper":
        # the authors' reporting and their test() loop's count, each labelled and kept apart from ours
        out += ["train.report_max_over_epochs=true", f"eval.authors_test_batch={AUTHORS_TEST_BATCH}"]
    return out


def build_plan(config_root: Path, dataset: str, protocols: list[str], scales: list[str],
               kinds: list[str], with_ours: bool = True) -> list[Study]:
    """Every study of the reproduction in run order (Table 2 first: Tables 3-4 reuse its T2Diff run)."""
    if dataset not in DATASETS:
        raise ConfigError(f"reproduce covers the paper's data sets {DATASETS}, not {dataset!r}")
    for name, given, allowed in (("protocol", protocols, PROTOCOLS), ("scale", scales, SCALES),
                                 ("table", kinds, KINDS)):
        bad = sorted(set(given) - set(allowed))
        if bad:
            raise ConfigError(f"unknown {name}(s) {bad}: choose from {list(allowed)}")
    studies: list[Study] = []
    for scale in scales:
        if "table2" in kinds:
            for protocol in protocols:
                st = Study(study_key("table2", protocol, scale), "table2", protocol, scale)
                for method, model, ovs in (*TABLE2, *(OURS_ROWS if with_ours else ())):
                    src = find_config(config_root, dataset, model, scale, protocol)
                    if src is None:
                        st.missing.append(f"{method}: no {' / '.join(CANDIDATES[(scale, protocol)])} for "
                                          f"{model} in {config_root / dataset}".replace("{m}", model))
                        continue
                    label = ABLATION_LABELS.get(method, model)
                    st.runs.append(RunSpec(label, method, src, ovs))
                studies.append(st)
        t2 = find_config(config_root, dataset, "t2diff", scale, "paper")
        for kind, values, key in (("table3", TABLE3, "schedule"), ("table4", TABLE4, "steps")):
            if kind not in kinds:
                continue
            st = Study(study_key(kind, "paper", scale), kind, "paper", scale)
            if t2 is None:
                st.missing.append(f"T2Diff: no config for scale {scale} in {config_root / dataset}")
                studies.append(st)
                continue
            default = load_config(t2).model["diffusion"][key]
            same_as_table2 = "table2" in kinds and "paper" in protocols
            for v in values:
                method = f"beta={v}" if kind == "table3" else f"T={v}"
                reuse = (f"{study_key('table2', 'paper', scale)}/t2diff"
                         if same_as_table2 and v == default else None)
                st.runs.append(RunSpec(f"t2diff-{_slug(method)}", method, t2, (f"model.diffusion.{key}={v}",), reuse))
            studies.append(st)
    return studies


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s.lower()).strip("-").replace("--", "-")


def write_run_config(spec: RunSpec, folder: Path, shared: list[str]) -> Path:
    """``folder/<label>.yaml``: the source config resolved (its ``base:`` chain merged) with the run's and the
    study's overrides, self-contained, with a header saying where it came from. The budget (epochs / minutes) is
    not in it: it is the invocation's, passed to compare as overrides, so it may change between invocations."""
    raw: dict[str, Any] = apply_overrides(read_yaml(spec.source), [*spec.overrides, *shared])
    try:
        experiment_from_dict(raw)  # a plan that cannot load fails here, naming the file it came from
    except ConfigError as e:
        raise ConfigError(f"{spec.source} with {[*spec.overrides, *shared]}: {e}") from None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec.label}.yaml"
    head = (f"# written by t2diff reproduce: {spec.method}\n# from {spec.source}"
            + (f" with {' '.join(spec.overrides)}" if spec.overrides else "") + "\n")
    path.write_text(head + yaml.safe_dump(raw, sort_keys=False))
    return path
