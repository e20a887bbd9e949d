"""Original-id histories -> user embeddings -> top-K items: the logic shared by ``retrieve`` and ``serve``.

Requests speak the dataset's ORIGINAL ids (strings, as written in the prepared cache's item_ids.txt);
models and the index speak internal ids (1..I, 0 = padding). :class:`UserTower` maps between the two and
runs the model's user tower; :class:`Retriever` adds the item index; :func:`retrieve_frame` is the batch
(offline) path over a table of users or histories.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t2diff.batch import Batch
from t2diff.config import ExperimentConfig
from t2diff.data.prepared import PreparedDataset
from t2diff.data.values import timestamp_problem
from t2diff.models.base import SeqRecModel
from t2diff.retrieval.index import MISSING_ID, ItemIndex

MAX_HISTORY = 100_000  # longest accepted request history (only the last max_len reach the model)


class InputError(ValueError):
    """A request or input row the service cannot answer (bad ids, empty history, bad k...)."""

    def __init__(self, message: str, unknown_ids: list[Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.unknown_ids = unknown_ids or []


class ModelOutputError(RuntimeError):
    """The user tower produced NaN / inf for some histories: there is no ranking to answer with (the evaluator
    gives such a target the worst rank; retrieval and serving refuse to answer instead of returning noise)."""

    def __init__(self, rows: list[int] | None = None) -> None:
        which = f"{len(rows)} history(ies) (rows {rows[:10]})" if rows is not None else "this history"
        super().__init__(f"the model produced a NaN or infinite user vector for {which}; the checkpoint is "
                         "broken or the input is out of range")
        self.rows = rows or []


def _id_str(x: Any) -> str:
    """JSON / Parquet id -> the string form item_ids.txt uses. Integral floats (pandas upcasts) become ints."""
    if isinstance(x, bool):  # bool is an int subclass; True is never an item id
        raise InputError(f"id {x!r} is a boolean, expected a string or an integer")
    if isinstance(x, (float, np.floating)):
        if not math.isfinite(x) or not float(x).is_integer():
            raise InputError(f"id {x!r} is not an integer or a string")
        x = int(x)
    if isinstance(x, np.integer):
        x = int(x)
    return str(x).strip()


class UserTower:
    """A checkpoint's model plus its dataset's id maps: original-id histories -> user embeddings."""

    def __init__(self, model: SeqRecModel, cfg: ExperimentConfig, ds: PreparedDataset) -> None:
        self.model, self.cfg, self.ds = model.eval(), cfg, ds
        self.model_name: str = cfg.model["name"]
        self.max_len: int = cfg.data.max_len
        self.num_items: int = ds.num_items
        # Models only read timestamps where the data had them (DataInfo.has_time); elsewhere they are ignored.
        self.uses_time: bool = bool(ds.meta.get("has_time"))
        self.item_ids: list[str] = ds.item_ids  # internal -> original
        self._item_index = ds.item_index()  # original -> internal
        self._user_index: dict[str, int] | None = None
        self.int_item_ids = ds.meta.get("id_type", {}).get("item") == "int"  # answer with ints, as the data had

    # ---- ids ----------------------------------------------------------------------------------------
    def to_internal(self, ids: Iterable[Any]) -> tuple[list[int], list[Any]]:
        """Original ids -> (internal ids of the known ones, in order; the unknown ones, deduplicated)."""
        out: list[int] = []
        unknown: list[Any] = []
        for x in ids:
            k = self._item_index.get(_id_str(x))
            if k is None:
                if x not in unknown:
                    unknown.append(x)
            else:
                out.append(k)
        return out, unknown

    def user_internal(self, user_id: Any) -> int | None:
        if self._user_index is None:
            self._user_index = {s: k for k, s in enumerate(self.ds.user_ids) if k > 0}
        return self._user_index.get(_id_str(user_id))

    def original_item(self, internal: int) -> str | int:
        s = self.item_ids[internal]
        return int(s) if self.int_item_ids else s

    # ---- embeddings ---------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, histories: Sequence[Sequence[int]], times: Sequence[Sequence[int] | None] | None = None,
              request_times: Sequence[int | None] | None = None) -> np.ndarray:
        """User embeddings [B, D] float32 for internal-id histories (oldest first; the last max_len are used).

        times: per row, unix seconds of each behaviour (None: unknown). request_times: per row, the time the
        recommendation is for; None -> now where the row has timestamps (the target is consumed now), else 0
        ("unknown", a bucket the time-aware models learned)."""
        b = len(histories)
        t_rows: list[list[int]] | None = None
        t_req: list[int] | None = None
        if self.uses_time and times is not None:
            now = int(time.time())
            t_rows = [list(t) if t is not None else [0] * len(h) for h, t in zip(histories, times, strict=True)]
            rq = list(request_times) if request_times is not None else [None] * b
            t_req = [int(r) if r is not None else (now if t is not None else 0)
                     for r, t in zip(rq, times, strict=True)]
        batch = Batch.from_histories([list(h) for h in histories], self.max_len, t_rows, t_req)
        return self.embed_batch(batch)

    @torch.no_grad()
    def embed_batch(self, batch: Batch) -> np.ndarray:
        """User embeddings [B, D] float32 of a built serving Batch: the one call another runtime replaces
        (onnx_tower.OnnxUserTower)."""
        return self.model.user_embeddings(batch).detach().float().cpu().numpy()

    @torch.no_grad()
    def item_embeddings(self) -> np.ndarray:
        """[I+1, D] float32; row 0 is padding."""
        return self.model.item_embeddings().detach().float().cpu().numpy()


@dataclass
class Retriever:
    """User tower + item index: top-K original item ids for original-id histories."""

    tower: UserTower
    index: ItemIndex
    meta: dict[str, Any]  # provenance: checkpoint, export folder, index config

    def check_k(self, k: Any) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= self.index.size:
            raise InputError(f"k must be an integer between 1 and {self.index.size} (the number of items), "
                             f"got {k!r}")
        return int(k)

    def topk(self, histories: Sequence[Sequence[int]], k: int, exclude_seen: bool = False,
             times: Sequence[Sequence[int] | None] | None = None,
             request_times: Sequence[int | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores [B, k] float32 descending, internal ids [B, k]); id -1 / -inf where fewer than k qualify
        (exclusion of seen items left fewer than k)."""
        q = self.tower.embed(histories, times, request_times)  # [B, D]
        bad = np.flatnonzero(~np.isfinite(q).all(axis=1))
        if bad.size:
            raise ModelOutputError(bad.tolist())
        exclude = [set(h) for h in histories] if exclude_seen else None  # the whole history, not only the window
        return self.index.search(q, k, exclude)


