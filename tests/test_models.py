"""Interface tests for every registered model (parametrised over ``MODELS``), plus model-specific checks.

Synthetic data only: 50 items, histories of length 12, one row per padding case (full, partial, a single
item, none)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from t2diff.batch import Batch
from t2diff.losses import full_softmax_ce
from t2diff.models.base import DataInfo, SeqRecModel
from t2diff.models.bert4rec import BERT4Rec
from t2diff.models.dat import DAT
from t2diff.models.gru4rec import GRU4Rec
from t2diff.registry import MODELS

NUM_ITEMS, NUM_USERS, MAX_LEN = 50, 20, 12
LENGTHS = [12, 7, 1, 0, 12, 3]  # history length per row; row 3 is all padding
# Speed-only overrides for models whose defaults are slow on CPU (T2Diff's inference runs the whole reverse
# chain); they shrink the work, not the code paths exercised.
FAST: dict[str, dict] = {"t2diff": {"steps": 4}, "diffurec": {"steps": 4}}


def make_info(features: bool) -> DataInfo:
    if not features:
        return DataInfo(num_items=NUM_ITEMS, num_users=NUM_USERS, max_len=MAX_LEN)
    g = torch.Generator().manual_seed(1)
    feats = torch.randint(0, 9, (NUM_ITEMS + 1, 3), generator=g)  # token 0 = none
    feats[0] = 0
    return DataInfo(num_items=NUM_ITEMS, num_users=NUM_USERS, max_len=MAX_LEN, has_time=True,
                    item_features=feats, num_feature_tokens=9)


def make_batch(lengths: list[int] = LENGTHS, seed: int = 0) -> Batch:
    """Left-padded batch laid out like data.batching.make_batch (pos_targets end with the target)."""
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    seq = torch.zeros(b, MAX_LEN, dtype=torch.long)
    seq_time = torch.zeros(b, MAX_LEN, dtype=torch.long)
    for i, n in enumerate(lengths):
        if n:
            seq[i, MAX_LEN - n:] = torch.randint(1, NUM_ITEMS + 1, (n,), generator=g)
            seq_time[i, MAX_LEN - n:] = 1_600_000_000 + torch.arange(n) * 3600
    target = torch.randint(1, NUM_ITEMS + 1, (b,), generator=g)
    valid = seq > 0
    pos = torch.zeros_like(seq)
    pos[:, :-1] = seq[:, 1:] * valid[:, :-1]
    pos[:, -1] = target * valid[:, -1]
    user = torch.randint(1, NUM_USERS + 1, (b,), generator=g)
    user[-1] = 0  # an unknown / cold user
    return Batch(seq=seq, target=target, pos_targets=pos, seq_time=seq_time,
                 target_time=seq_time[:, -1] + 600, user=user)


def build(name: str, features: bool = False, **overrides) -> SeqRecModel:
    cls = MODELS[name]
    torch.manual_seed(0)
    cfg = dataclasses.replace(cls.Config(), **{**FAST.get(name, {}), **overrides})
    return cls(cfg, make_info(features))


ALL = sorted(MODELS)
CAUSAL = [n for n in ALL if MODELS[n].causal]


@pytest.mark.parametrize("features", [False, True], ids=["plain", "features+time"])
@pytest.mark.parametrize("name", ALL)
def test_one_training_step(name: str, features: bool) -> None:
    model = build(name, features)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    loss, logs = model.loss(make_batch())
    assert loss.dim() == 0 and math.isfinite(loss.item())
    assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
    opt.zero_grad()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)
    opt.step()
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("name", ALL)
def test_one_training_step_in_bf16(name: str) -> None:
    """train.precision=bf16: every model's loss runs under autocast, is finite and back-propagates into fp32
    parameters."""
    from t2diff.precision import autocast

    model = build(name, features=True)
    with autocast("bf16", "cpu"):
        loss, _ = model.loss(make_batch())
    loss.backward()
    assert math.isfinite(loss.item())
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads)


@pytest.mark.parametrize("features", [False, True], ids=["plain", "features+time"])
@pytest.mark.parametrize("name", ALL)
def test_embedding_shapes(name: str, features: bool) -> None:
    model = build(name, features).eval()
    batch = make_batch()
    with torch.no_grad():
        u = model.user_embeddings(batch)
        it = model.item_embeddings()
    assert u.dim() == 2 and u.shape[0] == len(batch)
    assert it.shape == (NUM_ITEMS + 1, u.shape[1])  # row 0 = padding, same width D as the user side
    assert torch.isfinite(u).all() and torch.isfinite(it).all()
    assert model.score(batch).shape == (len(batch), NUM_ITEMS + 1)


@pytest.mark.parametrize("name", ALL)
def test_all_padding_histories_are_finite(name: str) -> None:
    model = build(name).eval()
    batch = make_batch([0, 0, 0])
    with torch.no_grad():
        assert torch.isfinite(model.user_embeddings(batch)).all()


@pytest.mark.parametrize("name", ALL)
def test_user_embeddings_ignore_the_target(name: str) -> None:
    """At serving time target = 0 and pos_targets ends with 0; eval embeddings must not depend on them
    (and must be deterministic: no dropout or masking at inference)."""
    model = build(name).eval()
    batch = make_batch()
    serve = dataclasses.replace(batch, target=torch.zeros_like(batch.target),
                                pos_targets=torch.cat([batch.pos_targets[:, :-1],
                                                       torch.zeros_like(batch.target)[:, None]], dim=1))
    with torch.no_grad():
        torch.testing.assert_close(model.user_embeddings(batch), model.user_embeddings(serve))


@pytest.mark.parametrize("name", ALL)
def test_tower_loss_hook_is_used(name: str) -> None:
    """The trainer swaps full / sampled softmax through ``tower_loss_fn``; every model must go through it (models
    with a loss of their own, STOSA's BPR and ContrastVAE's BCE, when set to their softmax option)."""
    own_loss = any(f.name == "loss" for f in dataclasses.fields(MODELS[name].Config))
    model = build(name, **({"loss": "softmax"} if own_loss else {}))
    calls = []

    def hook(user_vecs, targets, item_vecs):
        calls.append(user_vecs.shape[0])
        return full_softmax_ce(user_vecs, item_vecs, targets)

    model.tower_loss_fn = hook
    model.loss(make_batch())
    assert calls and all(n > 0 for n in calls)


@pytest.mark.parametrize("name", CAUSAL)
def test_causal_models_never_look_ahead(name: str) -> None:
    model = build(name).eval()
    assert hasattr(model, "encode"), "causal models must provide encode(seq) -> [B, L, D]"
    seq = make_batch().seq
    with torch.no_grad():
        h = model.encode(seq)
        assert h.shape[:2] == seq.shape
        for j in (4, MAX_LEN - 1):
            changed = seq.clone()
            real = changed[:, j] > 0
            changed[real, j] = changed[real, j] % NUM_ITEMS + 1  # another real item
            h2 = model.encode(changed)
            torch.testing.assert_close(h[:, :j], h2[:, :j])
            assert not torch.allclose(h[real, j], h2[real, j])


# ---------------------------------------------------------------- model-specific checks
@pytest.mark.parametrize("mask_prob,last_prob", [(0.0, 0.0), (0.2, 0.0), (1.0, 0.0), (0.2, 0.5), (0.2, 1.0)])
def test_bert4rec_cloze_never_masks_padding(mask_prob: float, last_prob: float) -> None:
    model = build("bert4rec", mask_prob=mask_prob, last_mask_prob=last_prob)
    assert isinstance(model, BERT4Rec)
    torch.manual_seed(3)
    for seed in range(20):
        batch = make_batch(seed=seed)
        window = model.window(batch)
        inputs, labels = model.cloze(window)
        pad = window == 0
        masked = inputs == model.mask_id
        assert (inputs[pad] == 0).all() and (labels[pad] == 0).all()
        assert torch.equal(masked, labels > 0)
        assert torch.equal(labels[masked], window[masked])
        assert torch.equal(inputs[~masked], window[~masked])
        assert torch.equal(masked.any(1), (~pad).any(1))  # >= 1 masked item in every non-empty row
        if mask_prob == 1.0 and last_prob == 0.0:
            assert torch.equal(masked, ~pad)
        if last_prob == 1.0:
            assert not masked[:, :-1].any()


def test_bert4rec_window_includes_the_target() -> None:
    model = build("bert4rec")
    assert isinstance(model, BERT4Rec)
    batch = make_batch()
    window = model.window(batch)
    assert torch.equal(window[:, -1], batch.target)
    assert torch.equal(window[:, :-1], batch.seq[:, 1:])
    assert model.item_embeddings().shape[0] == NUM_ITEMS + 1  # the [MASK] row is never ranked


def test_gru4rec_padding_does_not_change_outputs() -> None:
    """A history encodes the same whatever the amount of left padding before it."""
    model = build("gru4rec").eval()
    assert isinstance(model, GRU4Rec)
    seq = make_batch([7, 1, 0, 3, 5]).seq
    with torch.no_grad():
        full = model.encode(seq)
        short = model.encode(seq[:, -7:])
    torch.testing.assert_close(full[:, -7:], short)
    assert (full[seq == 0] == 0).all()


def test_gru4rec_equals_a_packed_gru_reference() -> None:
    """Running the GRU over right-padded rows and masking equals packing the true lengths (the slow reference)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    model = build("gru4rec").eval()
    assert isinstance(model, GRU4Rec)
    seq = make_batch([7, 1, 3, 5, 2]).seq
    with torch.no_grad():
        ours = model.encode(seq)
        n = (seq > 0).sum(1)
        l = seq.shape[1]
        x = model.item_emb(seq)
        rows = []
        for b in range(seq.shape[0]):  # right-align each row's items, pack, unpack, left-align again
            xb = torch.cat([x[b, l - n[b]:], x[b, : l - n[b]]])[None]
            packed = pack_padded_sequence(xb, n[b : b + 1].clamp(min=1), batch_first=True)
            h, _ = pad_packed_sequence(model.gru(packed)[0], batch_first=True, total_length=l)
            h = torch.cat([h[0, n[b]:], h[0, : n[b]]])  # left padding
            rows.append(model.dense(h) * (seq[b] > 0).unsqueeze(-1))
    torch.testing.assert_close(ours, torch.stack(rows))


