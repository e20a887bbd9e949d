"""The in-memory form every reader produces: one row per interaction, original ids kept as they are."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Interactions:
    users: np.ndarray  # [N] original user ids (int64 or object/str)
    items: np.ndarray  # [N] original item ids (int64 or object/str)
    times: np.ndarray | None = None  # [N] int64 unix seconds, or None where the source has no time
    order: np.ndarray | None = None  # [N] int64 explicit position in the user's history, or None
    ratings: np.ndarray | None = None  # [N] float64, or None
    sources: list[str] = field(default_factory=list)  # files read, in order
    # original item id (as str) -> feature tokens such as "genre=Comedy"
    item_features: dict[str, list[str]] | None = None
    # [N] int64 index of each row in the reader's output (the source rows in file order); set by prepare before
    # filtering so the cache keeps the file order (``file_rows.npy``)
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def select(self, keep: np.ndarray) -> Interactions:
        """Rows where the boolean mask ``keep`` is True."""

        def sub(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[keep]

        return Interactions(self.users[keep], self.items[keep], sub(self.times), sub(self.order),
                            sub(self.ratings), list(self.sources), self.item_features, sub(self.rows))
