"""Explicit model registry: name -> class. A new model adds one line here."""

from __future__ import annotations

from t2diff.models.base import SeqRecModel
from t2diff.models.sasrec import SASRec

MODELS: dict[str, type[SeqRecModel]] = {
    "sasrec": SASRec,
}


def get_model_class(name: str) -> type[SeqRecModel]:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered models: {sorted(MODELS)}") from None
