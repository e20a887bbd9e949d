"""Evaluation protocols (DESIGN §3), selected by name.

An example is a pair (user u, position j) of internal user id and 0-based index into u's history:
the target is history[j], the input the (at most L) behaviours before it. Splits never let a model see a
held-out target: every training window ends before the first held-out position of its user.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from t2diff.data.errors import DataError
from t2diff.data.prepared import HISTORY_ORDERS, PreparedDataset

PROTOCOLS = ("loo", "paper")


@dataclass
class LooOptions:
    """``data.loo``: chronological leave-one-out."""

    train_targets: int = 10  # non-causal models: random target positions per user per epoch
    # causal models: "all" = windows covering the whole trainable history once per epoch; "last" = only each
    # user's most recent window of max_len targets (as the SASRec+ reference, antklen/sasrec-bert4rec-recsys23,
    # trains: the older behaviours of long histories are never seen in training)
    causal_windows: str = "all"
    # non-causal models: "sampled" = train_targets random positions per user per epoch; "every" = every target
    # position of the trainable history once per epoch (each prefix one example, as DiffuRec's split_onebyone and
    # RecBole's prefix augmentation train: ~0.98 M examples per epoch on ML-1M, so ~100x the cost of "sampled")
    noncausal_targets: str = "sampled"

    def validate_config(self, where: str) -> None:
        if self.train_targets < 1:
            raise ValueError(f"{where}.train_targets: must be >= 1, got {self.train_targets}")
        if self.causal_windows not in ("all", "last"):
            raise ValueError(f"{where}.causal_windows: must be 'all' or 'last', got {self.causal_windows!r}")
        if self.noncausal_targets not in ("sampled", "every"):
            raise ValueError(f"{where}.noncausal_targets: must be 'sampled' or 'every', "
                             f"got {self.noncausal_targets!r}")


@dataclass
class PaperOptions:
    """``data.paper``: the authors' protocol (random 80/20 users, fixed target positions)."""

    split_seed: int = 42  # the train/test user split and the target positions
    test_frac: float = 0.2  # share of test users
    train_targets: int = 10  # target positions per train user
    # the order of each history: chronological, or "file": the order of the source rows (the authors read
    # ratings.dat in file order, which within an ML-1M user is not chronological); needs a cache with file_rows.npy
    history_order: str = field(default="chronological", metadata={"choices": HISTORY_ORDERS})

    def validate_config(self, where: str) -> None:
        if not 0 < self.test_frac < 1:
            raise ValueError(f"{where}.test_frac: must be in (0, 1), got {self.test_frac}")
        if self.train_targets < 1:
            raise ValueError(f"{where}.train_targets: must be >= 1, got {self.train_targets}")


PROTOCOL_OPTIONS: dict[str, type] = {"loo": LooOptions, "paper": PaperOptions}


@dataclass
class Examples:
    users: np.ndarray  # int64 [E] internal user ids (1-based)
    positions: np.ndarray  # int64 [E] index of the target in the user's history

    def __len__(self) -> int:
        return int(self.users.shape[0])


@dataclass
class Split:
    protocol: str
    valid: Examples | None
    test: Examples
    # training: users with the number of their leading behaviours a model may train on
    train_users: np.ndarray  # int64 [Ut]
    train_limit: np.ndarray  # int64 [Ut]: positions 0..limit-1 are trainable (targets at 1..limit-1)
    fixed_train: Examples | None = None  # protocol-fixed target positions (paper); None = sampled per epoch
    skipped_users: int = 0  # users too short for the protocol (counted, never silently mixed in)
    eval_users_of: int | None = None  # set when valid/test are a sample (eval.max_users): how many users in all

    def train_examples(self, rng: np.random.Generator, causal: bool, max_len: int, targets_per_user: int,
                       last_window_only: bool = False, every_target: bool = False) -> Examples:
        """The examples of one epoch.

        causal models: windows ending at the last trainable position, then every max_len before it, so a
        loss at every position covers the user's whole trainable history once (``last_window_only``: only the
        first of them, each user's most recent max_len targets).
        other models: ``targets_per_user`` random target positions per user (at least one behaviour before);
        ``every_target``: every position 1..limit-1 of every user once (the prefix set).
        A protocol with fixed positions (paper) returns them as they are for both kinds."""
        if self.fixed_train is not None:
            return self.fixed_train
        if causal:
            us, js = [], []
            for u, lim in zip(self.train_users, self.train_limit, strict=True):
                ends = np.arange(lim - 1, 0, -max_len)[: 1 if last_window_only else None]
                us.append(np.full(len(ends), u))
                js.append(ends)
            return Examples(np.concatenate(us).astype(np.int64), np.concatenate(js).astype(np.int64))
        if every_target:
            n = np.maximum(self.train_limit - 1, 0)  # targets 1..limit-1
            users = np.repeat(self.train_users, n)
            starts = np.repeat(np.cumsum(n) - n, n)  # first example index of each user
            return Examples(users.astype(np.int64), (1 + np.arange(len(users)) - starts).astype(np.int64))
        k = np.minimum(targets_per_user, self.train_limit - 1)
        users = np.repeat(self.train_users, k)
        # uniform without replacement would need a loop; with replacement is fine for k << limit
        pos = 1 + (rng.random(len(users)) * np.repeat(self.train_limit - 1, k)).astype(np.int64)
        return Examples(users.astype(np.int64), pos)


    def train_item_counts(self, ds: PreparedDataset) -> np.ndarray:
        """[I+1] int64: how often each item id occurs in the part of the histories a model may train on
        (the popularity of the samplers; held-out targets never count)."""
        parts = [ds.history(int(u))[:lim] for u, lim in zip(self.train_users, self.train_limit, strict=True)]
        flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return np.bincount(flat, minlength=ds.num_items + 1).astype(np.int64)


