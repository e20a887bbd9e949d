"""The memory model of one training worker (docs/scaling.md): what the item table, its gradient, its optimiser
state, the activations and the logits cost, and so at what catalogue size a replicated item table (DDP) stops
fitting one worker. float32 throughout; bytes.

Checked against the tensors a real SASRec and its optimiser allocate (tests/test_memory.py); the peak RSS of
real runs is in benchmarks/results/scale.md.
"""

from __future__ import annotations

from dataclasses import dataclass

F32 = 4


@dataclass(frozen=True)
class WorkerMemory:
    """Bytes per worker for a tied-table model (SASRec-like) with ``num_items`` items of dimension ``dim``."""

    table: int  # the item embedding table [I+1, D]
    table_grad: int  # its gradient in one step: dense [I+1, D], or the touched rows only (sparse)
    optimizer: int  # Adam / LazyAdam moments of the table (2 x table, allocated densely in both)
    ddp_buckets: int  # DDP's flat gradient buckets (a second copy of dense gradients; sparse ones bypass them)
    dense_model: int  # every other parameter with its gradient and Adam moments
    activations: int  # the encoder's saved activations for one step (rough: ``act_tensors`` [B, L, D] tensors)
    logits: int  # the loss's logit block and its gradient
    eval_scores: int  # evaluation's score block per user chunk

    @property
    def training_total(self) -> int:
        return (self.table + self.table_grad + self.optimizer + self.ddp_buckets + self.dense_model
                + self.activations + self.logits)


def worker_memory(num_items: int, dim: int = 64, *, sparse: bool, ddp: bool = False, batch: int = 128,
                  max_len: int = 50, negatives: int = 1024, sampled: bool = True, dense_params: int = 120_000,
                  act_tensors: int = 40, ce_chunk: int = 256, eval_batch: int = 512,
                  eval_block: int | None = 2048) -> WorkerMemory:
    """The model of ``WorkerMemory``. ``dense_params``: parameters outside the item table (SASRec d 64, 2 blocks,
    L 50: ~120 k). Full softmax computes its logits in ``ce_chunk``-row chunks (t2diff.losses)."""
    rows = num_items + 1
    table = rows * dim * F32
    targets = batch * max_len  # loss positions per step (every position of every window)
    touched = min(rows, targets + negatives + batch * max_len)  # targets + negatives + input ids (upper bound)
    grad = touched * dim * F32 + touched * 8 if sparse else table  # values + int64 row indices
    logits = 2 * targets * (1 + negatives) * F32 if sampled else 2 * min(targets, ce_chunk) * num_items * F32
    scores = eval_batch * (num_items if eval_block is None else min(eval_block, num_items)) * F32
    return WorkerMemory(table=table, table_grad=grad, optimizer=2 * table,
                        ddp_buckets=(0 if sparse else table) + dense_params * F32 if ddp else 0,
                        dense_model=4 * dense_params * F32, activations=act_tensors * targets * dim * F32,
                        logits=logits, eval_scores=scores)


def max_items_per_worker(worker_bytes: float, dim: int = 64, *, sparse: bool, ddp: bool = True,
                         reserve: float = 0.5) -> int:
    """The largest catalogue whose replicated table (+ gradient, optimiser state, DDP buckets) fits in
    ``reserve`` of a worker's memory (the rest for activations, data, the framework)."""
    per_item = dim * F32 * (3 + (0 if sparse else 1) + (0 if sparse or not ddp else 1))  # table+2 moments(+grad+bucket)
    return int(worker_bytes * reserve / per_item)
