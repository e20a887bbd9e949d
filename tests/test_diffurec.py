"""DiffuRec (Li, Sun, Li, TOIS 2024): the official code's defaults and quirks, the trunc_lin schedule, training on
(history, target) pairs, the reverse chain, and eval-mode vectors that depend on the history only."""

from __future__ import annotations

import csv
from dataclasses import fields
from pathlib import Path

import pytest
import torch

import t2diff
from t2diff.batch import Batch
from t2diff.config import ConfigError, ExperimentConfig, from_dict, read_yaml
from t2diff.diffusion.keyed_noise import keyed_normal
from t2diff.models.base import DataInfo
from t2diff.models.diffurec import DiffuRec, DiffuRecConfig, make_schedule, trunc_lin_betas
from t2diff.models.t2diff_causal import prefix_keys

REPO = Path(__file__).resolve().parents[1]
L = 12
HISTORIES = [[3, 4, 5, 6, 7, 8, 9, 10, 11], [1, 2], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [7]]
TARGETS = [12, 3, 19, 8]
INFO = DataInfo(num_items=50, num_users=10, max_len=L)


def small(**kw) -> DiffuRecConfig:
    base = dict(hidden=16, num_blocks=2, num_heads=2, ffn_dim=32, steps=5)
    return DiffuRecConfig(**{**base, **kw})


def model(seed: int = 0, **kw) -> DiffuRec:
    torch.manual_seed(seed)
    return DiffuRec(small(**kw), INFO)


def batch(histories: list[list[int]] = HISTORIES, width: int = L) -> Batch:
    b = Batch.from_histories(histories, width)
    b.target = torch.tensor(TARGETS[: len(histories)])
    return b


def test_declared_per_example_and_its_paper_row() -> None:
    assert not DiffuRec.causal and DiffuRec.padding_free
    assert DiffuRec.paper_row(small()) == "DiffuRec"
    with open(Path(t2diff.__file__).parent / "paper_tables.csv") as f:
        assert any(row["method"] == "DiffuRec" for row in csv.DictReader(f))


def test_defaults_are_the_official_code() -> None:
    got = {f.name: getattr(DiffuRecConfig(), f.name) for f in fields(DiffuRecConfig)}
    assert got == dict(hidden=128, num_blocks=4, num_heads=4, ffn_dim=512, dropout=0.1, emb_dropout=0.3, steps=32,
                       schedule="trunc_lin", lambda_uncertainty=0.001, rescale_timesteps=True,
                       position_embedding=False, pad_mask="query", reverse_variance="beta", eval_seed=0,
                       item_init_std=None)


@pytest.mark.parametrize(("std", "want"), [(None, 1.0), (0.02, 0.02)])
def test_item_table_init_official_n01_or_the_labelled_std(std, want) -> None:
    torch.manual_seed(0)
    m = DiffuRec(DiffuRecConfig(hidden=64, num_blocks=1, num_heads=2, ffn_dim=64, steps=4, item_init_std=std),
                 DataInfo(num_items=2000, max_len=8, num_users=3))
    w = m.item_emb.weight.detach()  # [2001, 64]: 128 k draws, so the std is within 1 % of its target
    assert float(w.std()) == pytest.approx(want, rel=0.02) and abs(float(w.mean())) < 0.01 * want


