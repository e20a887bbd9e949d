"""T2DiffCausal (ours, issue 14): every position in one pass with nothing later visible, diffusion of the unknown
next behaviour only, training's x_hat made by the inference sampler (never from the target), few-step sampling
chosen at inference, and one training step of every setting."""

from __future__ import annotations

import pytest
import torch

from t2diff.batch import Batch
from t2diff.config import ConfigError
from t2diff.models.base import DataInfo
from t2diff.models.t2diff_causal import T2DiffCausal, T2DiffCausalConfig, prefix_keys
from t2diff.registry import MODELS

L = 12
HISTORIES = [[3, 4, 5, 6, 7, 8, 9, 10, 11], [1, 2], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [7]]


def small(**kw) -> T2DiffCausalConfig:
    base = dict(hidden=16, num_heads=2, ffn_dim=32, session_len=4, steps=10, denoiser_hidden=32)
    return T2DiffCausalConfig(**{**base, **kw})


def info(features: bool = False) -> DataInfo:
    feats = torch.randint(0, 6, (51, 2), generator=torch.Generator().manual_seed(3)) if features else None
    if feats is not None:
        feats[0] = 0
    return DataInfo(num_items=50, num_users=10, max_len=L, item_features=feats, num_feature_tokens=6)


def model(seed: int = 0, features: bool = False, **kw) -> T2DiffCausal:
    torch.manual_seed(seed)
    m = T2DiffCausal(small(**kw), info(features))
    with torch.no_grad():  # the crossing starts switched off (W = 0); switch it on so the tests see it
        m.out.weight.normal_(std=0.3)
    return m


def batch() -> Batch:
    return Batch.from_histories(HISTORIES, L)


def test_registered_as_a_causal_padding_free_model() -> None:
    assert MODELS["t2diff_causal"] is T2DiffCausal and T2DiffCausal.causal and T2DiffCausal.padding_free
    assert T2DiffCausal.paper_row(small()) is None  # ours, not a row of the paper


@pytest.mark.parametrize("kw", [{}, {"target": "drift"}, {"diffusion": False},
                                {"sampler": "ddpm", "inference_steps": 10}, {"xhat_skip": True}])
def test_each_position_equals_the_history_cut_there(kw) -> None:
    """Eval mode: e_u at column j of the full window = user_embeddings of the history cut at j (left-padded)."""
    m = model(**kw).eval()
    b = batch()
    with torch.no_grad():
        full = m.encode(b.seq)  # [B, L, D]
        for i, h in enumerate(HISTORIES):
            h = h[-L:]
            for j in range(1, len(h) + 1):
                u = m.user_embeddings(Batch.from_histories([h[:j]], L))[0]
                col = L - len(h) + j - 1
                assert torch.allclose(u, full[i, col], atol=1e-5), (i, j)


def test_a_later_item_never_reaches_an_earlier_position() -> None:
    m = model().eval()
    b = batch()
    with torch.no_grad():
        full = m.encode(b.seq)
        for col in (L - 9, L - 5, L - 1):  # row 0's history starts at column L - 9
            seq = b.seq.clone()
            seq[0, col] = 40 if seq[0, col] != 40 else 41
            changed = m.encode(seq)
            assert torch.allclose(changed[0, :col], full[0, :col], atol=1e-6)
            assert not torch.allclose(changed[0, col], full[0, col])
            assert torch.equal(changed[1:], full[1:])


def test_padding_and_batch_neighbours_change_nothing() -> None:
    """Dropping all-padding columns (evaluation's length batching) and the other rows of the batch leave a user's
    vector as it is: the keyed noise depends on the history only."""
    m = model().eval()
    b = batch()
    with torch.no_grad():
        full = m.user_embeddings(b)
        for i, h in enumerate(HISTORIES):
            h = h[-L:]
            narrow = Batch.from_histories([h], len(h))
            assert torch.allclose(m.user_embeddings(narrow)[0], full[i], atol=1e-5)


def test_prefix_keys_are_padding_free_and_cut_consistent() -> None:
    seq = batch().seq
    keys = prefix_keys(seq, 7)
    assert keys.shape == seq.shape and bool((keys >= 0).all()) and bool((keys < 2**32).all())
    narrow = prefix_keys(seq[:, 3:], 7)  # three leading columns are padding in every row? not all: compare rows
    for i, h in enumerate(HISTORIES):
        h = h[-L:]
        one = prefix_keys(torch.tensor([h]), 7)[0]
        assert torch.equal(one, keys[i, L - len(h):])
        if len(h) <= L - 3:
            assert torch.equal(narrow[i, -len(h):], one)
    assert len(set(keys[:, -1].tolist())) == len(HISTORIES)  # different histories, different keys
    assert not torch.equal(prefix_keys(seq, 8), keys)  # and a different seed, other keys
    swapped = torch.tensor([[4, 3]])  # order matters
    assert not torch.equal(prefix_keys(swapped, 7)[:, -1], prefix_keys(torch.tensor([[3, 4]]), 7)[:, -1])


