"""Compare models on ONE prepared dataset under ONE protocol with the same seeds (``t2diff compare``).

Every model is trained and evaluated by the same Trainer and evaluator; the settings that define the test set
and the randomness (data.path, the protocol and its split, seeds, history length, cut-offs) are forced equal
across models, so each row of the table comes from the same examples. Writes compare.md and compare.csv.

``resolve`` turns the command line into runs, ``runner`` trains / reuses and measures them, ``paper`` holds the
paper's Table 2, ``report`` writes the table.
"""

from t2diff.compare.paper import PAPER_METRICS, PaperRow, paper_method, paper_row, paper_table2
from t2diff.compare.report import CSV_HEAD, CSV_TAIL, MAX_NOTE, METRIC_ORDER, ModelResult, Report, metric_columns
from t2diff.compare.resolve import FORCED, CompareOptions, Entry, config_path_for, resolve_entries, split_overrides
from t2diff.compare.runner import compare, run_model, time_user_tower

__all__ = [
    "CSV_HEAD", "CSV_TAIL", "FORCED", "MAX_NOTE", "METRIC_ORDER", "PAPER_METRICS", "CompareOptions", "Entry",
    "ModelResult", "PaperRow", "Report", "compare", "config_path_for", "metric_columns", "paper_method", "paper_row",
    "paper_table2", "resolve_entries", "run_model", "split_overrides", "time_user_tower",
]
