"""T2Diff model: ablation switches, stop-gradients, seeded inference, bad inputs, Figure-4 diagnostics."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
import torch

from t2diff.batch import Batch
from t2diff.diagnostics import diffusion_cosine_trace, write_trace
from t2diff.models.base import DataInfo
from t2diff.models.t2diff import T2Diff, T2DiffConfig
from t2diff.registry import MODELS

I, L, B, FEATS = 40, 14, 6, 5


def make_info(has_time: bool = True, features: bool = True, max_len: int = L) -> DataInfo:
    g = torch.Generator().manual_seed(0)
    feats = None
    if features:
        feats = torch.randint(0, FEATS, (I + 1, 3), generator=g)
        feats[0] = 0
        feats[1] = 0  # item 1 has no side features
    return DataInfo(num_items=I, num_users=20, max_len=max_len, has_time=has_time, item_features=feats,
                    num_feature_tokens=FEATS)


def make_batch(max_len: int = L, seed: int = 0) -> Batch:
    """Rows: full history, short history (session only partly filled), empty sequence, and random ones."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, I + 1, (B, max_len), generator=g)
    seq[1, :-4] = 0  # history all padding, session half full
    seq[2] = 0  # nothing at all
    seq_time = (1_600_000_000 + 3600 * torch.arange(max_len)).expand(B, -1) * (seq > 0)
    target_time = torch.full((B,), 1_600_000_000 + 3600 * (max_len + 5))
    pos = torch.zeros_like(seq)
    target = torch.randint(1, I + 1, (B,), generator=g)
    return Batch(seq=seq, target=target, pos_targets=pos, seq_time=seq_time, target_time=target_time,
                 user=torch.arange(B))


SMALL: dict[str, Any] = {
    "hidden": 16,
    "diffusion": {"steps": 5},
    "unet": {"levels": 3},
    "attention": {"session_len": 4, "heads": 2, "ffn_dim": 32, "din_hidden": 16, "user_ffn_hidden": 32,
                  "time_emb_dim": 4, "dropout": 0.0},
    "item_tower": {"mlp_hidden": 32},
}


def small_cfg(**kw: Any) -> T2DiffConfig:
    """The tiny test config. ``kw``: sections merged key by key into it (``diffusion={"drift": False}``) or
    legacy flat keys (``steps=2``, ``diffusion=False``), which override the nested ones."""
    raw = copy.deepcopy(SMALL)
    for k, v in kw.items():
        if isinstance(v, dict) and isinstance(raw.get(k), dict):
            raw[k].update(v)
        else:
            raw[k] = v
    return T2DiffConfig(**raw)


def test_registered() -> None:
    assert MODELS["t2diff"] is T2Diff and T2Diff.causal is False and T2Diff.Config is T2DiffConfig


VARIANTS: dict[str, dict[str, Any]] = {
    "default": {"attention": {"dropout": 0.1}},
    "mixed_attention_only": {"diffusion": {"enabled": False}},
    "wo_dp": {"diffusion": {"drift": False}},
    "linear": {"diffusion": {"schedule": "linear"}},
    "log": {"diffusion": {"schedule": "log"}},
    "l2_kl": {"objective": {"kl_loss": "l2", "kl_mask_padding": False}},
    "kl_last": {"objective": {"kl_positions": "last"}},
    "concat_user": {"attention": {"user_ffn": False}},
    "authors_unet": {"unet": {"time_emb": "authors", "final_proj": False, "padding": "zeros"}},
    "authors_attention": {"attention": {"mask_diag": True}, "diffusion": {"reverse_noise": "var"},
                          "objective": {"kl_weight": 0.1}},
    "pos_emb_2layers": {"attention": {"pos_emb": True, "layers": 2}, "diffusion": {"steps": 12}},
    # every authors'-code switch at once, as configs/ml-1m/t2diff-authors.yaml
    "authors_code": {"diffusion": {"reverse_noise": "var"},
                     "objective": {"kl_loss": "l2", "kl_mask_padding": False, "detach_xhat": False},
                     "unet": {"time_emb": "authors", "final_proj": False, "padding": "zeros"},
                     "attention": {"mask_diag": True, "user_ffn": False}},
    # the same, in the legacy flat keys (still accepted by T2DiffConfig(...), YAML files and overrides)
    "authors_code_flat": {"reverse_noise": "var", "kl_loss": "l2", "kl_mask_padding": False,
                          "unet_time_emb": "authors", "unet_final_proj": False, "unet_padding": "zeros",
                          "session_mask_diag": True, "user_ffn": False, "detach_xhat": False},
}