def test_dat_mimic_trains_augmented_vectors() -> None:
    model = build("dat")
    assert isinstance(model, DAT)
    batch = make_batch()
    loss, logs = model.loss(batch)
    assert logs["mimic_u"] > 0 and logs["mimic_i"] > 0
    loss.backward()
    rows = model.aug_item.weight.grad.abs().sum(1) > 0
    assert rows[batch.target].all()  # every positive's a_i gets a gradient
    assert model.aug_user.weight.grad.abs().sum() > 0
    with torch.no_grad():  # the batched item tower agrees with the per-item one
        ids = torch.tensor([1, 7, NUM_ITEMS])
        torch.testing.assert_close(model.eval().item_embeddings()[ids], model.item_tower(ids)[0])


@pytest.mark.parametrize("name,overrides", [
    ("caser", {"use_user": True}),
    ("caser", {"window": 20}),  # window longer than the history length L
    ("dat", {"use_user": True, "l2_norm": False}),
    ("gru4rec", {"num_layers": 2, "layer_dropout": 0.1}),
    ("sasrec", {"layout": "kang", "emb_scale": True, "init_std": 0.02, "ffn_dim": 64}),  # the SASRec+ layout
])
def test_config_variants(name: str, overrides: dict) -> None:
    model = build(name, **overrides)
    loss, _ = model.loss(make_batch())
    loss.backward()
    assert math.isfinite(loss.item())
    model.eval()
    with torch.no_grad():
        u = model.user_embeddings(make_batch())
    assert u.shape[1] == model.item_embeddings().shape[1] and torch.isfinite(u).all()


