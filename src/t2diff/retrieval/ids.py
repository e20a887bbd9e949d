"""Original ids <-> internal ids.

Requests speak the dataset's ORIGINAL ids (strings, as written in the prepared cache's item_ids.txt); models and
the index speak internal ids (1..I, 0 = padding). :class:`ItemCatalog` is that map for items; it is built from
a plain list of original ids (+ whether they were integers), so it does not need the prepared dataset.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from t2diff.retrieval.requests import InputError

if TYPE_CHECKING:
    from t2diff.data.prepared import PreparedDataset

PAD = "<pad>"  # the original-id slot of internal id 0 in id lists that include padding


def id_str(x: Any) -> str:
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


class ItemCatalog:
    """The items a model knows: internal id ``r + 1`` is original id ``item_ids[r]``.

    ``int_ids``: the dataset's item ids were integers, so answers are ints (as the data had them) rather than
    strings; lookups accept either form ("7" and 7 are the same item)."""

    def __init__(self, item_ids: Sequence[str], int_ids: bool) -> None:
        self.item_ids: list[str] = [str(s) for s in item_ids]  # no padding entry: the item_ids.txt of an export
        self.int_ids = bool(int_ids)
        self._index = {s: k for k, s in enumerate(self.item_ids, start=1)}
        if len(self._index) != len(self.item_ids):
            raise ValueError(f"item ids are not unique ({len(self.item_ids) - len(self._index)} repeated)")

    @classmethod
    def from_dataset(cls, ds: PreparedDataset) -> ItemCatalog:
        return cls(ds.item_ids[1:], ds.meta.get("id_type", {}).get("item") == "int")

    # Plain JSON, e.g. to store the catalog inside a checkpoint.
    def to_dict(self) -> dict[str, Any]:
        return {"item_ids": list(self.item_ids), "id_type": "int" if self.int_ids else "str"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ItemCatalog:
        if d.get("id_type") not in ("int", "str"):
            raise ValueError(f"item catalog id_type must be 'int' or 'str', got {d.get('id_type')!r}")
        return cls(d["item_ids"], d["id_type"] == "int")

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.item_ids)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ItemCatalog) and self.int_ids == other.int_ids
                and self.item_ids == other.item_ids)

    def internal(self, x: Any) -> int | None:
        """One original id -> its internal id, None when unknown; InputError when malformed (bool, 1.5, NaN)."""
        return self._index.get(id_str(x))

    def to_internal(self, ids: Iterable[Any]) -> tuple[list[int], list[Any]]:
        """Original ids -> (internal ids of the known ones, in order; the unknown ones, deduplicated)."""
        out: list[int] = []
        unknown: list[Any] = []
        for x in ids:
            k = self._index.get(id_str(x))
            if k is None:
                if x not in unknown:
                    unknown.append(x)
            else:
                out.append(k)
        return out, unknown

    def original(self, internal: int) -> str | int:
        """Internal id (1..I) -> the original id, an int where the data's ids were ints."""
        if not 1 <= internal <= len(self.item_ids):
            raise IndexError(f"internal item id {internal} is not in 1..{len(self.item_ids)}")
        s = self.item_ids[internal - 1]
        return int(s) if self.int_ids else s
