"""STOSA: the dot-product form of the W2 ranking, causality, the official mean-stream quirk, the BPR + pvn loss,
config checks. Synthetic data only (50 items, histories of length 12); the model is built directly."""

from __future__ import annotations

import math

import pytest
import torch

from t2diff.batch import Batch
from t2diff.config import ConfigError, from_dict
from t2diff.losses import Objective
from t2diff.models.base import DataInfo
from t2diff.models.stosa import STOSA, STOSAConfig, augment_items, augment_users, w2_sq

NUM_ITEMS, MAX_LEN = 50, 12
INFO = DataInfo(num_items=NUM_ITEMS, num_users=10, max_len=MAX_LEN)
TINY = {"hidden": 16, "num_blocks": 2, "num_heads": 2, "ffn_dim": 32}


def build(**overrides) -> STOSA:
    torch.manual_seed(0)
    return STOSA(STOSAConfig(**{**TINY, **overrides}), INFO)


def make_batch(lengths: tuple[int, ...] = (12, 7, 1, 0, 3), seed: int = 0) -> Batch:
    """Left-padded histories; pos_targets = the next item at every real position, the last one the target."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.zeros(len(lengths), MAX_LEN, dtype=torch.long)
    for i, n in enumerate(lengths):
        if n:
            seq[i, MAX_LEN - n:] = torch.randint(1, NUM_ITEMS + 1, (n,), generator=g)
    target = torch.randint(1, NUM_ITEMS + 1, (len(lengths),), generator=g)
    pos = torch.zeros_like(seq)
    pos[:, :-1] = seq[:, 1:] * (seq[:, :-1] > 0)
    pos[:, -1] = target * (seq[:, -1] > 0)
    zeros = torch.zeros(len(lengths), dtype=torch.long)
    return Batch(seq=seq, target=target, pos_targets=pos, seq_time=torch.zeros_like(seq), target_time=zeros,
                 user=zeros)


def test_augmented_dot_product_ranks_as_w2_hand_computed() -> None:
    # user N([0, 0], diag[1, 1]); W2^2 = ||mu_u - mu_i||^2 + ||sqrt(S_u) - sqrt(S_i)||^2 by hand:
    u_mean, u_cov = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    i_mean = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [3.0, 0.0], [0.5, 0.5]])
    i_cov = torch.tensor([[1.0, 1.0], [4.0, 4.0], [1.0, 1.0], [0.25, 0.25], [0.25, 1.0]])
    by_hand = torch.tensor([1.0, 2.0, 0.0, 9.5, 0.75])  # 1 + 0 | 0 + (1 + 1) | 0 | 9 + 2 * 0.25 | 0.5 + 0.25
    torch.testing.assert_close(w2_sq(u_mean, u_cov, i_mean, i_cov), by_hand)
    dots = (augment_users(u_mean, u_cov) @ augment_items(i_mean, i_cov).T)[0]  # [5]
    # -W2^2 + ||mu_u||^2 + ||sqrt(S_u)||^2 = -W2^2 + 2 exactly; same order as the smallest distance
    torch.testing.assert_close(dots, -by_hand + 2.0)
    assert dots.argsort(descending=True).tolist() == [2, 4, 0, 1, 3] == by_hand.argsort().tolist()
    assert augment_users(u_mean, u_cov).shape == (1, 5) and augment_items(i_mean, i_cov).shape == (5, 5)


@pytest.mark.parametrize("mean_stream", ["official", "fixed"])
def test_model_scores_are_minus_w2_plus_a_row_constant(mean_stream: str) -> None:
    model = build(mean_stream=mean_stream).eval()
    batch = make_batch()
    with torch.no_grad():
        scores = model.score(batch)  # [B, I + 1]
        mean, cov = model.gaussians(batch.seq)
        i_mean, i_cov = model.item_gaussians()
        w2 = w2_sq(mean[:, -1, None], cov[:, -1, None], i_mean[None], i_cov[None])  # [B, I + 1] directly
    assert scores.shape == (len(batch), NUM_ITEMS + 1)
    assert model.item_embeddings().shape == (NUM_ITEMS + 1, 2 * TINY["hidden"] + 1)
    diff = scores + w2  # = ||mu_u||^2 + ||sqrt(S_u)||^2: constant along each row, so the ranking is W2's
    torch.testing.assert_close(diff, diff[:, :1].expand_as(diff), atol=1e-4, rtol=1e-5)
    assert torch.equal(scores[:, 1:].argmax(1), w2[:, 1:].argmin(1))


@pytest.mark.parametrize("mean_stream", ["official", "fixed"])
def test_causal_a_later_item_leaves_earlier_positions_unchanged(mean_stream: str) -> None:
    model = build(mean_stream=mean_stream).eval()
    seq = make_batch().seq
    with torch.no_grad():
        m1, c1 = model.gaussians(seq)
        h1 = model.encode(seq)
        for j in (4, MAX_LEN - 1):
            changed = seq.clone()
            real = changed[:, j] > 0
            changed[real, j] = changed[real, j] % NUM_ITEMS + 1
            m2, c2 = model.gaussians(changed)
            torch.testing.assert_close(m1[:, :j], m2[:, :j])
            torch.testing.assert_close(c1[:, :j], c2[:, :j])
            torch.testing.assert_close(h1[:, :j], model.encode(changed)[:, :j])
            assert not torch.allclose(c1[real, j], c2[real, j])


def test_padding_free_and_empty_history() -> None:
    """Dropping all-padding leading columns changes no output; an empty history gives finite vectors."""
    model = build(mean_stream="fixed").eval()
    batch = make_batch((7, 3, 0))
    with torch.no_grad():
        full = model.encode(batch.seq)
        cropped = model.encode(batch.seq[:, -8:])
        assert torch.isfinite(model.user_embeddings(batch)).all()
    torch.testing.assert_close(full[:, -8:], cropped)


@pytest.mark.parametrize("mean_stream,loss_kind", [("official", "bpr"), ("fixed", "bpr"), ("official", "softmax")])
def test_one_training_step(mean_stream: str, loss_kind: str) -> None:
    model = build(mean_stream=mean_stream, loss=loss_kind)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    loss, logs = model.loss(make_batch())
    assert loss.dim() == 0 and math.isfinite(loss.item())
    assert set(logs) == ({"bpr", "pvn"} if loss_kind == "bpr" else {"tower"})
    assert all(math.isfinite(v) for v in logs.values())
    opt.zero_grad()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    opt.step()
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, model.parameters(), strict=True))


def test_bpr_loss_matches_its_formula() -> None:
    """loss = mean(-log sigmoid(d_neg - d_pos)) + pvn_weight * mean(max(0, d_pos - d(pos, neg))), with the
    model's own negatives (same RNG state), at every position with a target."""
    model = build(mean_stream="fixed", dropout=0.0, attn_dropout=0.0, pvn_weight=0.3)
    batch = make_batch()
    torch.manual_seed(5)
    loss, logs = model.loss(batch)
    torch.manual_seed(5)
    neg = model.sample_negatives(batch)
    keep = batch.pos_targets > 0
    with torch.no_grad():
        mean, cov = model.gaussians(batch.seq)
        pm, pc = model.item_gaussians(batch.pos_targets[keep])
        nm, nc = model.item_gaussians(neg[keep])
        d_pos, d_neg = w2_sq(mean[keep], cov[keep], pm, pc), w2_sq(mean[keep], cov[keep], nm, nc)
        d_pn = w2_sq(pm, pc, nm, nc)
        bpr = -torch.log(torch.sigmoid(d_neg - d_pos)).mean()
        pvn = torch.clamp(d_pos - d_pn, min=0).mean()
    assert logs["bpr"] == pytest.approx(bpr.item(), rel=1e-5)
    assert logs["pvn"] == pytest.approx(pvn.item(), rel=1e-5)
    assert loss.item() == pytest.approx((bpr + 0.3 * pvn).item(), rel=1e-5)