# every variant with time + item features; the two main variants also without either
CASES = [(v, True, True) for v in VARIANTS] + [
    (v, f, t)
    for v in ("default", "mixed_attention_only")
    for f, t in ((True, False), (False, True), (False, False))
]


@pytest.mark.parametrize(("variant", "features", "time"), CASES)
def test_training_step_each_variant(variant: str, features: bool, time: bool) -> None:
    torch.manual_seed(0)
    cfg = small_cfg(**VARIANTS[variant])
    model = T2Diff(cfg, make_info(has_time=time, features=features))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = make_batch()
    loss, logs = model.loss(batch)
    assert torch.isfinite(loss) and set(logs) == {"tower", "kl", "loss"}
    assert (logs["kl"] > 0) == cfg.diffusion.enabled
    opt.zero_grad()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    opt.step()
    model.eval()
    with torch.no_grad():
        u = model.user_embeddings(batch)
        items = model.item_embeddings()
    width = 16 if cfg.attention.user_ffn else 32
    assert u.shape == (B, width) and items.shape == (I + 1, width)
    assert bool(u.isfinite().all()) and bool(items.isfinite().all())
    assert model.score(batch).shape == (B, I + 1)


def _grads(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True))


def _all_zero(grads: list[torch.Tensor | None]) -> bool:
    return all(g is None or bool((g == 0).all()) for g in grads)


def test_kl_positions_last_covers_only_the_unknown_drift() -> None:
    """kl_positions=last: L_KL is the error at position n alone (d_n = x_{n+1} - x_n); 'all' averages every
    position whose next item is real."""
    torch.manual_seed(0)
    batch = make_batch()
    z0 = torch.randn(B, L, 16)
    z0_hat = torch.randn(B, L, 16)
    sq = (z0_hat - z0).pow(2).sum(-1)  # [B, L]
    last = T2Diff(small_cfg(objective={"kl_positions": "last"}), make_info())
    assert torch.allclose(last.kl_loss(z0_hat, z0, last.kl_mask(batch)), sq[:, -1].mean())
    every = T2Diff(small_cfg(), make_info())
    real_next = (torch.cat([batch.seq[:, 1:], batch.target[:, None]], 1) > 0).float()
    assert torch.allclose(every.kl_loss(z0_hat, z0, every.kl_mask(batch)), (sq * real_next).sum() / real_next.sum())
    with pytest.raises(ValueError, match="model.objective.kl_positions: 'first' is not one of all, last"):
        T2Diff(small_cfg(objective={"kl_positions": "first"}), make_info())


def test_stop_gradients() -> None:
    """Fig. 2a: L_TOWER never reaches the U-Net; L_KL never reaches the embedding tables."""
    torch.manual_seed(0)
    model = T2Diff(small_cfg(), make_info())
    batch = make_batch()
    user_vecs, kl = model.forward_train(batch)
    tower = model.tower_loss(user_vecs, batch.target)
    unet = list(model.unet.parameters())
    tables = [model.item_emb.weight, model.feat_emb.weight]
    assert _all_zero(_grads(tower, unet))
    assert _all_zero(_grads(kl, tables))
    # ... while each loss does train its own side
    assert not _all_zero(_grads(kl, unet))
    assert not _all_zero(_grads(tower, tables))
    # without the x_hat stop-gradient (authors' code) L_TOWER reaches the U-Net: the check above bites
    torch.manual_seed(0)
    leaky = T2Diff(small_cfg(objective={"detach_xhat": False}), make_info())
    u, _ = leaky.forward_train(batch)
    assert not _all_zero(_grads(leaky.tower_loss(u, batch.target), list(leaky.unet.parameters())))