@pytest.mark.parametrize(("steps", "end"), [(32, 0.635), (100, 0.21), (10, 0.11)])  # T = 10: the fallback end
def test_trunc_lin_against_its_closed_form(steps: int, end: float) -> None:
    scale = 1000 / steps
    start = scale * 1e-4 + 0.01
    assert trunc_lin_betas(steps) == pytest.approx((start, end))
    sch = make_schedule("trunc_lin", steps)
    want = torch.linspace(start, end, steps, dtype=torch.float64)  # np.linspace in the official code
    assert sch.betas[0] == 0 and torch.allclose(sch.betas[1:].double(), want, atol=1e-7)
    alpha_bar = torch.cumprod(1 - want, 0)
    assert torch.allclose(sch.alpha_bar[1:].double(), alpha_bar, rtol=1e-5, atol=1e-9)
    post_var = (1 - torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])) / (1 - alpha_bar) * want
    assert torch.allclose(sch.post_var[1:].double(), post_var, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("kw", [{}, {"position_embedding": True}, {"pad_mask": "key"},
                                {"reverse_variance": "posterior"}, {"schedule": "linear"}, {"schedule": "exp"},
                                {"schedule": "log"}, {"rescale_timesteps": False}, {"lambda_uncertainty": 0.0},
                                {"item_init_std": 0.02}])
def test_one_training_step_of_every_option(kw) -> None:
    m = model(**kw).train()
    loss, logs = m.loss(batch())
    loss.backward()
    assert torch.isfinite(loss) and logs["tower"] == pytest.approx(loss.item())
    grads = {n: p.grad for n, p in m.named_parameters()}
    assert all(g is None or bool(g.isfinite().all()) for g in grads.values())
    for name in ("item_emb.weight", "blocks.0.qkv.weight", "blocks.1.ffn2.weight", "out_ln.weight"):
        assert grads[name] is not None and float(grads[name].abs().sum()) > 0, name
    g_step = grads["step_mlp.0.weight"]  # the step embedding reaches x_hat_0 only through lambda * (x_t + d)
    assert (g_step is not None and float(g_step.abs().sum()) > 0) == (m.cfg.lambda_uncertainty > 0)
    with torch.no_grad():  # a plain SGD step (torch.optim's first step imports torch._dynamo: seconds)
        for p in m.parameters():
            if p.grad is not None:
                p -= 1e-2 * p.grad
        u = m.eval().user_embeddings(batch())
    assert u.shape == (4, 16) and bool(u.isfinite().all())


def test_user_embeddings_at_the_official_size() -> None:
    torch.manual_seed(0)
    m = DiffuRec(DiffuRecConfig(), INFO).eval()
    with torch.no_grad():
        u = m.user_embeddings(batch())
    assert u.shape == (4, 128) and bool(u.isfinite().all())


def test_eval_is_deterministic_training_is_not_and_scores_are_dot_products() -> None:
    m = model().eval()
    with torch.no_grad():
        u = m.user_embeddings(batch())
        assert torch.equal(u, m.user_embeddings(batch()))
        scores = m.score(batch())  # rounding: x_hat_0 . E^T
        assert scores.shape == (4, 51) and torch.allclose(scores, u @ m.item_embeddings().T, atol=1e-5)
        m.train()
        assert not torch.allclose(m.user_embeddings(batch()), m.user_embeddings(batch()))  # fresh noise


@pytest.mark.parametrize("kw", [{}, {"pad_mask": "key"}, {"position_embedding": True},
                                {"pad_mask": "key", "position_embedding": True}])
def test_eval_vector_depends_on_the_history_only(kw) -> None:
    """Same user alone, in a batch, and at any width (extra or no left padding) -> the same vector."""
    m = model(**kw).eval()
    with torch.no_grad():
        full = m.user_embeddings(batch())
        for i, h in enumerate(HISTORIES):
            h = h[-L:]
            for width in (len(h), L):
                one = m.user_embeddings(batch([h], width))[0]
                assert torch.allclose(one, full[i], atol=1e-5), (i, width)
        shuffled = m.user_embeddings(batch(HISTORIES[::-1]))
        assert torch.allclose(shuffled.flip(0), full, atol=1e-5)
        m.cfg.eval_seed = 1  # another seed, other noise
        assert not torch.allclose(m.user_embeddings(batch()), full, atol=1e-4)


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_reverse_chain_steps(variance: str) -> None:
    """T approximator calls at r = T..1; x_{r-1} = mu_tilde(x_hat_0, x_r) + sigma_r z with sigma_r^2 = beta_r
    (official) or beta_tilde_r; the user vector is the last x_hat_0, with no noise after it."""
    m = model(reverse_variance=variance).eval()
    b = batch()
    calls: list[tuple[int, torch.Tensor]] = []
    c = torch.randn(4, 16)

    def fake(h, hide, x_t, r, lam):  # x_hat_0 = c whatever the input; records the chain
        calls.append((int(r[0]), x_t.clone()))
        return c

    m.approximator = fake  # type: ignore[method-assign]
    with torch.no_grad():
        u = m.user_embeddings(b)
    keys = prefix_keys(b.seq, m.cfg.eval_seed)[:, -1]
    sch = m.schedule
    assert [r for r, _ in calls] == [5, 4, 3, 2, 1] and torch.equal(u, c)
    assert torch.equal(calls[0][1], keyed_normal(keys, 0, (16,)))  # x_T
    for (r, x_r), (_, x_prev) in zip(calls, calls[1:], strict=False):
        var = sch.betas[r] if variance == "beta" else sch.post_var[r]
        want = sch.post_coef_z0[r] * c + sch.post_coef_zt[r] * x_r + var.sqrt() * keyed_normal(keys, r, (16,))
        assert torch.allclose(x_prev, want, atol=1e-5), r


def test_training_is_x0_prediction_with_ce_against_the_item_table() -> None:
    """The loss is the softmax CE of the approximator's x_hat_0 (from x_t of the target's embedding) over the
    items, on batch.target only."""
    m = model(dropout=0.0, emb_dropout=0.0).train()
    b = batch()
    seen: dict[str, torch.Tensor] = {}
    real = m.approximator

    def spy(h, hide, x_t, r, lam):
        seen["x_t"], seen["r"], seen["lam"] = x_t, r, lam
        seen["out"] = real(h, hide, x_t, r, lam)
        return seen["out"]

    m.approximator = spy  # type: ignore[method-assign]
    torch.manual_seed(3)
    loss, _ = m.loss(b)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(seen["out"] @ m.item_emb.weight[1:].T, b.target - 1))
    assert bool(((seen["r"] >= 1) & (seen["r"] <= 5)).all())
    lam = seen["lam"]  # lambda ~ N(0.001, 0.001) per element, at every position
    assert lam.shape == (4, L, 16) and abs(float(lam.mean()) - 1e-3) < 3e-4 and abs(float(lam.std()) - 1e-3) < 3e-4
    b.pos_targets = torch.randint(1, 51, b.pos_targets.shape)  # per example: other positions' targets are ignored
    torch.manual_seed(3)
    assert torch.allclose(m.loss(b)[0], loss)
    b.target = torch.tensor([12, 0, 19, 8])
    with pytest.raises(ValueError, match="batch.target"):
        m.loss(b)