def test_training_xhat_never_sees_the_target() -> None:
    """Training feeds the crossing the sampler's x_hat from pure noise: with the same random draws, other next
    items (same positions) give the same user vectors; only the losses change."""
    m = model().train()
    b = batch()
    seen: list[torch.Tensor] = []
    m.tower_loss = lambda u, t: (seen.append(u.detach().clone()), u.sum() * 0)[1]  # type: ignore[method-assign]
    other = b.pos_targets.clone()
    other[other > 0] = (other[other > 0] % 50) + 1
    for targets in (b.pos_targets, other):
        torch.manual_seed(11)
        m.loss(Batch(seq=b.seq, target=b.target, pos_targets=targets, seq_time=b.seq_time,
                     target_time=b.target_time, user=b.user))
    assert torch.equal(seen[0], seen[1])


def test_the_tower_loss_reaches_the_generator_unless_detached() -> None:
    for detach in (False, True):
        m = model(detach_xhat=detach, denoise_weight=0.0)
        loss, _ = m.loss(batch())
        loss.backward()
        g = sum(float(p.grad.abs().sum()) for p in m.denoiser.parameters() if p.grad is not None)
        assert (g > 0) != detach


@pytest.mark.parametrize("kw", [
    {}, {"target": "drift"}, {"diffusion": False}, {"sampler": "ddpm", "inference_steps": 10},
    {"inference_steps": 1}, {"train_steps": 3}, {"xhat_ce_weight": 0.5}, {"detach_xhat": True}, {"eta": 0.5},
    {"schedule": "exp"}, {"features": True}, {"train_draws": 3}, {"train_draws": 2, "energy_weight": 1.0},
    {"xhat_skip": True}, {"xhat_skip": True, "train_draws": 2, "energy_weight": 1.0, "detach_xhat": True},
])
def test_one_training_step_of_every_setting(kw) -> None:
    feats = kw.pop("features", False)
    m = model(features=feats, **kw)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    loss, logs = m.loss(batch())
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and all(v == v for v in logs.values())
    assert ("denoise" in logs) == m.cfg.diffusion and ("xhat_ce" in logs) == (m.cfg.xhat_ce_weight > 0)
    assert ("energy" in logs) == (m.cfg.energy_weight > 0)
    with torch.no_grad():
        assert bool(m.eval().user_embeddings(batch()).isfinite().all())


def test_step_count_is_chosen_at_inference() -> None:
    m = model().eval()
    b = batch()
    out = {}
    for name, n in [("ddim", 1), ("ddim", 2), ("ddim", 5), ("ddim", 10), ("ddpm", None)]:
        m.set_sampler(name, n)
        assert m.reverse_steps == (n or 10)
        with torch.no_grad():
            out[(name, n)] = m.user_embeddings(b)
            assert torch.equal(out[(name, n)], m.user_embeddings(b))  # deterministic (keyed noise)
    assert not torch.allclose(out[("ddim", 1)], out[("ddim", 10)])
    assert m.train_sampler.timesteps == model().train_sampler.timesteps  # training's chain is untouched
    with pytest.raises(ConfigError, match="inference_steps"):
        m.set_sampler("ddpm", 3)
    with pytest.raises(ValueError, match="diffusion"):
        model(diffusion=False).set_sampler("ddim", 2)


def test_training_and_serving_use_the_same_chain() -> None:
    """Eval mode runs the chain training ran (sampler, step count): x_hat has the same distribution over the noise."""
    m = model()
    assert m.train_sampler.timesteps == m.sampler.timesteps and type(m.train_sampler) is type(m.sampler)


@pytest.mark.parametrize(("kw", "msg"), [
    ({"sampler": "ddpm", "inference_steps": 3}, "inference_steps"),
    ({"inference_steps": 11}, "inference_steps"),
    ({"train_steps": 0}, "train_steps"),
    ({"eta": 2.0}, "eta"),
    ({"target": "next"}, "target"),
    ({"num_heads": 3}, "num_heads"),
    ({"xhat_ce_weight": -1.0}, "xhat_ce_weight"),
    ({"session_len": 0}, "session_len"),
    ({"train_draws": 0}, "train_draws"),
    ({"energy_weight": 1.0}, "energy_weight"),  # one draw has no spread to score
    ({"energy_weight": 1.0, "train_draws": 2, "diffusion": False}, "energy_weight"),
    ({"energy_weight": -1.0, "train_draws": 2}, "energy_weight"),
    ({"xhat_skip": True, "diffusion": False}, "xhat_skip"),
])
def test_config_rules(kw, msg) -> None:
    with pytest.raises(ConfigError, match=msg):
        small(**kw)


