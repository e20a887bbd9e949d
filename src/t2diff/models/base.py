"""The uniform model interface (DESIGN §5): training, evaluation, export and serving never special-case
a model. Scores are always dot products ``user_embeddings(batch) @ item_embeddings().T``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from t2diff.batch import Batch
from t2diff.losses import Objective, chunked_softmax_ce


@dataclass(frozen=True)
class DataInfo:
    """What a model may know about the prepared dataset when it is built."""

    num_items: int  # real items; ids 1..num_items, 0 = padding
    num_users: int
    max_len: int  # history length L the batches carry
    has_time: bool = False  # whether seq_time / target_time carry real timestamps
    item_features: Tensor | None = None  # [num_items + 1, F] long feature tokens, 0 = none
    num_feature_tokens: int = 0  # vocabulary size of item_features (token 0 = padding)


class SeqRecModel(nn.Module):
    """Base class. Subclasses set ``Config`` (a dataclass) and implement the three methods below.

    ``causal = True`` declares that the model trains with a loss at every position of ``seq``
    (``batch.pos_targets``) and never looks at later positions; the trainer then feeds whole windows.
    """

    Config: ClassVar[type]
    causal: ClassVar[bool] = False
    PAPER_ROW: ClassVar[str | None] = None  # this model's method name in the paper's Table 2, if it has one
    # True when leading columns that are padding in every row of a batch can be dropped without changing any
    # output (positions are right-aligned and padding is masked): evaluation then batches by history length
    padding_free: ClassVar[bool] = False

    def __init_subclass__(cls, config: type | None = None, paper_row: str | None = None, **kw: Any) -> None:
        """``class MyModel(SeqRecModel, config=MyConfig, paper_row="MyModel")`` declares both in one line."""
        super().__init_subclass__(**kw)
        if config is not None:
            cls.Config = config
        if paper_row is not None:
            cls.PAPER_ROW = paper_row

    @classmethod
    def paper_row(cls, cfg: Any) -> str | None:
        """The paper's Table 2 row (or ablation row) that the model config ``cfg`` (an instance of ``Config``)
        reproduces; None for a configuration the paper does not have."""
        return cls.PAPER_ROW

    def __init__(self, cfg: Any, info: DataInfo, objective: Objective | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.info = info
        # L_TOWER from the run's objective (train.loss): None = full softmax; a model rebuilt for inference
        # needs none
        self.tower_loss_fn = (objective or Objective()).build(info.num_items)

    def user_embeddings(self, batch: Batch) -> Tensor:  # [B, D]
        raise NotImplementedError

    def item_embeddings(self) -> Tensor:  # [num_items + 1, D]; row 0 (padding) is never ranked
        raise NotImplementedError

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Training loss on a batch, and named scalars to log."""
        raise NotImplementedError

    def tower_loss(self, user_vecs: Tensor, targets: Tensor) -> Tensor:
        """L_TOWER: softmax cross-entropy of ``user_vecs`` [N, D] against ``targets`` [N] (> 0)."""
        if self.tower_loss_fn is not None:
            return self.tower_loss_fn(user_vecs, targets, self.item_embeddings())
        return chunked_softmax_ce(user_vecs, self.item_embeddings(), targets)

    @torch.no_grad()
    def score(self, batch: Batch) -> Tensor:  # [B, num_items + 1]
        return self.user_embeddings(batch) @ self.item_embeddings().T


class CausalEncoder(SeqRecModel):
    """A model that encodes each position from the behaviours up to it (``encode(seq) -> [B, L, D]``) and
    scores against its input item table ``self.item_emb`` (tied): the user vector is the state after the most
    recent behaviour, and training puts a softmax loss at every position of the window (DESIGN §6)."""

    causal = True
    item_emb: nn.Embedding

    def encode(self, seq: Tensor) -> Tensor:  # seq [B, L] -> [B, L, D]
        raise NotImplementedError

    def user_embeddings(self, batch: Batch) -> Tensor:
        return self.encode(batch.seq)[:, -1]  # [B, D]: the state after the most recent behaviour

    def item_embeddings(self) -> Tensor:
        return self.item_emb.weight  # [I+1, D], tied with the input embedding

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        h = self.encode(batch.seq)  # [B, L, D]
        keep = batch.pos_targets > 0  # [B, L]
        loss = self.tower_loss(h[keep], batch.pos_targets[keep])
        return loss, {"tower": loss.item()}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