# ---- request validation (one row = one history) -----------------------------------------------------
def validate_history(tower: UserTower, history: Sequence[Any], timestamps: Sequence[Any] | None,
                     where: str = "") -> tuple[list[int], list[int] | None]:
    """Original ids (+ optional timestamps) -> internal ids (+ timestamps). Raises InputError saying what is
    wrong; ``where`` prefixes the message (e.g. "row 3: ")."""
    if len(history) == 0:
        raise InputError(f"{where}history is empty: send at least one item id")
    if len(history) > MAX_HISTORY:
        raise InputError(f"{where}history has {len(history)} items; at most {MAX_HISTORY} are accepted "
                         f"(only the last {tower.max_len} are used)")
    if timestamps is not None and len(timestamps) != len(history):
        raise InputError(f"{where}timestamps has {len(timestamps)} entries but history has {len(history)}: "
                         "send one unix time (seconds) per history item, or none")
    try:
        internal, unknown = tower.to_internal(history)
    except InputError as e:  # a malformed id (bool, 1.5, NaN)
        raise InputError(f"{where}history: {e.message}") from None
    if unknown:
        shown = ", ".join(repr(x) for x in unknown[:20]) + (f" (+{len(unknown) - 20} more)" if len(unknown) > 20
                                                            else "")
        raise InputError(f"{where}unknown item id(s) {shown}: not among the model's {tower.num_items} items",
                         unknown_ids=list(unknown))
    ts: list[int] | None = None
    if timestamps is not None:
        ts = []
        for t in timestamps:
            if (msg := timestamp_problem(t)) is not None:  # the readers' rule (t2diff.data.values)
                raise InputError(f"{where}{msg}")
            ts.append(int(t))
    return internal, ts