def test_bad_inputs_are_named() -> None:
    m = model()
    with pytest.raises(ValueError, match="max_len"):
        m.user_embeddings(Batch.from_histories([[1, 2]], L + 1))
    empty = Batch.from_histories([[1]], L)
    with pytest.raises(ValueError, match="pos_targets"):
        m.loss(empty)


def test_several_draws_train_a_mixture_of_their_softmaxes() -> None:
    """train_draws = K: the tower loss is the mixture likelihood over K draws of x_hat (each with its own noise),
    which with K = 1 is the plain softmax CE; it needs the full softmax."""
    from t2diff.losses import Objective, mixture_softmax_nll

    m = model(train_draws=2).train()
    b = batch()
    got: list[torch.Tensor] = []
    real = mixture_softmax_nll

    def spy(u: torch.Tensor, items: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        got.append(u.detach())
        return real(u, items, t)

    import t2diff.models.t2diff_causal as mod
    old, mod.mixture_softmax_nll = mod.mixture_softmax_nll, spy
    try:
        torch.manual_seed(0)
        m.loss(b)
    finally:
        mod.mixture_softmax_nll = old
    n = int((b.pos_targets > 0).sum())
    assert got[0].shape == (2, n, 16) and not torch.allclose(got[0][0], got[0][1])  # two draws, two vectors
    sampled = T2DiffCausal(small(train_draws=2), info(), Objective("sampled", 8, "uniform"))
    with pytest.raises(ValueError, match="train.loss: full"):
        sampled.loss(b)


def test_the_energy_term_scores_the_draws_against_the_next_behaviour() -> None:
    """energy_weight = w: the loss adds w * energy_score(the K x_hat draws, x_{j+1}), and its spread term reaches
    the generator (the gradient that keeps draws apart)."""
    from t2diff.diffusion.energy import energy_score

    b = batch()
    got: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = energy_score

    def spy(draws: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        got.append((draws.detach(), y.detach()))
        return real(draws, y)

    import t2diff.models.t2diff_causal as mod
    totals = {}
    for w in (0.0, 2.0):
        m = model(train_draws=3, energy_weight=w).train()
        old, mod.energy_score = mod.energy_score, spy
        try:
            torch.manual_seed(0)
            totals[w] = m.loss(b)
        finally:
            mod.energy_score = old
    n = int((b.pos_targets > 0).sum())
    (draws, y), = got  # called only with w > 0
    assert draws.shape == (3, n, 16) and torch.allclose(y, m.item_inputs(b.pos_targets[b.pos_targets > 0]))
    loss, logs = totals[2.0]
    assert loss.item() == pytest.approx(totals[0.0][0].item() + 2.0 * logs["energy"], rel=1e-5)
    m.zero_grad()
    real(torch.stack([m.sample_xhat(torch.zeros(4, 16), torch.zeros(4, 16), None) for _ in range(2)]),
         torch.zeros(4, 16)).backward()
    assert sum(float(p.grad.abs().sum()) for p in m.denoiser.parameters() if p.grad is not None) > 0


def test_xhat_skip_adds_the_draw_to_the_user_vector() -> None:
    """xhat_skip: e_u = c_j + W [h_s; h_l] + U x_hat; U starts at 0 (the same e_u as without it), and once it is not
    0 a different draw (another eval_seed) moves e_u by U (x_hat' - x_hat) plus the crossing's change."""
    from dataclasses import replace

    b = batch()
    plain, skip = model(seed=5).eval(), model(seed=5, xhat_skip=True).eval()
    missing = skip.load_state_dict(plain.state_dict(), strict=False).missing_keys  # the same weights but U
    assert missing == ["skip.weight"]
    with torch.no_grad():
        assert torch.equal(skip.skip.weight, torch.zeros_like(skip.skip.weight))
        assert torch.allclose(plain.user_embeddings(b), skip.user_embeddings(b), atol=1e-6)
        skip.out.weight.zero_()  # only the skip path left: e_u = c + U x_hat
        skip.skip.weight.normal_(std=0.5)
        x, c = skip.backbone(b.seq, last_only=True)
        x_hat = skip.sample_xhat(c[:, 0], x[:, -1], skip.eval_keys(b.seq)[:, -1])
        assert torch.allclose(skip.user_embeddings(b), c[:, 0] + x_hat @ skip.skip.weight.T, atol=1e-5)
        other = skip.user_embeddings(b)
        skip.cfg = replace(skip.cfg, eval_seed=1)
        assert not torch.allclose(skip.user_embeddings(b), other)
