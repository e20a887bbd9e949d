"""Request validation: one history of original ids (+ optional timestamps) -> internal ids, or an InputError
saying what is wrong. Shared by the service (one request) and offline retrieval (one table row)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from t2diff.data.values import timestamp_problem

if TYPE_CHECKING:
    from t2diff.retrieval.user_tower import UserTower

MAX_HISTORY = 100_000  # longest accepted request history (only the last max_len reach the model)


class InputError(ValueError):
    """A request or input row the service cannot answer (bad ids, empty history, bad k...)."""

    def __init__(self, message: str, unknown_ids: list[Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.unknown_ids = unknown_ids or []


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
