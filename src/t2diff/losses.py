"""Training losses over the item catalogue."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from t2diff.precision import low_precision_dtype


def full_softmax_ce(user_vecs: Tensor, item_vecs: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy over the full catalogue. user_vecs [N, D], item_vecs [I+1, D], targets [N] in 1..I.

    The padding row 0 is excluded so it can never absorb probability mass."""
    logits = user_vecs @ item_vecs[1:].T  # [N, I]: the padding row is left out rather than masked
    return F.cross_entropy(logits, targets - 1)



def mixture_softmax_nll(user_vecs: Tensor, item_vecs: Tensor, targets: Tensor, chunk: int = 256) -> Tensor:
    """Mean over N of -log (1/K) sum_k softmax(u_k . v)[target]: the likelihood of a mixture of K softmaxes, one
    per user vector (Yang et al., ICLR'18, "Breaking the softmax bottleneck"). user_vecs [K, N, D], item_vecs
    [I+1, D], targets [N] in 1..I; the padding row is excluded as in ``full_softmax_ce``. K = 1 is that CE. Row
    chunks of ``chunk`` keep the logits at [K, chunk, I]; the softmax runs in float32."""
    k, n, _ = user_vecs.shape
    if n == 0:
        raise ValueError("empty batch")
    items = item_vecs[1:].float()  # [I, D]
    total = user_vecs.new_zeros((), dtype=torch.float32)
    for a in range(0, n, chunk):
        lp = torch.log_softmax(user_vecs[:, a: a + chunk].float() @ items.T, dim=-1)  # [K, c, I]
        t = (targets[a: a + chunk] - 1)[None, :, None].expand(k, -1, 1)  # [K, c, 1]
        picked = lp.gather(-1, t)[..., 0]  # [K, c]
        total = total - (torch.logsumexp(picked, dim=0) - math.log(k)).sum()
    return total / n

class _ChunkedSoftmaxCE(torch.autograd.Function):
    """Mean softmax cross-entropy over the real items, computed in row chunks with its gradients in the same
    pass: each chunk's logits [C, I] become its softmax (one fused op), then in place d loss / d logits
    (softmax - one-hot; the 1 / N is applied once to the [N, D] and [I, D] results) and are multiplied back at
    once, so neither the whole [N, I] logit matrix nor its gradient ever exists and no log-softmax is stored for
    the backward. Memory: O(C * I + (N + I) * D).

    ``low`` (bf16 training, ``t2diff.precision``): the three matmuls take ``low`` inputs; logits are widened to
    float32 before the softmax, and the gradients are accumulated in float32."""

    @staticmethod
    def forward(ctx: Any, user_vecs: Tensor, item_vecs: Tensor, targets: Tensor, chunk: int,
                low: torch.dtype | None) -> Tensor:
        n = user_vecs.shape[0]
        out_dtypes = (user_vecs.dtype, item_vecs.dtype)
        items = item_vecs[1:].float()  # [I, D], the padding row never competes
        uall = user_vecs.float()  # [N, D]
        if low is not None:
            items, uall = items.to(low), uall.to(low)
        need = ctx.needs_input_grad
        grad_u = torch.empty(uall.shape, dtype=torch.float32, device=uall.device) if need[0] else None  # [N, D]
        grad_items = torch.zeros(items.shape, dtype=torch.float32, device=items.device) if need[1] else None
        total = uall.new_zeros((), dtype=torch.float64)
        for s in range(0, n, chunk):
            u = uall[s: s + chunk]  # [C, D]
            t = (targets[s: s + chunk] - 1)[:, None]  # [C, 1]
            z = u @ items.T  # [C, I] logits
            if low is not None:
                z = z.float()
            zmax = z.amax(dim=1, keepdim=True)  # [C, 1]
            target_logit = z.gather(1, t)  # [C, 1]
            # torch's fused softmax (one pass, ~2.5x the separate max / exp / sum / div here); the top item's
            # probability is 1 / sum exp(z - zmax) >= 1 / I, so log-sum-exp = zmax - log(p_max) never underflows
            prob = torch.softmax(z, dim=1)  # [C, I]
            del z
            total += (zmax - prob.amax(dim=1, keepdim=True).log() - target_logit).sum(dtype=torch.float64)
            if grad_u is None and grad_items is None:
                continue
            prob.scatter_add_(1, t, torch.full_like(target_logit, -1.0))  # softmax - one-hot; the 1 / N below
            if low is not None:
                prob = prob.to(low)
            if grad_u is not None:
                if low is None:
                    torch.mm(prob, items, out=grad_u[s: s + chunk])
                else:
                    grad_u[s: s + chunk] = prob @ items
            if grad_items is not None:
                if low is None:
                    grad_items.addmm_(prob.T, u)
                else:
                    grad_items += prob.T @ u
        inv_n = 1.0 / n  # the mean's gradient, applied once to the [N, D] and [I, D] results
        if grad_u is not None:
            grad_u.mul_(inv_n)
        if grad_items is not None:
            grad_items.mul_(inv_n)
        ctx.save_for_backward(grad_u if grad_u is not None else uall.new_empty(0),
                              grad_items if grad_items is not None else items.new_empty(0))
        ctx.has = (grad_u is not None, grad_items is not None)
        ctx.out_dtypes = out_dtypes
        return (total / n).float()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        grad_u, grad_items = ctx.saved_tensors
        gu = (grad_u * g).to(ctx.out_dtypes[0]) if ctx.has[0] else None
        gi = None
        if ctx.has[1]:
            gi = torch.cat([grad_items.new_zeros(1, grad_items.shape[1]), grad_items * g])  # row 0: padding
            gi = gi.to(ctx.out_dtypes[1])
        return gu, gi, None, None, None