def test_seeded_evaluation_is_reproducible() -> None:
    torch.manual_seed(0)
    model = T2Diff(small_cfg(), make_info()).eval()
    batch = make_batch()
    with torch.no_grad():
        a, b = model.user_embeddings(batch), model.user_embeddings(batch)
        model.cfg = dataclasses.replace(model.cfg, diffusion=dataclasses.replace(model.cfg.diffusion, eval_seed=123))
        c = model.user_embeddings(batch)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # the chain really is stochastic; the seed pins it


def test_user_embedding_does_not_depend_on_batch_position_or_size() -> None:
    """Keyed chain noise: a history gets the same x_hat (hence embedding) alone, permuted or in a batch, so the
    service (one request) and batch retrieval agree."""
    torch.manual_seed(0)
    model = T2Diff(small_cfg(), make_info()).eval()
    batch = make_batch()
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        full = model.user_embeddings(batch)
        permuted = model.user_embeddings(Batch(**{k: v[perm] for k, v in vars(batch).items()}))
        alone = model.user_embeddings(Batch(**{k: v[3:4] for k, v in vars(batch).items()}))
    torch.testing.assert_close(permuted, full[perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone, full[3:4], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("drift", [True, False])
def test_oracle_approximator_restores_next_item(drift: bool) -> None:
    """An approximator returning the true z0 makes the reverse chain give x_hat_{n+1} = x_{n+1} (eq. 18)."""
    torch.manual_seed(0)
    model = T2Diff(small_cfg(diffusion={"drift": drift}), make_info()).eval()
    batch = make_batch()
    with torch.no_grad():
        xd = model.item_inputs(batch.seq)
        x_next = model.item_inputs(batch.target)
        z0 = model.diffusion_target(xd, x_next)
        model.approximate = lambda z, x, t: z0  # type: ignore[method-assign]
        x_hat, trace = model.sample_xhat(xd, batch.seq, trace=True)
    torch.testing.assert_close(x_hat, x_next, rtol=0, atol=1e-6)
    assert [t for t, _ in trace] == [5, 4, 3, 2, 1] and all(z is z0 for _, z in trace)
    if drift:  # eq. 11: z0 = X_{2:n+1} - X_{1:n}
        torch.testing.assert_close(z0[:, :-1], xd[:, 1:] - xd[:, :-1])


def test_item_inputs_mean_pool_features_and_padding() -> None:
    model = T2Diff(small_cfg(), make_info())
    info = model.info
    with torch.no_grad():
        x = model.item_inputs(torch.tensor([0, 1, 7]))
        assert torch.equal(x[0], torch.zeros(16))  # padding stays 0
        torch.testing.assert_close(x[1], model.item_emb.weight[1])  # no features: id embedding only
        tok = info.item_features[7]
        tok = tok[tok > 0]
        expect = model.item_emb.weight[7] + (model.feat_emb.weight[tok].mean(0) if len(tok) else 0)
        torch.testing.assert_close(x[2], expect)


def test_bad_inputs() -> None:
    torch.manual_seed(0)
    model = T2Diff(small_cfg(), make_info())
    short = make_batch(max_len=L - 2)
    with pytest.raises(ValueError, match="max_len"):
        model.user_embeddings(short)
    with pytest.raises(ValueError, match="max_len"):
        model.loss(short)
    batch = make_batch()
    batch.target[0] = 0
    with pytest.raises(ValueError, match="target"):
        model.loss(batch)
    with pytest.raises(ValueError, match="model.diffusion.schedule: 'cosine'"):
        T2Diff(small_cfg(diffusion={"schedule": "cosine"}), make_info())
    with pytest.raises(ValueError, match="model.objective.kl_loss: 'l1'"):
        T2Diff(small_cfg(kl_loss="l1"), make_info())  # a legacy flat key is checked the same way
    cfg = small_cfg()
    cfg.diffusion.sampler = "euler"  # edited after construction: the model checks again
    with pytest.raises(ValueError, match="model.diffusion.sampler: 'euler' is not one of ddpm"):
        T2Diff(cfg, make_info())
    with pytest.raises(ValueError, match="sample_xhat needs"):
        off = T2Diff(small_cfg(diffusion={"enabled": False}), make_info())
        off.sample_xhat(off.item_inputs(batch.seq), batch.seq)


@pytest.mark.parametrize("diffusion", [True, False])
def test_short_and_empty_histories_are_finite(diffusion: bool) -> None:
    torch.manual_seed(0)
    model = T2Diff(small_cfg(diffusion={"enabled": diffusion}, attention={"mask_diag": True}), make_info())
    batch = make_batch()
    batch.seq[:] = 0  # every row empty
    batch.seq[1, -2:] = torch.tensor([3, 4])  # one short row: no history, partial session
    batch.seq_time *= batch.seq > 0
    loss, _ = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        assert bool(model.user_embeddings(batch).isfinite().all())
        # an all-padding history gives h_l = 0 exactly (no NaN from an empty softmax)
        h_s = torch.randn(B, 16)
        xh = model.item_inputs(batch.seq[:, :-4])
        h_l = model._target_attention(h_s, xh, batch.seq[:, :-4] > 0, batch)
        assert torch.equal(h_l[0], torch.zeros(16)) and torch.equal(h_l[1], torch.zeros(16))


def test_session_longer_than_sequence() -> None:
    torch.manual_seed(0)
    model = T2Diff(small_cfg(attention={"session_len": 50}), make_info(max_len=6))
    loss, _ = model.loss(make_batch(max_len=6))
    assert torch.isfinite(loss)


def test_time_lag_feature_is_used() -> None:
    torch.manual_seed(0)
    model = T2Diff(small_cfg(diffusion={"enabled": False}), make_info(has_time=True)).eval()
    batch = make_batch()
    with torch.no_grad():
        a = model.user_embeddings(batch)
        batch.target_time += 10**7  # lags move to other buckets
        b = model.user_embeddings(batch)
        batch.target_time[:] = 0  # unknown request time: the dedicated bucket, still finite
        c = model.user_embeddings(batch)
    assert not torch.allclose(a[0], b[0]) and bool(c.isfinite().all())
    # rows with no history are unaffected by time
    torch.testing.assert_close(a[1], b[1])


def test_diffusion_cosine_trace_and_write(tmp_path) -> None:
    torch.manual_seed(0)
    model = T2Diff(small_cfg(diffusion={"steps": 4}), make_info()).train()
    rows = diffusion_cosine_trace(model, [make_batch(seed=0), make_batch(seed=1)])
    assert model.training  # mode restored
    assert [r["t"] for r in rows] == [4, 3, 2, 1] and [r["iteration"] for r in rows] == [1, 2, 3, 4]
    assert all(r["n"] == 2 * B and -1.0 <= r["cos_last_mean"] <= 1.0 for r in rows)
    # the chain's state after the last step (t = 1, noiseless) is that step's z0_hat, the chain's output
    assert rows[-1]["state_cos_last_mean"] == pytest.approx(rows[-1]["cos_last_mean"], abs=1e-6)
    assert rows[0]["state_cos_last_mean"] != pytest.approx(rows[0]["cos_last_mean"], abs=1e-6)
    # inner product and norms beside the cosine: the target's norm is the same at every step, the prediction's is not
    assert len({round(r["z0_norm_mean"], 5) for r in rows}) == 1 and rows[0]["z0_norm_mean"] > 0
    assert len({round(r["norm_last_mean"], 5) for r in rows}) > 1 and all(r["norm_last_mean"] > 0 for r in rows)
    assert rows == diffusion_cosine_trace(model, [make_batch(seed=0), make_batch(seed=1)])  # seeded
    paths = write_trace(rows, tmp_path / "trace")
    assert paths["csv"].read_text().splitlines()[0].startswith("t,iteration,n,cos_last_mean")
    assert len(paths["csv"].read_text().splitlines()) == 5
    if "png" in paths:
        assert paths["png"].stat().st_size > 0


def test_time_gap_session_moves_older_behaviours_to_history() -> None:
    torch.manual_seed(0)
    cfg_gap = small_cfg(diffusion={"enabled": False}, attention={"session_gap": 7200})
    model = T2Diff(cfg_gap, make_info(has_time=True)).eval()
    plain = T2Diff(small_cfg(diffusion={"enabled": False}), make_info(has_time=True)).eval()
    plain.load_state_dict(model.state_dict())
    batch = make_batch()
    batch.seq_time[0, -2:] += 10**6  # a gap of ~11 days before the last two behaviours of row 0
    with torch.no_grad():
        a, b = model.user_embeddings(batch), plain.user_embeddings(batch)
    assert not torch.allclose(a[0], b[0])  # row 0's session is cut at the gap
    torch.testing.assert_close(a[3], b[3])  # rows without a long gap are unchanged
    assert bool(a.isfinite().all())


# e_u[[0, 3], :4] of small_cfg models built with torch.manual_seed(0), in eval mode on make_batch(), recorded
# from the code before the config sections and samplers (T2DiffConfig flat, NoiseSchedule.reverse_chain); the
# refactor reproduced them bit for bit (keyed chain noise, same parameters)
RECORDED_USER = {
    "default": ({}, [[0.0688181, 0.3400289, -0.0372696, 0.0688338], [0.2494765, 0.1515317, -0.1934567, -0.0356751]]),
    "var": ({"diffusion": {"reverse_noise": "var"}},
            [[0.0680995, 0.3371493, -0.0397979, 0.0664126], [0.2560018, 0.1471802, -0.189082, -0.0269876]]),
    "wo_dp": ({"diffusion": {"drift": False}},
              [[0.0598692, 0.3341395, -0.0471803, 0.0486001], [0.2108373, 0.1836403, -0.1980987, -0.042847]]),
    "authors_code": (VARIANTS["authors_code"],
                     [[-0.0449118, 0.2909896, 0.0319092, -0.0118944], [-0.0425725, 0.028359, -0.0459304, -0.0846971]]),
}


@pytest.mark.parametrize("name", RECORDED_USER)
def test_user_embeddings_match_the_recorded_values(name: str) -> None:
    kw, expect = RECORDED_USER[name]
    torch.manual_seed(0)
    model = T2Diff(small_cfg(**kw), make_info()).eval()
    with torch.no_grad():
        u = model.user_embeddings(make_batch())
    torch.testing.assert_close(u[[0, 3], :4], torch.tensor(expect), rtol=0, atol=1e-6)


def test_sample_xhat_is_what_user_embeddings_uses() -> None:
    """The one public sampling method: x_hat (and its trace) are the ones the user tower consumes."""
    torch.manual_seed(0)
    model = T2Diff(small_cfg(), make_info()).eval()
    batch = make_batch()
    with torch.no_grad():
        x = model.item_inputs(batch.seq)
        x_hat = model.sample_xhat(x, batch.seq)
        again, trace = model.sample_xhat(x, batch.seq, trace=True)
        u = model.user_embeddings(batch)
    assert x_hat.shape == (B, 16) and torch.equal(x_hat, again)  # keyed noise: tracing changes nothing
    assert [t for t, _ in trace] == model.sampler.timesteps == [5, 4, 3, 2, 1] and model.reverse_steps == 5
    assert all(z.shape == (B, L, 16) for _, z in trace)
    torch.testing.assert_close(x_hat, (trace[-1][1] + x)[:, -1])  # eq. 18 from the last z0_hat (t = 1)
    assert torch.equal(model.mixed_attention(x, batch, x_hat), u)
    assert T2Diff(small_cfg(diffusion={"enabled": False}), make_info()).reverse_steps is None


@pytest.mark.parametrize(("kw", "row"), [
    ({}, "T2Diff"),
    ({"diffusion": {"enabled": False}}, "Mixed-attention"),
    ({"diffusion": {"enabled": False, "drift": False}}, "Mixed-attention"),
    ({"diffusion": {"drift": False}}, "W/O DP"),
    ({"objective": {"kl_positions": "last"}}, None),  # ours, not in the paper
    ({"diffusion": False}, "Mixed-attention"),  # legacy flat keys
    ({"drift": False}, "W/O DP"),
])
def test_paper_row(kw: dict[str, Any], row: str | None) -> None:
    assert T2Diff.paper_row(small_cfg(**kw)) == row
