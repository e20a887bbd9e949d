"""The paper's Table 2 (Wang et al., WWW'25): its numbers from the package data file ``paper_tables.csv``, and
which of its rows a run reproduces (the model class's ``paper_row`` hook)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources
from typing import Any

from t2diff.config import ConfigError, ExperimentConfig, from_dict, model_config
from t2diff.registry import MODELS, get_model_class

# dataset -> (Table 2 metric columns, scale): the paper prints KuaiRand values multiplied by 10
PAPER_METRICS: dict[str, tuple[tuple[str, ...], float]] = {
    "ml-1m": (("recall@2", "recall@20", "mrr@2", "mrr@20"), 1.0),
    "kuairand": (("recall@10", "recall@100", "mrr@10", "mrr@100"), 0.1),
}


@dataclass
class PaperRow:
    method: str
    metrics: dict[str, float]
    params_mb: float | None
    infer_ms: float | None


def paper_table2(dataset: str) -> dict[str, PaperRow]:
    """Table 2 rows for ``dataset`` (ml-1m | kuairand), KuaiRand values divided by 10 back to raw metrics."""
    if dataset not in PAPER_METRICS:
        raise ConfigError(f"the paper reports ml-1m and kuairand, not {dataset!r} (use --paper-dataset)")
    cols, scale = PAPER_METRICS[dataset]
    text = resources.files("t2diff").joinpath("paper_tables.csv").read_text()
    rows: dict[str, PaperRow] = {}
    for r in csv.DictReader(io.StringIO(text)):
        if r["table"] != "2":
            continue
        rows[r["method"]] = PaperRow(
            method=r["method"], metrics={c: round(float(r[c]) * scale, 6) for c in cols},
            params_mb=float(r["params_mb"]) if r["params_mb"] else None,
            infer_ms=float(r["infer_ms"]) if r["infer_ms"] else None)
    return rows


def paper_row(cfg: ExperimentConfig) -> str | None:
    """The Table 2 row a run's config reproduces; None for a model or variant the paper does not have."""
    cls = get_model_class(cfg.model["name"])
    return cls.paper_row(model_config(cfg))


def paper_method(model: dict[str, Any]) -> str | None:
    """``paper_row`` for a bare model section (``{"name": ..., **fields}``); None for an unregistered name."""
    section = dict(model)
    name = section.pop("name", "")
    if name not in MODELS:
        return None
    cls = get_model_class(name)
    return cls.paper_row(from_dict(cls.Config, section, "model"))
