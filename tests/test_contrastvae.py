"""ContrastVAE: every variant / option trains one step, inference is deterministic and causal, the KL annealing
counter follows its schedule and survives state_dict, the augmentation dice, and config validation.

Synthetic data only (50 items, histories of length 12); the models are built directly, not through the registry."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from t2diff.batch import Batch
from t2diff.config import ConfigError, from_dict
from t2diff.losses import full_softmax_ce
from t2diff.models.base import DataInfo
from t2diff.models.contrastvae import VARIANTS, ContrastVAE, ContrastVAEConfig
from t2diff.models.layers import attention_mask

NUM_ITEMS, NUM_USERS, MAX_LEN = 50, 10, 12
LENGTHS = [12, 7, 1, 0, 12, 3]  # history length per row; row 3 is all padding
INFO = DataInfo(num_items=NUM_ITEMS, num_users=NUM_USERS, max_len=MAX_LEN)
TINY = {"hidden": 16, "num_heads": 2, "ffn_dim": 32}


def make_batch(lengths: list[int] = LENGTHS, seed: int = 0, high: int = NUM_ITEMS) -> Batch:
    """Left-padded batch laid out like data.batching.make_batch (pos_targets end with the target)."""
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    seq = torch.zeros(b, MAX_LEN, dtype=torch.long)
    for i, n in enumerate(lengths):
        if n:
            seq[i, MAX_LEN - n:] = torch.randint(1, high + 1, (n,), generator=g)
    target = torch.randint(1, high + 1, (b,), generator=g)
    valid = seq > 0
    pos = torch.zeros_like(seq)
    pos[:, :-1] = seq[:, 1:] * valid[:, :-1]
    pos[:, -1] = target * valid[:, -1]
    zeros = torch.zeros(b, dtype=torch.long)
    return Batch(seq=seq, target=target, pos_targets=pos, seq_time=torch.zeros_like(seq), target_time=zeros,
                 user=zeros)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:  # torch.testing's first call costs seconds of imports
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def build(**overrides) -> ContrastVAE:
    torch.manual_seed(0)
    return ContrastVAE(ContrastVAEConfig(**{**TINY, **overrides}), INFO)


# ---------------------------------------------------------------- training
OPTIONS = [{"variant": v, "loss": loss} for v in VARIANTS for loss in ("bce", "softmax")]
OPTIONS += [{"variant": v, "augmentation_dice": "fixed"} for v in ("da", "vd_da")]


@pytest.mark.parametrize("overrides", OPTIONS, ids=lambda o: "-".join(map(str, o.values())))
def test_one_training_step(overrides: dict) -> None:
    model = build(**overrides).train()
    before = [p.detach().clone() for p in model.parameters()]
    loss, logs = model.loss(make_batch())
    assert loss.dim() == 0 and math.isfinite(loss.item())
    assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
    assert ("nce" in logs) == (overrides["variant"] != "avae")
    assert ("prior_kl" in logs) == (overrides["variant"] in ("vd", "vd_da"))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    with torch.no_grad():  # a plain SGD step (torch.optim's first step costs seconds of lazy imports)
        for p in model.parameters():
            if p.grad is not None:
                p.sub_(1e-2 * p.grad)
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, model.parameters(), strict=True))


def test_softmax_loss_goes_through_the_tower_hook_and_bce_does_not() -> None:
    for loss, expect in (("softmax", 2), ("bce", 0)):  # two decoded views -> two tower calls
        model = build(variant="vd", loss=loss)
        calls = []

        def hook(user_vecs, targets, item_vecs, calls=calls):
            calls.append(user_vecs.shape[0])
            assert item_vecs.shape[0] == NUM_ITEMS + 1  # the [MASK] row never competes
            return full_softmax_ce(user_vecs, item_vecs, targets)

        model.tower_loss_fn = hook
        model.loss(make_batch())
        assert len(calls) == expect


def test_rows_without_targets_are_fine() -> None:
    """The paper protocol keeps only the last target; a batch may hold no target at all."""
    for loss in ("bce", "softmax"):
        model = build(loss=loss)
        batch = make_batch()
        only_last = torch.zeros_like(batch.pos_targets)
        only_last[:, -1] = batch.pos_targets[:, -1]
        for pos in (only_last, torch.zeros_like(only_last)):
            total, logs = model.loss(dataclasses.replace(batch, pos_targets=pos))
            total.backward()
            assert math.isfinite(total.item())


def test_negatives_avoid_the_rows_items() -> None:
    model = build()
    batch = make_batch(high=5)  # every row's items lie in 1..5: a miss after 10 redraws has p ~ 1e-11
    torch.manual_seed(1)
    neg = model.negatives(batch.seq, batch.pos_targets)
    assert ((neg >= 1) & (neg <= NUM_ITEMS)).all()
    for row in range(len(batch)):
        known = set(batch.seq[row].tolist()) | set(batch.pos_targets[row].tolist())
        drawn = neg[row][batch.pos_targets[row] > 0].tolist()
        assert not known & set(drawn)


def test_info_nce_matches_the_official_layout() -> None:
    model = build()
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(5, 16, generator=g), torch.randn(5, 16, generator=g)
    t = model.cfg.temperature
    cos = lambda x, y: F.cosine_similarity(x[:, None], y[None], dim=-1) / t  # noqa: E731
    s11, s22, s12 = cos(a, a), cos(b, b), cos(a, b)
    eye = torch.eye(5, dtype=torch.bool)
    s11, s22 = s11.masked_fill(eye, float("-inf")), s22.masked_fill(eye, float("-inf"))
    logits = torch.cat([torch.cat([s12, s11], 1), torch.cat([s22, s12.T], 1)], 0)  # [sim12, sim11; sim22, sim21]
    ref = F.cross_entropy(logits, torch.arange(10))
    assert close(model.info_nce(a, b), ref)
    assert model.info_nce(a, a) < ref  # identical views are easier to match


def test_variational_dropout_alpha_and_prior() -> None:
    model = build(variant="vd")
    assert model.alpha().item() == pytest.approx(0.5)  # p = 0.2: sigmoid(logit(sqrt(0.2 / 0.8)))
    loss, logs = model.loss(make_batch())
    assert logs["prior_kl"] > 0
    loss.backward()
    assert model.logit_alpha.grad is not None and model.logit_alpha.grad != 0
    assert not hasattr(build(variant="ma"), "logit_alpha")


# ---------------------------------------------------------------- inference
@pytest.mark.parametrize("variant", VARIANTS)
def test_eval_user_vectors_are_deterministic(variant: str) -> None:
    model = build(variant=variant).eval()
    batch = make_batch()
    with torch.no_grad():
        u1, u2 = model.user_embeddings(batch), model.user_embeddings(batch)
        full = model.encode(batch.seq)[:, -1]
    assert u1.shape == (len(batch), 16) and torch.isfinite(u1).all()
    assert torch.equal(u1, u2)
    assert close(u1, full)  # last_only computes the same last state
    assert model.item_embeddings().shape == (NUM_ITEMS + 1, 16)
    assert model.score(batch).shape == (len(batch), NUM_ITEMS + 1)


@pytest.mark.parametrize("mode,variant,with_std", [
    ("mean", "vd", False), ("mean_plus_std", "vd", True), ("auto", "vd", True), ("auto", "ma", True),
    ("auto", "da", True), ("auto", "avae", False), ("auto", "vae_cl", False), ("mean_plus_std", "avae", True),
    (None, "vd", False), (None, "ma", False),  # the default: the mean
])
def test_eval_latent_is_the_chosen_point(mode: str, variant: str, with_std: bool) -> None:
    model = build(variant=variant, **({} if mode is None else {"eval_latent": mode})).eval()
    assert model.eval_with_std == with_std
    seq = make_batch().seq
    with torch.no_grad():
        mu, lv = model.latent(seq)
        z = mu + torch.exp(0.5 * lv) if with_std else mu
        ref = model.run(model.dec, z, attention_mask(seq, causal=True))
        assert close(model.encode(seq), ref)


def test_never_looks_ahead() -> None:
    model = build().eval()
    seq = make_batch().seq
    with torch.no_grad():
        h = model.encode(seq)
        assert h.shape == (*seq.shape, 16)
        for j in (4, MAX_LEN - 1):
            changed = seq.clone()
            real = changed[:, j] > 0
            changed[real, j] = changed[real, j] % NUM_ITEMS + 1  # another real item
            h2 = model.encode(changed)
            assert close(h[:, :j], h2[:, :j])
            assert not torch.allclose(h[real, j], h2[real, j])


def test_padding_columns_change_nothing() -> None:
    """padding_free: dropping leading all-padding columns leaves the user vectors unchanged."""
    model = build().eval()
    batch = make_batch([7, 3, 1, 5])
    short = dataclasses.replace(batch, seq=batch.seq[:, -7:])
    with torch.no_grad():
        assert close(model.user_embeddings(batch), model.user_embeddings(short))


# ---------------------------------------------------------------- KL annealing
def test_kl_weight_follows_its_schedule_and_cap() -> None:
    model = build(anneal_cap=0.3, total_annealing_steps=1000).train()
    assert model.kl_weight() == 0.0
    weights = [model.loss(make_batch())[1]["kl_weight"] for _ in range(3)]
    assert weights == [0.0, 0.001, 0.002]  # the weight of a step, then the counter moves on
    assert int(model.anneal_step) == 3
    model.eval()
    model.loss(make_batch())  # no optimizer step outside training
    assert int(model.anneal_step) == 3
    for step, beta in ((100, 0.1), (299, 0.299), (300, 0.3), (5000, 0.3)):
        model.anneal_step.fill_(step)
        assert model.kl_weight() == pytest.approx(beta)


def test_kl_step_is_restored_from_state_dict() -> None:
    model = build(total_annealing_steps=1000).train()
    for _ in range(2):
        model.loss(make_batch())
    model.anneal_step.add_(120)
    state = model.state_dict()
    assert "anneal_step" in state
    fresh = build(total_annealing_steps=1000)
    assert fresh.kl_weight() == 0.0
    fresh.load_state_dict(state)
    assert int(fresh.anneal_step) == 122 and fresh.kl_weight() == pytest.approx(0.122)


# ---------------------------------------------------------------- augmentation
def _is_row_permutation(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.sort().values, b.sort().values)


def test_official_dice_always_reorders() -> None:
    model = build(variant="da")
    seq = make_batch([12, 10, 7, 3, 1, 0], seed=3).seq
    torch.manual_seed(4)
    changed = 0
    for _ in range(30):
        aug = model.augment(seq)
        assert torch.equal(aug > 0, seq > 0)  # nothing cropped, padding where it was
        assert not (aug == model.mask_id).any()  # nothing masked
        for row in range(len(seq)):
            assert _is_row_permutation(aug[row], seq[row])
            moved = (aug[row] != seq[row]).nonzero().flatten()
            n = int((seq[row] > 0).sum())
            if len(moved):  # inside one span of floor(0.6 n) consecutive items
                assert int(moved.max() - moved.min()) < math.floor(0.6 * n)
        changed += int((aug != seq).any(1).sum())
    assert changed > 0


def test_fixed_dice_uses_all_three() -> None:
    model = build(variant="da", augmentation_dice="fixed")
    seq = torch.stack([torch.randperm(NUM_ITEMS)[:MAX_LEN] + 1 for _ in range(8)])  # distinct items per row
    torch.manual_seed(6)
    seen = set()
    for _ in range(10):
        aug = model.augment(seq)
        for row in range(len(seq)):
            a, s = aug[row], seq[row]
            if (a == model.mask_id).any():
                seen.add("mask")
                assert int((a == model.mask_id).sum()) == math.floor(0.3 * MAX_LEN)
                assert torch.equal(a[a != model.mask_id], s[a != model.mask_id])
            elif (a == 0).any():
                seen.add("crop")
                k = math.floor(0.6 * MAX_LEN)
                assert (a[:-k] == 0).all()  # right-aligned, left-padded
                start = int((s == a[-k]).nonzero())
                assert torch.equal(a[-k:], s[start: start + k])  # consecutive items
            else:
                seen.add("reorder")
                assert _is_row_permutation(a, s)
    assert seen == {"crop", "mask", "reorder"}


def test_augmentations_on_short_rows() -> None:
    model = build(variant="da", augmentation_dice="fixed")
    seq = make_batch([1, 2, 0, 4], seed=7).seq
    n = (seq > 0).sum(1)
    torch.manual_seed(8)
    for _ in range(5):
        crop, mask, reorder = model.crop(seq, n), model.mask(seq, n), model.reorder(seq, n)
        assert torch.equal((crop > 0).sum(1), torch.floor(n * 0.6).long())
        assert torch.equal((mask == model.mask_id).sum(1), torch.floor(n * 0.3).long())
        assert (mask[seq == 0] == 0).all() and (reorder[seq == 0] == 0).all()


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("bad", [
    {"variant": "cvae"}, {"loss": "bpr"}, {"augmentation_dice": "list"}, {"eval_latent": "sample"},
    {"hidden": 10, "num_heads": 4}, {"hidden": 0}, {"dropout": 1.0}, {"attn_dropout": -0.1},
    {"reparam_dropout": 1.5}, {"vd_init_p": 0.5}, {"vd_init_p": 0.0}, {"temperature": 0.0},
    {"anneal_cap": -0.1}, {"total_annealing_steps": 0}, {"crop_ratio": 1.2}, {"ffn_dim": 0},
    {"latent_clr_weight": -1.0}, {"num_blocks": 0},
])
def test_bad_config_raises(bad: dict) -> None:
    with pytest.raises(ConfigError):
        ContrastVAEConfig(**bad)
    with pytest.raises(ConfigError):
        from_dict(ContrastVAEConfig, bad, "model")
    with pytest.raises(ConfigError):
        dataclasses.replace(ContrastVAEConfig(), **bad)


def test_defaults_and_paper_row() -> None:
    cfg = ContrastVAEConfig()
    assert (cfg.variant, cfg.loss, cfg.augmentation_dice, cfg.eval_latent, cfg.hidden, cfg.num_blocks,
            cfg.num_heads) == ("vd", "bce", "official", "mean", 128, 1, 4)
    assert ContrastVAE.paper_row(cfg) == "ContrastVAE"
    assert ContrastVAE.paper_row(dataclasses.replace(cfg, variant="avae")) is None
    assert ContrastVAE.causal and ContrastVAE.padding_free


def test_probe_reports_the_trained_loss_terms(synthetic_prepared, tmp_path) -> None:
    """benchmarks/contrastvae_probe.py on a tiny trained run: the loss terms a training step reports, the KL
    counter left as it was, InfoNCE's chance value log(2B - 1), and a clear refusal of another model's run."""
    import json

    from conftest import load_benchmark, tiny_config

    from t2diff.train import Trainer

    mod = load_benchmark("contrastvae_probe")
    Trainer(tiny_config(synthetic_prepared, "contrastvae"), tmp_path / "run", progress=False, log=lambda s: None).fit()
    ck = tmp_path / "run" / "last.pt"
    steps = int(torch.load(ck, map_location="cpu", weights_only=False)["model_state"]["anneal_step"])
    assert mod.main([str(ck), "--windows", "8", "--out", str(tmp_path / "out"), "--name", "p"]) == 0
    row = json.loads((tmp_path / "out" / "p.json").read_text())["checkpoints"][str(ck)]
    assert row["steps"] == steps > 0
    assert row["windows"] == 8 and row["nce_chance"] == pytest.approx(math.log(15))
    for k in ("rec", "kl", "nce", "kl_per_real_position"):
        assert math.isfinite(row[k]) and row[k] >= 0
    assert row["kl_weight"] == pytest.approx(min(0.3, steps / 10000))
    Trainer(tiny_config(synthetic_prepared, "sasrec"), tmp_path / "sas", progress=False, log=lambda s: None).fit()
    with pytest.raises(SystemExit, match="not contrastvae"):
        mod.main([str(tmp_path / "sas" / "last.pt"), "--out", str(tmp_path / "out")])