def leave_one_out(ds: PreparedDataset) -> Split:
    """Chronological leave-one-out: last item test, second-last validation, the rest train."""
    lengths = ds.lengths
    users = np.arange(1, ds.num_users + 1)
    ok = lengths >= 3
    if not ok.any():
        raise DataError("leave-one-out needs users with at least 3 interactions; none has")
    u, n = users[ok], lengths[ok]
    return Split("loo", valid=Examples(u, n - 2), test=Examples(u, n - 1), train_users=u, train_limit=n - 2,
                 skipped_users=int((~ok).sum()))


def paper_split(ds: PreparedDataset, seed: int = 42, test_frac: float = 0.2, history_cap: int = 50,
                train_targets: int = 10) -> Split:
    """The authors' protocol: users split at random into train/test users (seeded); a target position j
    needs min(history_cap, n-1) behaviours before it, so long histories always have a full window; up to
    ``train_targets`` random target positions per train user, one per test user.

    The authors' script samples j from [cap-1, n-2] (never the last item of long users, an off-by-one);
    we sample from [min(cap, n-1), n-1]. No validation set: the protocol has none."""
    rng = np.random.default_rng(seed)
    lengths = ds.lengths
    users = np.arange(1, ds.num_users + 1)
    ok = lengths >= 2
    users = users[ok]
    perm = rng.permutation(users)
    n_test = int(len(perm) * test_frac)
    test_users, train_users = np.sort(perm[:n_test]), np.sort(perm[n_test:])

    def positions(us: np.ndarray, k: int) -> Examples:
        out_u, out_j = [], []
        for u in us:
            n = lengths[u - 1]
            lo = min(history_cap, n - 1)
            cand = np.arange(lo, n)
            pick = cand if len(cand) <= k else np.sort(rng.choice(cand, size=k, replace=False))
            out_u.append(np.full(len(pick), u))
            out_j.append(pick)
        return Examples(np.concatenate(out_u).astype(np.int64), np.concatenate(out_j).astype(np.int64))

    train = positions(train_users, train_targets)
    test = positions(test_users, 1)
    return Split("paper", valid=None, test=test, train_users=train_users, train_limit=lengths[train_users - 1],
                 fixed_train=train, skipped_users=int((~ok).sum()))


def make_split(ds: PreparedDataset, protocol: str, options: object | None = None, max_len: int = 50) -> Split:
    """The split of ``protocol`` with its options (a ``PROTOCOL_OPTIONS`` instance; None = defaults). It also sets
    the order of ``ds``'s histories in place (``data.paper.history_order``; chronological otherwise), so batches
    made from ``ds`` after it follow the split's order."""
    if protocol not in PROTOCOL_OPTIONS:
        raise DataError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    opt = options if options is not None else PROTOCOL_OPTIONS[protocol]()
    ds.set_history_order(opt.history_order if isinstance(opt, PaperOptions) else "chronological")
    if protocol == "loo":
        return leave_one_out(ds)
    assert isinstance(opt, PaperOptions)
    return paper_split(ds, seed=opt.split_seed, test_frac=opt.test_frac, history_cap=max_len,
                       train_targets=opt.train_targets)


def sample_eval_users(split: Split, max_users: int, seed: int = 0) -> Split:
    """``split`` with validation and test restricted to a seeded sample of ``max_users`` of the test users (the
    same users in both), in split order; training is unchanged. A reduced pass's shortcut (``eval.max_users``):
    metrics on the sample estimate the full set's with a larger standard error, and every report labels them."""
    if max_users < 1:
        raise DataError(f"eval.max_users: must be >= 1 (or null), got {max_users}")
    users = np.unique(split.test.users)
    if max_users >= len(users):
        return split
    keep = np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))

    def cut(ex: Examples | None) -> Examples | None:
        if ex is None:
            return None
        m = np.isin(ex.users, keep)
        return Examples(ex.users[m], ex.positions[m])

    test = cut(split.test)
    assert test is not None
    return replace(split, valid=cut(split.valid), test=test, eval_users_of=len(users))


def authors_test_counts(num_rows: int, batch: int) -> np.ndarray:
    """[num_rows] int64: how many times the authors' ``test()`` counts each test row in its means (rows in split
    order). Given more than ``batch`` rows it runs ``num_rows // batch`` batches but advances the start index only
    after that loop, so each of them is rows 0..batch-1; then one batch of every row from ``batch`` on, and none
    when ``batch`` divides ``num_rows``. ML-1M: 1,208 rows, batch 512 -> rows 0..511 twice, the others once.
    The rule is applied to all test rows as one batch of the authors' batcher, which is what their ML-1M run sees
    (their batcher hands test() all 1,208 rows at once); it groups rows by input length first, so on data where
    that splits the test rows the authors' count differs."""
    counts = np.ones(num_rows, dtype=np.int64)
    if num_rows > batch:
        repeats, remain = divmod(num_rows, batch)
        counts[:batch] = repeats
        if remain == 0:
            counts[batch:] = 0
    return counts
