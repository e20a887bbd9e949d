"""A prepared dataset loaded from its cache (see prepare.py for the layout)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from t2diff.data.errors import DataError


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
        """Internal item ids of internal user ``user`` (1-based), oldest first."""
        return self.items[self.user_ptr[user - 1]: self.user_ptr[user]]

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
        ds = PreparedDataset(
            path=p, meta=meta, user_ptr=np.load(p / "user_ptr.npy"), items=np.load(p / "items.npy").astype(np.int64),
            times=times, user_ids=(p / "user_ids.txt").read_text().splitlines(),
            item_ids=(p / "item_ids.txt").read_text().splitlines(), item_features=feats,
        )
        if len(ds.user_ptr) != ds.num_users + 1 or len(ds.items) != meta["num_interactions"]:
            raise DataError(f"{p}: cache files disagree with meta.json; re-run `t2diff prepare`")
        return ds
