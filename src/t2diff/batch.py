"""The one batch format every model, trainer, evaluator and server uses."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class Batch:
    """A batch of (history -> next item) examples.

    Histories are LEFT-padded with item id 0, the most recent behaviour in the last column.
    """

    seq: Tensor  # [B, L] long, item ids, 0 = padding
    target: Tensor  # [B] long, the next item (0 where unknown, e.g. at serving time)
    pos_targets: Tensor  # [B, L] long, next item after each position of seq (0 = no target)
    seq_time: Tensor  # [B, L] long, unix seconds of each behaviour (0 = padding / unknown)
    target_time: Tensor  # [B] long, unix seconds of the request / target (0 = unknown)
    user: Tensor  # [B] long, internal user id (0 = unknown / cold)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __len__(self) -> int:
        return int(self.seq.shape[0])

    @staticmethod
    def from_histories(
        histories: list[list[int]],
        max_len: int,
        times: list[list[int]] | None = None,
        target_time: list[int] | None = None,
    ) -> Batch:
        """Build an inference batch from internal-id histories (oldest first); keeps the last max_len."""
        b = len(histories)
        seq = torch.zeros(b, max_len, dtype=torch.long)
        st = torch.zeros(b, max_len, dtype=torch.long)
        for i, h in enumerate(histories):
            h = h[-max_len:]
            if h:
                seq[i, max_len - len(h):] = torch.as_tensor(h, dtype=torch.long)
                if times is not None:
                    st[i, max_len - len(h):] = torch.as_tensor(times[i][-max_len:], dtype=torch.long)
        pos = torch.zeros_like(seq)
        pos[:, :-1] = seq[:, 1:]
        pos[:, :-1] *= (seq[:, :-1] > 0).long()
        tt = (torch.as_tensor(target_time, dtype=torch.long) if target_time is not None
              else torch.zeros(b, dtype=torch.long))
        return Batch(seq=seq, target=torch.zeros(b, dtype=torch.long), pos_targets=pos, seq_time=st,
                     target_time=tt, user=torch.zeros(b, dtype=torch.long))