# ---- offline batch retrieval --------------------------------------------------------------------------
_SPLIT = re.compile(r"[,\s]+")


def parse_list(cell: Any) -> list[Any] | None:
    """A table cell holding a list of ids: a list/array, a JSON list string, or a space/comma-separated
    string. None / NaN / "" -> None."""
    if cell is None:
        return None
    if isinstance(cell, (list, tuple, np.ndarray)):
        return list(cell)
    if isinstance(cell, float) and math.isnan(cell):
        return None
    s = str(cell).strip()
    if not s:
        return None
    if s.startswith("["):
        try:
            v = json.loads(s)
        except json.JSONDecodeError as e:
            raise InputError(f"cannot parse {s[:60]!r} as a JSON list: {e}") from e
        if not isinstance(v, list):
            raise InputError(f"{s[:60]!r} is not a list")
        return v
    return [t for t in _SPLIT.split(s) if t]


def _ints(values: list[Any], where: str) -> list[int]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise InputError(f"{where}timestamp {v!r} is not a number") from None
        if not math.isfinite(f) or not f.is_integer():
            raise InputError(f"{where}timestamp {v!r} is not an integer (unix seconds)")
        if (msg := timestamp_problem(int(f))) is not None:
            raise InputError(f"{where}{msg}")
        out.append(int(f))
    return out


def _known(tower: UserTower, x: Any) -> bool:
    try:
        return bool(tower.to_internal([x])[0])
    except InputError:  # malformed ids count as unknown when skipping
        return False


def _opt_int(cell: Any, where: str) -> int | None:
    if cell is None or (isinstance(cell, float) and math.isnan(cell)) or str(cell).strip() == "":
        return None
    return _ints([cell], where)[0]


def read_table(path: str | Path):  # -> pandas.DataFrame (pandas imported lazily: it is slow to import)
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"input file {p} not found")
    suf = p.suffix.lower()
    if suf in (".parquet", ".pq"):
        return pd.read_parquet(p)
    if suf in (".csv", ".tsv", ".txt"):
        # ids stay strings ("007" is not 7); empty cells stay "" rather than NaN
        return pd.read_csv(p, sep="\t" if suf == ".tsv" else ",", dtype=str, keep_default_na=False)
    if suf in (".jsonl", ".ndjson"):
        return pd.read_json(p, lines=True, dtype=False)
    if suf == ".json":
        return pd.read_json(p, dtype=False)
    raise InputError(f"{p}: unsupported input format {suf!r}; use .parquet, .csv, .tsv, .jsonl or .json")


@dataclass
class RetrieveStats:
    rows: int = 0
    answered: int = 0
    skipped_rows: list[tuple[int, str]] | None = None  # (row, reason)
    dropped_items: int = 0  # unknown item ids removed from histories (skip_unknown)


