"""Counting the FLOPs of a computation, to know its floor.

``torch.utils.flop_counter.FlopCounterMode`` counts matmuls and attention but not their in-place forms: an
``a.addmm_(b, c)`` (the chunked cross-entropy accumulates its item gradient that way, ``t2diff.losses``) counts
as 0 FLOPs, so a floor taken from the plain counter is too low and a step looks further from it than it is.
``FlopCounter`` adds the in-place matmuls with the same formulas as their out-of-place forms.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils import flop_counter

_aten = torch.ops.aten
# in-place op -> its out-of-place twin, whose formula (FLOPs from the input shapes) applies unchanged
_IN_PLACE = {_aten.addmm_: _aten.addmm, _aten.baddbmm_: _aten.baddbmm}


def _mapping() -> dict[Any, Any]:
    out = {}
    for op, twin in _IN_PLACE.items():
        formula = flop_counter.flop_registry[twin]  # already shape-wrapped there: passed on raw, not wrapped again

        def raw(*args: Any, _f: Any = formula, **kwargs: Any) -> int:
            return _f(*args, **kwargs)

        raw._get_raw = True  # type: ignore[attr-defined]
        out[op] = raw
    return out


class FlopCounter(flop_counter.FlopCounterMode):
    """``FlopCounterMode`` (no table printed) that also counts ``addmm_`` and ``baddbmm_``."""

    def __init__(self) -> None:
        super().__init__(display=False, custom_mapping=_mapping())


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` (forward, plus backward when ``fn`` calls it): matmuls and attention, in-place forms
    included."""
    with FlopCounter() as fc:
        fn()
    return int(fc.get_total_flops())
