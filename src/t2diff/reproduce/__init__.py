"""``t2diff reproduce``: the paper's Tables 2-4 and Figure 4 on one data set, at our scale and the authors', under
both protocols, in one command (``plan`` says what runs, ``runner`` runs it through ``compare``, ``report``
writes REPORT.md)."""

from t2diff.reproduce.plan import DATASETS, KINDS, PROTOCOLS, SCALES, RunSpec, Study, build_plan
from t2diff.reproduce.runner import ReproduceOptions, reproduce

__all__ = ["DATASETS", "KINDS", "PROTOCOLS", "SCALES", "ReproduceOptions", "RunSpec", "Study", "build_plan",
           "reproduce"]