def retrieve_frame(retriever: Retriever, df: Any, k: int, exclude_seen: bool = False, skip_unknown: bool = False,
                   batch_size: int = 256) -> tuple[Any, RetrieveStats]:
    """Top-k for each row of ``df`` -> (pyarrow Table user, rank, item, score; stats).

    Rows either name a user (column ``user_id``: the user's full prepared history, with its timestamps) or
    carry a ``history`` (list / string of original item ids, optional ``timestamps`` and ``request_time``;
    ``user_id`` then only labels the output, else the 0-based row number does). Unknown ids raise InputError
    naming the row and the ids; with ``skip_unknown`` unknown items are dropped from histories and rows with
    an unknown user or nothing left are skipped (listed in the stats)."""
    import pyarrow as pa

    tower = retriever.tower
    k = retriever.check_k(k)
    cols = set(df.columns)
    if "history" not in cols and "user_id" not in cols:
        raise InputError(f"input needs a 'user_id' or a 'history' column; it has {sorted(map(str, cols))}")
    by_history = "history" in cols
    labels = df["user_id"].tolist() if "user_id" in cols else list(range(len(df)))
    hist_col = df["history"].tolist() if by_history else None
    ts_col = df["timestamps"].tolist() if by_history and "timestamps" in cols else None
    rq_col = df["request_time"].tolist() if "request_time" in cols else None
    stats = RetrieveStats(rows=len(df), skipped_rows=[])

    rows: list[int] = []
    hists: list[list[int]] = []
    times: list[list[int] | None] = []
    req: list[int | None] = []
    for i in range(len(df)):
        where = f"row {i}: "
        try:
            rt = _opt_int(rq_col[i], where) if rq_col is not None else None
            if by_history:
                h = parse_list(hist_col[i]) or []
                t = parse_list(ts_col[i]) if ts_col is not None else None
                t = _ints(t, where) if t is not None else None
                if skip_unknown:
                    keep = [j for j, x in enumerate(h) if _known(tower, x)]
                    stats.dropped_items += len(h) - len(keep)
                    if t is not None and len(t) == len(h):
                        t = [t[j] for j in keep]
                    h = [h[j] for j in keep]
                    if not h:
                        stats.skipped_rows.append((i, f"{where}no known item ids in the history"))
                        continue
                internal, ts = validate_history(tower, h, t, where)
            else:
                u = tower.user_internal(labels[i])
                if u is None:
                    msg = f"{where}unknown user id {labels[i]!r}: not among the {tower.ds.num_users} prepared users"
                    if not skip_unknown:
                        raise InputError(msg, unknown_ids=[labels[i]])
                    stats.skipped_rows.append((i, msg))
                    continue
                internal = tower.ds.history(u).tolist()
                ts = (tower.ds.times[tower.ds.user_ptr[u - 1]: tower.ds.user_ptr[u]].tolist()
                      if tower.ds.times is not None else None)
        except InputError as e:  # parse errors of one cell: say which row
            if e.message.startswith(where):
                raise
            raise InputError(where + e.message, e.unknown_ids) from None
        rows.append(i)
        hists.append(internal)
        times.append(ts)
        req.append(rt)

    out_user: list[Any] = []
    out_rank: list[np.ndarray] = []
    out_item: list[Any] = []
    out_score: list[np.ndarray] = []
    for s in range(0, len(rows), batch_size):
        sl = slice(s, s + batch_size)
        try:
            scores, ids = retriever.topk(hists[sl], k, exclude_seen, times[sl], req[sl])
        except ModelOutputError as e:  # name the input rows, not the batch rows
            raise ModelOutputError([rows[s + r] for r in e.rows]) from None
        for r, (sc, it) in enumerate(zip(scores, ids, strict=True)):
            ok = it != MISSING_ID
            n = int(ok.sum())
            out_user += [labels[rows[s + r]]] * n
            out_rank.append(np.arange(1, n + 1, dtype=np.int32))
            out_item += [tower.original_item(int(x)) for x in it[ok]]
            out_score.append(sc[ok])
    stats.answered = len(rows)
    table = pa.table({
        "user": pa.array(out_user),
        "rank": pa.array(np.concatenate(out_rank) if out_rank else np.zeros(0, np.int32)),
        "item": pa.array(out_item, type=pa.int64() if tower.int_item_ids else pa.string()),
        "score": pa.array(np.concatenate(out_score) if out_score else np.zeros(0, np.float32)),
    })
    return table, stats
