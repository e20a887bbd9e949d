"""Ranking one chunk of users against the catalogue, with the item side in blocks.

``rank_full`` forms the whole score matrix [B, I+1] of a user chunk (the reference). ``rank_blocked`` forms it
[B, C] columns at a time and keeps only counts, so memory is O(B * C) whatever the catalogue size and every
pass over a block runs in cache: at 1 M items the full matrix of a 512-user chunk alone is 2 GB.

Both apply the same rule (``t2diff.metrics``): rank = 1 + #items scored higher + #other items tied with the
target + #items scored NaN; a NaN or infinite target score gets the worst rank; masked (seen) items score
-inf. ``rank_blocked`` returns exactly what ``rank_full`` returns (tested): each score is one entry of a
matrix product of the same user rows, and the target's score is compared with the block entry that holds it
(a BLAS whose entries depend on the matrix shape is detected there, and those rows are re-ranked with
``rank_full``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from t2diff.metrics import ranks_from_scores

# columns per item block: a 512 x 2048 float32 block (4 MB) stays in cache; measured best of 1-16 k in
# benchmarks/bench_scale.py (eval s at 10 k - 1 M items)
DEFAULT_ITEM_BLOCK = 2048


@dataclass
class ChunkRanks:
    """Results of one user chunk ([B] each)."""

    ranks: Tensor  # int64, 1 = best
    tied: Tensor  # bool
    nonfinite: Tensor  # bool: the model's own score of the target (before masking) is NaN / infinite
    bad_rows: int  # rows with any non-finite item score (before masking)


def rank_full(u: Tensor, items: Tensor, targets: Tensor, seen: tuple[Tensor, Tensor] | None) -> ChunkRanks:
    """u [B, D], items [I+1, D], targets [B] in 1..I, seen: (rows, cols) of masked entries (cols in 1..I)."""
    scores = u @ items.T  # [B, I+1]
    fin = torch.isfinite(scores[:, 1:])  # [B, I], the model's own scores (before masking)
    nonfinite = ~fin.gather(1, targets[:, None] - 1)[:, 0]
    bad_rows = int((~fin.all(dim=1)).sum())
    if seen is not None:
        scores[seen[0], seen[1]] = -torch.inf
    r, t = ranks_from_scores(scores, targets)
    return ChunkRanks(r, t, nonfinite, bad_rows)


# |score| <= ||u|| * ||item|| (Cauchy-Schwarz); below this bound no dot product can overflow float32 (3.4e38),
# whatever the summation order's rounding
_SAFE_PRODUCT = 1e36


def item_norm_max(items: Tensor) -> float:
    """The largest norm of a real item's vector (row 0 is padding), inf when any is not finite: computed once
    per evaluation and passed to ``rank_blocked`` so it can skip its per-block non-finite checks."""
    real = items[1:]
    if real.numel() == 0:
        return 0.0
    norms = real.norm(dim=1)
    return float(norms.max()) if bool(torch.isfinite(real).all()) else float("inf")


def rank_blocked(u: Tensor, items: Tensor, targets: Tensor, seen: tuple[Tensor, Tensor] | None,
                 block: int = DEFAULT_ITEM_BLOCK, items_norm: float | None = None) -> ChunkRanks:
    """``rank_full``'s result, scoring ``block`` item columns at a time. ``items_norm``: ``item_norm_max(items)``
    when the caller has it; when it and the user rows prove every score finite, no block is checked for NaN /
    inf (one pass over each block fewer)."""
    b = u.shape[0]
    num_items = items.shape[0] - 1
    rows = torch.arange(b, device=u.device)
    # the target's score, from a [B, B] product: checked below against the block entry that holds it
    t_raw = (u @ items[targets].T).diagonal().clone()  # [B]
    nonfinite = ~torch.isfinite(t_raw)
    t_eff = t_raw.clone()  # the target's score after masking
    if seen is not None:
        s_rows, s_cols = seen
        t_eff[s_rows[s_cols == targets[s_rows]]] = -torch.inf  # a seen target is masked too
        order = torch.argsort(s_cols)
        s_rows, s_cols = s_rows[order], s_cols[order]
    ref = t_eff[:, None]  # [B, 1]
    # the rows whose target lies in each block, found once for the chunk (not with [B]-sized ops per block)
    tblock = torch.div(targets - 1, block, rounding_mode="floor")  # [B]
    by_block = torch.argsort(tblock, stable=True)
    bounds = [0, *torch.cumsum(torch.bincount(tblock, minlength=(num_items + block - 1) // block), 0).tolist()]
    t_blk = t_raw.clone()  # [B] the block entry holding each target, compared with t_raw after the loop
    # per-row sums of sign(s - t) and |sign(s - t)| over the blocks (exact: integers, float64), converted once
    f_sign = torch.zeros(b, dtype=torch.float64, device=u.device)
    f_abs = torch.zeros_like(f_sign)
    cols = torch.full((b,), num_items, dtype=torch.long, device=u.device)  # columns the sums count per row
    gt = torch.zeros(b, dtype=torch.long, device=u.device)  # items scored > the target (exact-path blocks)
    eq = torch.zeros_like(gt)  # items scored == the target (itself included; exact-path blocks)
    nan = torch.zeros_like(gt)  # items scored NaN (after masking; exact-path blocks)
    bad = torch.zeros(b, dtype=torch.bool, device=u.device)
    buf = u.new_empty(b, block)
    # every score is finite when the user rows are and no product can overflow: then no block needs a check
    all_finite = (items_norm is not None and bool(torch.isfinite(u).all())
                  and (float(u.norm(dim=1).max()) if b else 0.0) * items_norm < _SAFE_PRODUCT)
    for n_blk, a in enumerate(range(1, num_items + 1, block)):
        e = min(a + block, num_items + 1)  # the block holds item ids a .. e-1
        # into one reused buffer: the block stays in cache across the passes below (measured ~1.5x on the mm)
        s = torch.mm(u, items[a:e].T, out=buf) if e - a == block else u @ items[a:e].T  # [B, C]
        # rows holding a NaN / inf score (or whose sum overflows) take the exact comparisons below
        odd = None if all_finite else ~torch.isfinite(s.sum(dim=1))  # [B]
        any_odd = odd is not None and bool(odd.any())
        if any_odd:
            bad[odd] |= ~torch.isfinite(s[odd]).all(dim=1)
        lo_t, hi_t = bounds[n_blk], bounds[n_blk + 1]
        if hi_t > lo_t:
            here = by_block[lo_t:hi_t]
            t_blk[here] = s[here, targets[here] - a]
        if seen is not None:
            lo, hi = torch.searchsorted(s_cols, torch.tensor([a, e], device=u.device)).tolist()
            if hi > lo:
                s[s_rows[lo:hi], s_cols[lo:hi] - a] = -torch.inf
        if any_odd:
            so, ro = s[odd], ref[odd]  # [b', C], [b', 1]
            gt[odd] += (so > ro).sum(1)
            eq[odd] += (so == ro).sum(1)
            nan[odd] += torch.isnan(so).sum(1)
            cols[odd] -= e - a
        # the common case without a bool tensor per comparison: for finite s and t, fl(s - t) has the sign of
        # s - t and is 0 only when s == t, so sum(sign) = #greater - #less and sum(|sign|) = #greater + #less
        # (sums of +-1 over a block are exact in float32)
        sg = s.sub_(ref).sign_()  # [B, C], in place
        diff = sg.sum(dim=1)  # [B] #gt - #lt
        both = sg.abs_().sum(dim=1)  # [B] #gt + #lt
        if any_odd:
            diff[odd], both[odd] = 0.0, 0.0
        f_sign += diff
        f_abs += both
    # rows with a non-finite target score carry NaN sums here; they get the worst rank below whatever they hold
    f_sign, f_abs = f_sign.nan_to_num(), f_abs.nan_to_num()
    gt += ((f_sign + f_abs) / 2).round().long()
    eq += cols - f_abs.round().long()
    same = (t_blk == t_raw) | (torch.isnan(t_blk) & torch.isnan(t_raw))
    mismatch = ~same
    finite = torch.isfinite(t_eff)
    others_tied = eq - 1 + nan
    ranks = torch.where(finite, 1 + gt + others_tied, torch.full_like(gt, num_items))
    tied = finite & (others_tied > 0)
    out = ChunkRanks(ranks, tied, nonfinite, int(bad.sum()))
    if bool(mismatch.any()):  # this BLAS rounds the [B, B] product differently: re-rank those rows exactly
        idx = rows[mismatch]
        sub_seen = None
        if seen is not None:
            keep = mismatch[seen[0]]
            remap = torch.cumsum(mismatch.long(), 0) - 1  # old row -> row in the sub-chunk
            sub_seen = (remap[seen[0][keep]], seen[1][keep])
        # every row of a [b', I+1] product shares the full path's rounding by assumption; the sub-chunk's
        # rows are ranked exactly by the full rule
        sub = rank_full(u[idx], items, targets[idx], sub_seen)
        out.ranks[idx], out.tied[idx] = sub.ranks, sub.tied
    return out
