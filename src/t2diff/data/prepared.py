"""A prepared dataset loaded from its cache (see prepare.py for the layout)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from t2diff.data.errors import DataError

HISTORY_ORDERS = ("chronological", "file")


@dataclass
class PreparedDataset:
    path: Path
    meta: dict
    user_ptr: np.ndarray  # int64 [U+1]
    items: np.ndarray  # int64 [N]
    times: np.ndarray | None  # int64 [N]
    user_ids: list[str]  # index = internal id, 0 = "<pad>"
    item_ids: list[str]
    item_features: np.ndarray | None  # int64 [I+1, F]
    file_rows: np.ndarray | None = None  # int64 [N] read-order index of each interaction; None: an older cache
    # how ``items`` / ``times`` order each history now (set_history_order); the cache's order is chronological
    history_order: str = "chronological"
    _chronological: tuple[np.ndarray, np.ndarray | None] | None = field(default=None, repr=False)

    @property
    def num_users(self) -> int:
        return int(self.meta["num_users"])

    @property
    def num_items(self) -> int:
        return int(self.meta["num_items"])

    @property
    def lengths(self) -> np.ndarray:  # [U] history length of internal users 1..U
        return np.diff(self.user_ptr)

    def history(self, user: int) -> np.ndarray:
        """Internal item ids of internal user ``user`` (1-based), oldest first (``history_order``: chronological;
        else in file order)."""
        return self.items[self.user_ptr[user - 1]: self.user_ptr[user]]

    def set_history_order(self, order: str) -> None:
        """Reorder every history in place: ``chronological`` (the cache's order) or ``file`` (the order the source
        rows were read in, as the authors' code reads ratings.dat). Only the order within each user changes, never
        a length, so a split's (user, position) pairs are the same under both: the same positions hold other
        items. In place because every command batches from the dataset its split was built on."""
        if order not in HISTORY_ORDERS:
            raise DataError(f"history order {order!r} is not one of {HISTORY_ORDERS}")
        if order == self.history_order:
            return
        if self._chronological is None:
            self._chronological = (self.items, self.times)
        items, times = self._chronological
        if order == "file":
            if self.file_rows is None:
                raise DataError(f"data.paper.history_order='file' needs the file order of the interactions, which "
                                f"the prepared dataset {self.path} predates (no file_rows.npy): re-run "
                                "`t2diff prepare` to rebuild it")
            owner = np.repeat(np.arange(self.num_users), self.lengths)  # [N] user of each row (rows grouped by user)
            perm = np.lexsort((self.file_rows, owner))  # within each user by file row; users stay where they are
            items, times = items[perm], None if times is None else times[perm]
        self.items, self.times, self.history_order = items, times, order

    def item_index(self) -> dict[str, int]:
        """Original item id (as written in item_ids.txt) -> internal id."""
        return {s: k for k, s in enumerate(self.item_ids) if k > 0}

    @staticmethod
    def load(path: str | Path) -> PreparedDataset:
        p = Path(path)
        if not (p / "meta.json").exists():
            raise DataError(f"{p} is not a prepared dataset (no meta.json); run `t2diff prepare` first")
        meta = json.loads((p / "meta.json").read_text())
        times = np.load(p / "times.npy").astype(np.int64) if (p / "times.npy").exists() else None
        feats = np.load(p / "item_features.npy").astype(np.int64) if (p / "item_features.npy").exists() else None
        rows = np.load(p / "file_rows.npy").astype(np.int64) if (p / "file_rows.npy").exists() else None
        ds = PreparedDataset(
            path=p, meta=meta, user_ptr=np.load(p / "user_ptr.npy"), items=np.load(p / "items.npy").astype(np.int64),
            times=times, user_ids=(p / "user_ids.txt").read_text().splitlines(),
            item_ids=(p / "item_ids.txt").read_text().splitlines(), item_features=feats, file_rows=rows,
        )
        n = meta["num_interactions"]
        if len(ds.user_ptr) != ds.num_users + 1 or len(ds.items) != n or (rows is not None and len(rows) != n):
            raise DataError(f"{p}: cache files disagree with meta.json; re-run `t2diff prepare`")
        return ds
