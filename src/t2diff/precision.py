"""Training precision (``train.precision``): fp32, or bf16 mixed precision.

``bf16`` runs the training forward under ``torch.autocast(dtype=torch.bfloat16)``: matmuls, attention and
linear layers take bfloat16 inputs (with float32 accumulation inside the kernels) while the parameters, their
gradients and Adam's state stay float32, as mixed-precision training does on GPUs. The full-softmax L_TOWER
(``losses.chunked_softmax_ce``) then does its three matmuls in bfloat16 and its softmax, log-sum-exp and gradient
arithmetic in float32. Evaluation, export and serving always run in float32. On CPUs with AVX512-BF16 (AMD Zen 4,
Intel Sapphire Rapids) a bfloat16 matmul runs about 3x a float32 one; elsewhere bfloat16 is emulated and slower,
so measure before choosing it there (``benchmarks/bench_train.py --precision``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("fp32", "bf16")


def low_precision_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast is running matmuls in on ``device_type`` now, or None when autocast is off."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


@contextlib.contextmanager
def autocast(precision: str, device: str | torch.device) -> Iterator[None]:
    """The training forward's context for ``train.precision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    device_type = torch.device(device).type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield
