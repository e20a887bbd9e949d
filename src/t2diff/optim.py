"""The optimiser, and row-sparse updates of the item table for large catalogues (``train.item_updates``).

With dense updates every step writes the whole item table's gradient (zero-filled, [I+1, D]) and runs Adam over
every row and both its moment tensors: at 1 M items that is most of a step, although a sampled-softmax step only
touches the batch's items and its ~1 k negatives. With ``sparse`` updates the table's lookups produce a row-sparse
gradient (``nn.Embedding(sparse=True)``; the sampled loss gathers its rows with ``F.embedding(sparse=True)``)
and the table is stepped by ``LazyAdam`` (Adam on the rows a step touched), every other parameter by Adam as before.

Semantics against dense Adam (tested): the gradient is the same tensor (so plain SGD would update identically);
lazy Adam updates a row's moments and weights only in steps whose batch touched that row, with the bias
correction of the global step count. Rows touched in every step therefore follow dense Adam exactly; a row that
is not touched keeps its weights and moments, where dense Adam would decay its moments and keep moving it along
its old momentum. Weight decay is not supported for the sparse table (L2 on rows a step does not touch would
need the dense pass this avoids): ``sparse`` rejects ``train.weight_decay > 0``.

``auto`` (the default) chooses sparse when it applies and pays: sampled loss (full softmax touches every row
anyway), a catalogue of at least ``SPARSE_AUTO_ITEMS`` items, a model whose scoring table is its input table
``item_emb`` (SASRec, GRU4Rec, Mamba4Rec, ...), and no weight decay.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

# the catalogue size from which `auto` uses sparse updates: measured in benchmarks/bench_scale.py (at 10 k items
# dense and sparse steps cost the same; from 100 k items the dense table update dominates a sampled step)
SPARSE_AUTO_ITEMS = 50_000
ITEM_UPDATES = ("auto", "sparse", "dense")


def sparse_item_table(model: nn.Module) -> nn.Embedding | None:
    """The model's item table when row-sparse updates can apply to it: a tied ``item_emb`` that is exactly
    what ``item_embeddings()`` scores against; else None."""
    emb = getattr(model, "item_emb", None)
    if not isinstance(emb, nn.Embedding) or emb.max_norm is not None:
        return None
    try:
        scored = model.item_embeddings()  # type: ignore[operator]
    except Exception:  # noqa: BLE001 - a model that cannot say is treated as unsupported
        return None
    return emb if scored is emb.weight else None


def resolve_item_updates(mode: str, model: nn.Module, loss: str, weight_decay: float) -> tuple[bool, str]:
    """(use sparse updates, why) for ``train.item_updates=mode``; raises ValueError where ``sparse`` cannot
    apply."""
    table = sparse_item_table(model)
    problems = []
    if loss != "sampled":
        problems.append("train.loss=full scores every item, so every row gets a gradient each step")
    if table is None:
        problems.append(f"{type(model).__name__} does not score against its input table item_emb")
    if weight_decay > 0:
        problems.append("train.weight_decay > 0 (lazy Adam cannot decay rows a step does not touch)")
    if mode == "dense":
        return False, "train.item_updates=dense"
    if mode == "sparse":
        if problems:
            raise ValueError("train.item_updates=sparse cannot apply: " + "; ".join(problems))
        return True, "train.item_updates=sparse"
    assert table is not None or problems
    n = table.num_embeddings - 1 if table is not None else 0
    if problems:
        return False, "auto: dense (" + "; ".join(problems) + ")"
    if n < SPARSE_AUTO_ITEMS:
        return False, f"auto: dense ({n} items < {SPARSE_AUTO_ITEMS})"
    return True, f"auto: sparse ({n} items >= {SPARSE_AUTO_ITEMS}, sampled loss)"


class LazyAdam(torch.optim.Optimizer):
    """Adam for parameters with row-sparse gradients: each step updates only the rows its gradient holds, with
    exactly ``torch.optim.Adam``'s arithmetic on them (bias corrections of the global step, eps added to
    sqrt(v / bc2)). ``torch.optim.SparseAdam`` adds eps to sqrt(v) before the bias correction instead, which
    differs from Adam wherever |grad| is within a few orders of eps (as a sampled softmax's item gradients
    are): measured 1 % apart after 3 steps on rows that every step touched."""

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # noqa: ARG002 - the torch.optim signature
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.coalesce() if p.grad.is_sparse else p.grad.to_sparse()
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                st["step"] += 1
                t = st["step"]
                rows, vals = g.indices()[0], g.values()  # [R], [R, D]
                m = st["exp_avg"][rows].mul_(b1).add_(vals, alpha=1 - b1)  # [R, D]
                v = st["exp_avg_sq"][rows].mul_(b2).addcmul_(vals, vals, value=1 - b2)
                st["exp_avg"][rows], st["exp_avg_sq"][rows] = m, v
                bc1, bc2 = 1 - b1**t, 1 - b2**t
                denom = (v.sqrt() / math.sqrt(bc2)).add_(group["eps"])
                p[rows] = p[rows].addcdiv_(m, denom, value=-group["lr"] / bc1)


class Optimizer:
    """Adam over the model's parameters, with the item table optionally on LazyAdam. Checkpointed through
    ``state_dict`` / ``load_state_dict`` like a torch optimiser."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float = 0.0, sparse: bool = False) -> None:
        self.table = sparse_item_table(model) if sparse else None
        if sparse and self.table is None:
            raise ValueError(f"{type(model).__name__} has no item table that sparse updates can apply to")
        dense = [p for p in model.parameters() if self.table is None or p is not self.table.weight]
        self.dense = torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay) if dense else None
        self.sparse = LazyAdam([self.table.weight], lr=lr) if self.table is not None else None
        if self.table is not None:
            self.table.sparse = True  # its lookups now yield row-sparse gradients
            loss_fn = getattr(model, "tower_loss_fn", None)
            if loss_fn is not None and hasattr(loss_fn, "sparse_grad"):
                loss_fn.sparse_grad = True  # the sampled loss gathers its rows sparsely too
        self.params = list(model.parameters())

    @property
    def is_sparse(self) -> bool:
        return self.sparse is not None

    def set_lr(self, lr: float) -> None:
        """Every parameter group's learning rate (``train.lr_plateau_*``)."""
        for opt in (self.dense, self.sparse):
            if opt is not None:
                for group in opt.param_groups:
                    group["lr"] = lr

    def zero_grad(self) -> None:
        for opt in (self.dense, self.sparse):
            if opt is not None:
                opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in (self.dense, self.sparse):
            if opt is not None:
                opt.step()

    def clip_grad_norm(self, max_norm: float) -> float:
        """``torch.nn.utils.clip_grad_norm_`` over every parameter, sparse gradients included (their stored
        values after coalescing: the norm of the dense gradient they stand for)."""
        if self.sparse is None:  # dense: torch's own, as every run before sparse updates existed
            return float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        grads = []
        for p in self.params:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                p.grad = p.grad.coalesce()
                grads.append(p.grad._values())
            else:
                grads.append(p.grad)
        if not grads:
            return 0.0
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef)
        return float(total)

    def state_dict(self) -> dict[str, Any]:
        if self.sparse is None:  # the layout of a plain torch.optim.Adam: older checkpoints load unchanged
            assert self.dense is not None
            return self.dense.state_dict()
        return {"dense": self.dense.state_dict() if self.dense else None, "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.sparse is None:
            if "sparse" in state:
                raise ValueError("the checkpoint's optimiser has sparse item updates; this run's are dense")
            assert self.dense is not None
            self.dense.load_state_dict(state)
            return
        if "sparse" not in state:
            raise ValueError("the checkpoint's optimiser has dense item updates; this run's are sparse")
        if self.dense is not None:
            self.dense.load_state_dict(state["dense"])
        self.sparse.load_state_dict(state["sparse"])