def chunked_softmax_ce(user_vecs: Tensor, item_vecs: Tensor, targets: Tensor, chunk: int = 256) -> Tensor:
    """``full_softmax_ce`` (same value and gradients within float tolerance) in row chunks of ``chunk``; the
    default L_TOWER. user_vecs [N, D], item_vecs [I+1, D], targets [N] in 1..I. 256 rows: the chunk's logits
    stay in cache. A whole SASRec step with it (and ``t2diff.models.dropout``) runs 1.3-2.4x as fast as with
    ``full_softmax_ce`` and torch's dropout (ML-1M, L = 50 and 200, 1 and 2 threads: ``benchmarks/results/
    train.md``, ``train_200.md``). Under bf16 autocast (``train.precision``)
    the matmuls run in bfloat16 and the softmax in float32; the loss is float32 either way."""
    if user_vecs.shape[0] == 0:
        raise ValueError("empty batch")
    device_type = user_vecs.device.type
    low = low_precision_dtype(device_type)
    with torch.autocast(device_type, enabled=False):  # the function sets its own precision
        return _ChunkedSoftmaxCE.apply(user_vecs, item_vecs, targets, chunk, low)


SAMPLERS = ("uniform", "popularity", "in_batch", "mixed")
LOSSES = ("full", "sampled")


@dataclass(frozen=True)
class Objective:
    """How a model's L_TOWER is computed: full softmax, or sampled softmax with logQ correction. Built from
    ``train.loss`` / ``train.num_negatives`` / ``train.negative_sampler`` by ``t2diff.run``; the model takes it
    at construction (``SeqRecModel.tower_loss``). ``item_counts`` [I+1]: training counts per item id, for the
    popularity-based samplers (from the split's training part only: held-out targets are never counted)."""

    loss: str = "full"
    num_negatives: int = 1024
    negative_sampler: str = "popularity"
    item_counts: np.ndarray | None = None

    def build(self, num_items: int) -> SampledSoftmaxLoss | None:
        """The callable ``(user_vecs, targets, item_vecs) -> loss``, or None for full softmax."""
        if self.loss == "full":
            return None
        if self.loss == "sampled":
            return SampledSoftmaxLoss(num_items, self.num_negatives, self.negative_sampler,
                                      item_counts=self.item_counts)
        raise ValueError(f"unknown loss {self.loss!r}; choose one of {LOSSES}")