def test_negatives_avoid_the_window_when_they_can() -> None:
    model = build(negative_rounds=20)
    batch = make_batch((3, 2, 1))  # few items per row: a clash survives 20 redraws with p ~ (6/50)^20
    torch.manual_seed(0)
    neg = model.sample_negatives(batch)
    assert neg.shape == batch.seq.shape and bool(((neg >= 1) & (neg <= NUM_ITEMS)).all())
    window = torch.cat([batch.seq, batch.pos_targets], 1)
    assert not (neg.unsqueeze(-1) == window.unsqueeze(1)).any()


def test_official_mean_stream_is_the_input_mean_embedding() -> None:
    """Official: the returned mean = ELU(LN(item_mean + pos_mean)) (eval: no dropout) at every position, and
    the mean value / output / FFN weights get no gradient; fixed: the mean goes through the layers."""
    batch = make_batch()
    for mean_stream in ("official", "fixed"):
        model = build(mean_stream=mean_stream).eval()
        with torch.no_grad():
            mean, _ = model.gaussians(batch.seq)
            pos = torch.arange(MAX_LEN)
            by_hand = torch.nn.functional.elu(model.ln_in(model.item_mean(batch.seq) + model.pos_mean(pos)))
        real = batch.seq > 0
        if mean_stream == "official":
            torch.testing.assert_close(mean, by_hand)
        else:
            assert not torch.allclose(mean[real], by_hand[real], atol=1e-3)
        model.train()
        model.loss(make_batch())[0].backward()
        layer = model.layers[0]
        mean_only = [layer.mean_v, layer.mean_out, layer.mean_ffn.fc1, layer.mean_ffn.fc2]
        graded = [p.grad is not None and bool(p.grad.abs().sum() > 0) for m in mean_only for p in m.parameters()]
        assert not any(graded) if mean_stream == "official" else all(graded)
        assert layer.mean_q.weight.grad is not None and layer.mean_q.weight.grad.abs().sum() > 0  # attention weights
        assert model.item_mean.weight.grad.abs().sum() > 0


def test_same_parameters_in_both_mean_streams() -> None:
    a, b = build(mean_stream="official"), build(mean_stream="fixed")
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    b.load_state_dict(a.state_dict())


@pytest.mark.parametrize("bad", [
    {"mean_stream": "typo"}, {"loss": "bce"}, {"hidden": 16, "num_heads": 3}, {"dropout": 1.0},
    {"attn_dropout": -0.1}, {"pvn_weight": -1.0}, {"num_blocks": 0}, {"ffn_dim": 0}, {"negative_rounds": -1},
])
def test_bad_config_raises(bad: dict) -> None:
    with pytest.raises(ConfigError):
        STOSAConfig(**{**TINY, **bad})
    with pytest.raises(ConfigError):
        from_dict(STOSAConfig, {**TINY, **bad}, "model")
    edited = STOSAConfig(**TINY)
    for key, value in bad.items():
        setattr(edited, key, value)
    with pytest.raises(ConfigError):  # a config edited after construction is checked when the model is built
        STOSA(edited, INFO)


def test_sampled_softmax_objective_needs_the_softmax_loss() -> None:
    with pytest.raises(ConfigError, match="model.loss"):
        STOSA(STOSAConfig(**TINY), INFO, Objective(loss="sampled", negative_sampler="uniform"))
    model = STOSA(STOSAConfig(**TINY, loss="softmax"), INFO, Objective(loss="sampled", num_negatives=8,
                                                                        negative_sampler="uniform"))
    assert math.isfinite(model.loss(make_batch())[0].item())