def test_every_registered_model_has_a_tiny_config() -> None:
    """conftest.TINY_MODEL drives the tests that train or export every model: a new model adds its tiny size."""
    from conftest import TINY_MODEL

    assert set(TINY_MODEL) == set(MODELS)


def test_side_features_gathered_per_item_equal_per_position_pooling() -> None:
    """A batch with more ids than items takes the per-item table path: same values, same gradients."""
    from torch import nn

    from t2diff.models.layers import SideFeatures

    class Holder(nn.Module, SideFeatures):
        pass

    info = make_info(features=True)
    torch.manual_seed(3)
    h = Holder()
    h.init_side_features(info, 8, enabled=True)
    ids = torch.randint(0, NUM_ITEMS + 1, (9, 12))  # 108 ids > 51 rows: the table path
    x = torch.randn(9, 12, 8)
    tok = h.item_feats[ids]
    m = (tok > 0).unsqueeze(-1).float()
    want = x + (h.feat_emb(tok) * m).sum(-2) / m.sum(-2).clamp_min(1.0)
    got = h.with_side_features(x, ids)
    assert torch.equal(got, want)
    g_want = torch.autograd.grad(want.square().sum(), h.feat_emb.weight)[0]
    g_got = torch.autograd.grad(h.with_side_features(x, ids).square().sum(), h.feat_emb.weight)[0]
    torch.testing.assert_close(g_got, g_want)
    few = ids[:1, :3]  # fewer ids than items: the per-id path, same values
    torch.testing.assert_close(h.with_side_features(x[:1, :3], few), want[:1, :3], rtol=0, atol=0)