class SampledSoftmaxLoss:
    """Sampled softmax cross-entropy with logQ correction, for catalogues too large for full softmax.

    Built by :class:`Objective` (``train.loss=sampled``); called as
    ``loss(user_vecs [N, D], targets [N] in 1..I, item_vecs [I+1, D])``.

    Negatives per batch (shared by all rows, padding id 0 never drawn):
    - ``uniform``: ``num_negatives`` ids drawn uniformly from 1..I (with replacement);
    - ``popularity``: ``num_negatives`` ids drawn with Q(j) ∝ item_counts[j];
    - ``in_batch``: the other rows' targets, i.e. draws from the training target distribution, so
      Q(j) ∝ item_counts[j] (Yi et al., RecSys 2019); ``num_negatives`` is unused;
    - ``mixed``: in-batch plus ``num_negatives`` uniform ids (mixed negative sampling, Yang et al. 2020).

    Estimator: the row's positive logit is left as is and each sampled negative logit j is corrected by
    ``- log E[count_j]`` where ``E[count_j] = sum over samplers of (draws * Q(j))`` (for one sampler that is
    ``log Q(j)`` plus the constant ``log draws``). Then ``exp(o_t) + sum_neg exp(o_j - log E[count_j])`` is an
    unbiased estimate of the full partition function once accidental hits (negative == target) are
    removed, so the loss and its gradient approach full softmax as the sample grows (consistent; biased at
    small samples as any ratio estimator). Yi et al. also subtract log Q from the positive logit, which
    moves the positive's softmax weight away from its full-softmax value; here it stays uncorrected.
    Duplicate draws are merged into one column with ``+ log(count)``, which leaves the value unchanged and
    bounds the logit matrix at [N, 1 + unique candidates].

    ``item_counts`` [I+1] (id-indexed, entry 0 ignored; e.g. ``bincount(train_targets, minlength=I+1)``) is
    required by every sampler but ``uniform``. Counts are floored at 1 so every item has Q > 0 (an item never
    sampled would otherwise drop out of the partition estimate). ``logq_correction=False`` gives plain
    sampled softmax (biased; kept for ablations).
    """

    def __init__(
        self,
        num_items: int,
        num_negatives: int,
        sampler: str = "uniform",
        item_counts: Tensor | np.ndarray | Sequence[float] | None = None,
        remove_accidental_hits: bool = True,
        logq_correction: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        if sampler in ("uniform", "popularity", "mixed") and num_negatives < 1:
            raise ValueError(f"sampler {sampler!r} needs num_negatives >= 1, got {num_negatives}")
        self.num_items = int(num_items)
        self.num_negatives = int(num_negatives)
        self.sampler = sampler
        self.remove_accidental_hits = remove_accidental_hits
        self.logq_correction = logq_correction
        self.generator = generator  # CPU generator for reproducible draws; None: the global torch RNG
        # gather the item rows as a row-sparse gradient (set by t2diff.optim for sparse item-table updates)
        self.sparse_grad = False

        # Proposal distributions over ids 0..I (float64 so tiny Q of a 1M-item tail stays exact).
        q_uni = torch.full((num_items + 1,), 1.0 / num_items, dtype=torch.float64)
        q_uni[0] = 0.0
        self._q_uniform = q_uni
        self._q_freq: Tensor | None = None
        self._cdf_freq: Tensor | None = None
        if sampler != "uniform":
            if item_counts is None:
                raise ValueError(f"sampler {sampler!r} needs item_counts (training count of each item id)")
            if isinstance(item_counts, Tensor):
                item_counts = item_counts.detach().cpu().numpy()
            c = torch.as_tensor(np.asarray(item_counts, dtype=np.float64))
            if c.shape != (num_items + 1,):
                raise ValueError(f"item_counts must have shape [num_items + 1] = [{num_items + 1}], got "
                                 f"{tuple(c.shape)} (index by item id; entry 0 = padding, ignored)")
            if not torch.isfinite(c).all() or (c < 0).any():
                raise ValueError("item_counts must be finite and >= 0")
            c = c.clamp(min=1.0)
            c[0] = 0.0
            self._q_freq = c / c.sum()
            self._cdf_freq = torch.cumsum(self._q_freq, 0)
        self._dev_cache: dict[torch.device, tuple[Tensor, Tensor | None]] = {}

    def _draw(self, n: int, popularity: bool) -> Tensor:  # [n] ids in 1..I, on CPU
        if not popularity:
            return torch.randint(1, self.num_items + 1, (n,), generator=self.generator)
        assert self._cdf_freq is not None
        # inverse-CDF sampling: O(n log I) per call instead of torch.multinomial's O(I) setup
        u = torch.rand(n, dtype=torch.float64, generator=self.generator) * self._cdf_freq[-1]
        return torch.searchsorted(self._cdf_freq, u, right=True).clamp_(1, self.num_items)

    def _probs(self, device: torch.device) -> tuple[Tensor, Tensor | None]:
        if device not in self._dev_cache:
            self._dev_cache[device] = (
                self._q_uniform.to(device),
                self._q_freq.to(device) if self._q_freq is not None else None,
            )
        return self._dev_cache[device]

    def __call__(self, user_vecs: Tensor, targets: Tensor, item_vecs: Tensor) -> Tensor:
        n = user_vecs.shape[0]
        if item_vecs.shape[0] != self.num_items + 1:
            raise ValueError(f"item_vecs has {item_vecs.shape[0]} rows, expected num_items + 1 = "
                             f"{self.num_items + 1}")
        if targets.shape != (n,):
            raise ValueError(f"targets must have shape [{n}], got {tuple(targets.shape)}")
        if n == 0:
            raise ValueError("empty batch")
        if bool(((targets < 1) | (targets > self.num_items)).any()):
            raise ValueError("targets must be item ids in 1..num_items (0 is padding)")
        dev = user_vecs.device
        q_uni, q_freq = self._probs(dev)

        n_batch = n - 1 if self.sampler in ("in_batch", "mixed") else 0  # draws from Q_freq per row
        n_samp = self.num_negatives if self.sampler != "in_batch" else 0  # shared draws per row
        parts = [targets] if n_batch else []
        if n_samp:
            parts.append(self._draw(n_samp, popularity=self.sampler == "popularity").to(dev))
        if not parts:
            raise ValueError("in_batch sampling needs a batch of at least 2 rows")
        cand, cand_count = torch.unique(torch.cat(parts), return_counts=True)  # [U], [U]

        pos_vecs = F.embedding(targets, item_vecs, sparse=self.sparse_grad)  # [N, D] = item_vecs[targets]
        neg_vecs = F.embedding(cand, item_vecs, sparse=self.sparse_grad)  # [U, D]
        pos_logit = (user_vecs * pos_vecs).sum(-1, keepdim=True).float()  # [N, 1]
        neg_logit = (user_vecs @ neg_vecs.T).float()  # [N, U]
        hit = cand[None, :] == targets[:, None]  # [N, U] negative == the row's target
        count = cand_count[None, :].to(neg_logit.dtype).expand(n, -1)  # [N, U]
        if n_batch:
            count = count - hit.to(count.dtype)  # a row's own in-batch slot is its positive, not a negative
        adj = count.log()  # merged duplicates; log 0 = -inf drops a column (only ever a hit)
        if self.logq_correction:
            expected = torch.zeros_like(cand, dtype=torch.float64)  # [U] E[draws of j per row]
            if n_batch:
                assert q_freq is not None
                expected += n_batch * q_freq[cand]
            if n_samp:
                expected += n_samp * (q_freq[cand] if self.sampler == "popularity" else q_uni[cand])
            adj = adj - expected.log().to(adj.dtype)[None, :]
        neg_logit = neg_logit + adj
        if self.remove_accidental_hits:
            neg_logit = neg_logit.masked_fill(hit, float("-inf"))
        logits = torch.cat([pos_logit, neg_logit], dim=1)  # [N, 1 + U], the positive in column 0
        return F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=dev))
