"""Explicit model registry: name -> class. A new model adds one line here."""

from __future__ import annotations

from t2diff.models.base import SeqRecModel
from t2diff.models.bert4rec import BERT4Rec
from t2diff.models.caser import Caser
from t2diff.models.contrastvae import ContrastVAE
from t2diff.models.dat import DAT
from t2diff.models.diffurec import DiffuRec
from t2diff.models.gru4rec import GRU4Rec
from t2diff.models.mamba4rec import Mamba4Rec
from t2diff.models.sasrec import SASRec
from t2diff.models.stosa import STOSA
from t2diff.models.t2diff import T2Diff
from t2diff.models.t2diff_causal import T2DiffCausal

MODELS: dict[str, type[SeqRecModel]] = {
    "sasrec": SASRec,
    "caser": Caser,
    "gru4rec": GRU4Rec,
    "bert4rec": BERT4Rec,
    "dat": DAT,
    "t2diff": T2Diff,
    "mamba4rec": Mamba4Rec,  # Liu et al., RelKD@KDD'24 (mambapy selective scan)
    "stosa": STOSA,  # Wasserstein self-attention; mean_stream=official keeps the official encoder's typo
    "contrastvae": ContrastVAE,  # Wang et al. CIKM'22; variant vd by default, official BCE loss
    "diffurec": DiffuRec,  # DiffuRec (TOIS 2024): official-code defaults, per-example training, 32-step chain
    "t2diff_causal": T2DiffCausal,  # ours: every position in one pass, few-step generator (issue 14)
}


def get_model_class(name: str) -> type[SeqRecModel]:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered models: {sorted(MODELS)}") from None
