"""Internal-id histories -> user embeddings -> top-K items: the model side shared by ``retrieve`` and ``serve``.

:class:`UserTower` runs a checkpoint's user tower and maps ids through an :class:`~t2diff.retrieval.ids.ItemCatalog`
(original <-> internal item ids); it needs the prepared dataset only to look up a user's stored history.
:class:`Retriever` adds the item index. The other jobs live in their own modules: ``ids`` (id maps), ``requests``
(validation, InputError), ``tables`` (input files and cells), ``offline`` (retrieve_frame). Their public names
are re-exported here so ``from t2diff.retrieval.user_tower import ...`` keeps working (offline.py needs this
module's classes only at call time, which keeps the re-export free of an import cycle).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from t2diff.batch import Batch
from t2diff.config import ExperimentConfig
from t2diff.models.base import SeqRecModel
from t2diff.retrieval.ids import PAD, ItemCatalog, id_str
from t2diff.retrieval.index import ItemIndex
from t2diff.retrieval.offline import RetrieveStats, retrieve_frame  # noqa: F401  (re-exported)
from t2diff.retrieval.requests import MAX_HISTORY, InputError, validate_history
from t2diff.retrieval.tables import parse_list, read_table  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from t2diff.data.prepared import PreparedDataset

__all__ = [
    "MAX_HISTORY", "InputError", "ItemCatalog", "ModelOutputError", "RetrieveStats", "Retriever", "UserTower",
    "parse_list", "read_table", "retrieve_frame", "validate_history",
]


class ModelOutputError(RuntimeError):
    """The user tower produced NaN / inf for some histories: there is no ranking to answer with (the evaluator
    gives such a target the worst rank; retrieval and serving refuse to answer instead of returning noise)."""

    def __init__(self, rows: list[int] | None = None) -> None:
        which = f"{len(rows)} history(ies) (rows {rows[:10]})" if rows is not None else "this history"
        super().__init__(f"the model produced a NaN or infinite user vector for {which}; the checkpoint is "
                         "broken or the input is out of range")
        self.rows = rows or []


class UserTower:
    """A checkpoint's model plus its item catalog: original-id histories -> user embeddings.

    ``UserTower(model, cfg, ds)`` takes the catalog and ``has_time`` from the prepared dataset. Without one,
    pass ``catalog`` and ``has_time`` (what the model was trained on: DataInfo.has_time); the tower then answers
    histories but not user ids. ``max_len`` defaults to the config's."""

    def __init__(self, model: SeqRecModel, cfg: ExperimentConfig,
                 ds: PreparedDataset | Callable[[], PreparedDataset] | None = None, *,
                 catalog: ItemCatalog | None = None, has_time: bool | None = None,
                 max_len: int | None = None) -> None:
        """``ds`` may be a callable that loads the dataset on first use (a checkpoint's data: nothing is read
        until a command needs stored histories)."""
        if (ds is None or callable(ds)) and (catalog is None or has_time is None):
            raise TypeError("UserTower needs a prepared dataset, or both catalog= and has_time=")
        self.model, self.cfg = model.eval(), cfg
        self._ds, self._load_ds = (None, ds) if callable(ds) else (ds, None)
        self.catalog: ItemCatalog = catalog if catalog is not None else ItemCatalog.from_dataset(ds)
        self.model_name: str = cfg.model["name"]
        self.max_len: int = max_len if max_len is not None else cfg.data.max_len
        # Models only read timestamps where the data had them (DataInfo.has_time); elsewhere they are ignored.
        self.uses_time: bool = bool(has_time if has_time is not None else ds.meta.get("has_time"))
        self.item_ids: list[str] = [PAD, *self.catalog.item_ids]  # internal -> original (0 = padding)
        self._user_index: dict[str, int] | None = None

    @property
    def num_items(self) -> int:
        return self.catalog.num_items

    @property
    def int_item_ids(self) -> bool:  # answer with ints, as the data had them
        return self.catalog.int_ids

    # ---- ids ----------------------------------------------------------------------------------------
    def to_internal(self, ids: Iterable[Any]) -> tuple[list[int], list[Any]]:
        """Original ids -> (internal ids of the known ones, in order; the unknown ones, deduplicated)."""
        return self.catalog.to_internal(ids)

    def original_item(self, internal: int) -> str | int:
        return self.catalog.original(internal)

    # ---- stored users (need the prepared dataset) ------------------------------------------------------
    @property
    def ds(self) -> PreparedDataset | None:
        if self._ds is None and self._load_ds is not None:
            self._ds = self._load_ds()
        return self._ds

    def data_source(self) -> PreparedDataset | Callable[[], PreparedDataset] | None:
        """What this tower reads stored histories from, without loading it (for a tower built on this one)."""
        return self._ds if self._ds is not None else self._load_ds

    def require_data(self, what: str = "a user id") -> PreparedDataset:
        """The prepared dataset, or an InputError saying that ``what`` cannot be answered without it."""
        if self.ds is None:
            raise InputError(f"{what} cannot be answered without the users' stored histories, and this user tower "
                             "has no prepared dataset: send histories (original item ids) instead, or load the "
                             "tower with its data")
        return self.ds

    @property
    def num_users(self) -> int:
        return self.require_data("the number of prepared users").num_users

    def user_internal(self, user_id: Any) -> int | None:
        """Original user id -> internal id, None when unknown."""
        if self._user_index is None:
            ds = self.require_data(f"user id {user_id!r}")
            self._user_index = {s: k for k, s in enumerate(ds.user_ids) if k > 0}
        return self._user_index.get(id_str(user_id))

    def user_history(self, user: int) -> tuple[list[int], list[int] | None]:
        """Internal user id -> its full stored history (internal item ids, oldest first) and timestamps."""
        ds = self.require_data(f"user {user}")
        lo, hi = ds.user_ptr[user - 1], ds.user_ptr[user]
        return ds.items[lo:hi].tolist(), ds.times[lo:hi].tolist() if ds.times is not None else None

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

