"""Offline (batch) retrieval: top-k for every row of a table of users or histories -> a pyarrow Table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from t2diff.retrieval.index import MISSING_ID
from t2diff.retrieval.requests import InputError, validate_history
from t2diff.retrieval.tables import parse_list, parse_optional_timestamp, parse_timestamps

if TYPE_CHECKING:  # user_tower re-exports this module's names, so it is imported at call time
    from t2diff.retrieval.user_tower import Retriever, UserTower


@dataclass
class RetrieveStats:
    rows: int = 0
    answered: int = 0
    skipped_rows: list[tuple[int, str]] | None = None  # (row, reason)
    dropped_items: int = 0  # unknown item ids removed from histories (skip_unknown)


def _known(tower: UserTower, x: Any) -> bool:
    try:
        return bool(tower.to_internal([x])[0])
    except InputError:  # malformed ids count as unknown when skipping
        return False


def retrieve_frame(retriever: Retriever, df: Any, k: int, exclude_seen: bool = False, skip_unknown: bool = False,
                   batch_size: int = 256) -> tuple[Any, RetrieveStats]:
    """Top-k for each row of ``df`` -> (pyarrow Table user, rank, item, score; stats).

    Rows either name a user (column ``user_id``: the user's full prepared history, with its timestamps) or
    carry a ``history`` (list / string of original item ids, optional ``timestamps`` and ``request_time``;
    ``user_id`` then only labels the output, else the 0-based row number does). Unknown ids raise InputError
    naming the row and the ids; with ``skip_unknown`` unknown items are dropped from histories and rows with
    an unknown user or nothing left are skipped (listed in the stats)."""
    import pyarrow as pa

    from t2diff.retrieval.user_tower import ModelOutputError

    tower = retriever.tower
    k = retriever.check_k(k)
    cols = set(df.columns)
    if "history" not in cols and "user_id" not in cols:
        raise InputError(f"input needs a 'user_id' or a 'history' column; it has {sorted(map(str, cols))}")
    by_history = "history" in cols
    if not by_history:
        tower.require_data("rows naming a user_id (and no history column)")  # one clear error, not one per row
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
            rt = parse_optional_timestamp(rq_col[i], where) if rq_col is not None else None
            if by_history:
                h = parse_list(hist_col[i]) or []
                t = parse_list(ts_col[i]) if ts_col is not None else None
                t = parse_timestamps(t, where) if t is not None else None
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
                    msg = f"{where}unknown user id {labels[i]!r}: not among the {tower.num_users} prepared users"
                    if not skip_unknown:
                        raise InputError(msg, unknown_ids=[labels[i]])
                    stats.skipped_rows.append((i, msg))
                    continue
                internal, ts = tower.user_history(u)
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