def test_x_t_reaches_the_output_only_through_lambda() -> None:
    m = model().eval()
    b = batch()
    with torch.no_grad():
        h, hide = m.history(m._prepare(b.seq))
        r = torch.full((4,), 3)
        x1, x2 = torch.randn(4, 16), torch.randn(4, 16)
        lam = m.lambdas(h, prefix_keys(b.seq, 0)[:, -1], 3)
        assert not torch.allclose(m.approximator(h, hide, x1, r, lam), m.approximator(h, hide, x2, r, lam))
        zero = torch.zeros_like(lam)
        assert torch.equal(m.approximator(h, hide, x1, r, zero), m.approximator(h, hide, x2, r * 0 + 1, zero))


@pytest.mark.parametrize("pad_mask", ["query", "key"])
def test_without_position_embedding_the_older_items_are_a_bag(pad_mask: str) -> None:
    """The official quirk: no position embedding and no causal mask, so only the last item's place matters."""
    h = [3, 9, 4, 17, 6, 11]
    perm = [17, 4, 3, 6, 9, 11]  # same items, same last one
    for pos in (False, True):
        m = model(pad_mask=pad_mask, position_embedding=pos, lambda_uncertainty=0.0).eval()
        with torch.no_grad():
            a, b = m.user_embeddings(batch([h, perm]))
        assert torch.allclose(a, b, atol=1e-5) != pos


def test_official_mask_lets_real_rows_see_the_pad_token() -> None:
    """pad_mask=query (official): padded keys are visible, so the pad embedding changes short histories' vectors;
    pad_mask=key hides them."""
    for pad_mask, changes in (("query", True), ("key", False)):
        m = model(pad_mask=pad_mask).eval()
        with torch.no_grad():
            before = m.user_embeddings(batch())
            m.item_emb.weight[0].normal_()
            after = m.user_embeddings(batch())
        assert (not torch.allclose(before[1], after[1], atol=1e-5)) == changes  # 2 items, 10 pads
        assert torch.allclose(before[2], after[2], atol=1e-6)  # a full window has no padding


@pytest.mark.parametrize(("key", "value"), [
    ("steps", 0), ("schedule", "cosine"), ("pad_mask", "keys"), ("reverse_variance", "small"),
    ("lambda_uncertainty", -0.001), ("dropout", 1.0), ("emb_dropout", -0.1), ("num_heads", 3), ("hidden", 0),
    ("num_blocks", 0), ("steps", "32"), ("item_init_std", 0.0), ("item_init_std", -0.02),
    ("item_init_std", float("nan")),
])
def test_bad_config_values_name_the_key(key: str, value) -> None:
    with pytest.raises(ConfigError, match=rf"model\.{key}\b"):
        from_dict(DiffuRecConfig, {key: value}, "model")
    if not isinstance(value, str) or key in ("schedule", "pad_mask", "reverse_variance"):
        with pytest.raises(ConfigError, match=rf"model\.{key}\b"):  # built in Python, too
            DiffuRecConfig(**{key: value})


@pytest.mark.parametrize("path", ["ml-1m/diffurec.yaml", "kuairand/diffurec.yaml", "ml-1m/diffurec-paper.yaml"])
def test_config_files_load(path: str) -> None:
    raw = read_yaml(REPO / "configs" / path)
    section = dict(raw.pop("model"))
    assert section.pop("name") == "diffurec"
    assert from_dict(DiffuRecConfig, section, "model") == DiffuRecConfig()  # the files state the defaults
    from_dict(ExperimentConfig, raw)  # data / train / eval sections
    assert "Command:" in "".join((REPO / "configs" / path).read_text().splitlines()[:4])
