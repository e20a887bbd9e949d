"""Mamba4Rec: the selective scan against a plain sequential reference, the mixer's math, causality, left-padding
invariance, training, the official init and config validation. Models are built directly (no registry)."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from t2diff.batch import Batch
from t2diff.config import ConfigError, from_dict
from t2diff.models.base import DataInfo
from t2diff.models.mamba4rec import Mamba4Rec, Mamba4RecConfig

NUM_ITEMS, MAX_LEN = 50, 12
INFO = DataInfo(num_items=NUM_ITEMS, num_users=10, max_len=MAX_LEN)
TINY = {"hidden": 16, "d_state": 8}


def build(**overrides) -> Mamba4Rec:
    torch.manual_seed(0)
    return Mamba4Rec(Mamba4RecConfig(**{**TINY, **overrides}), INFO)


def left_padded(histories: list[list[int]], width: int = MAX_LEN) -> Tensor:  # [B, width]
    return Batch.from_histories(histories, width).seq


def histories(n_rows: int = 4, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = [MAX_LEN, 7, 1, 4][:n_rows]
    return [torch.randint(1, NUM_ITEMS + 1, (n,), generator=g).tolist() for n in lengths]


def reference_scan(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """The discretised SSM one step at a time: h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t, y_t = C_t h_t + D x_t.
    x, delta [Bt, L, E]; A [E, N]; B, C [Bt, L, N]; D [E] -> y [Bt, L, E]."""
    bt, l, e = x.shape
    h = torch.zeros(bt, e, A.shape[1], dtype=x.dtype)
    ys = []
    for t in range(l):
        h = torch.exp(delta[:, t, :, None] * A) * h + delta[:, t, :, None] * B[:, t, None, :] * x[:, t, :, None]
        ys.append((h * C[:, t, None, :]).sum(-1) + D * x[:, t])
    return torch.stack(ys, dim=1)


# e, n: the tiny mixer's ED = 2 * 16 and N = 8 (its sequential scan sizes the state from its config)
def random_scan_inputs(l: int, bt: int = 3, e: int = 32, n: int = 8, seed: int = 0) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(bt, l, e, generator=g)
    delta = F.softplus(torch.randn(bt, l, e, generator=g))
    A = -torch.rand(e, n, generator=g) * 4 - 0.1  # negative: a decaying state
    B, C = torch.randn(bt, l, n, generator=g), torch.randn(bt, l, n, generator=g)
    D = torch.randn(e, generator=g)
    return x, delta, A, B, C, D


@pytest.mark.parametrize("l", [1, 7, 12, 16])  # pscan pads a non-power-of-two length
def test_selective_scans_match_the_sequential_reference(l: int) -> None:
    mixer = build().layers[0].mixer
    args = random_scan_inputs(l)
    want = reference_scan(*args)
    torch.testing.assert_close(mixer.selective_scan(*args), want, atol=1e-5, rtol=1e-5)  # parallel (default)
    torch.testing.assert_close(mixer.selective_scan_seq(*args), want, atol=1e-5, rtol=1e-5)


def test_parallel_scan_gradients_match_the_reference() -> None:
    mixer = build().layers[0].mixer
    ours = [t.clone().requires_grad_() for t in random_scan_inputs(12)]
    ref = [t.clone().requires_grad_() for t in random_scan_inputs(12)]
    w = torch.randn(3, 12, 32, generator=torch.Generator().manual_seed(1))
    (mixer.selective_scan(*ours) * w).sum().backward()
    (reference_scan(*ref) * w).sum().backward()
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4)


def test_mixer_is_the_mamba_block_over_the_reference_scan() -> None:
    """in_proj -> causal depthwise conv -> SiLU -> x_proj -> Δ = softplus(dt_proj(.)) (with its bias) ->
    selective scan -> * SiLU(z) -> out_proj: the math of mamba-ssm's Mamba, written out here."""
    model = build(official_init=False)  # a non-zero dt_proj bias, so its use is checked
    mix = model.layers[0].mixer
    x = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        u, z = mix.in_proj(x).chunk(2, dim=-1)  # [B, L, ED] each
        k = mix.conv1d.weight.shape[-1]
        conv = F.conv1d(F.pad(u.transpose(1, 2), (k - 1, 0)), mix.conv1d.weight, mix.conv1d.bias,
                        groups=u.shape[-1])  # left-padded only: causal
        u = F.silu(conv.transpose(1, 2))
        r, n = mix.dt_proj.in_features, mix.A_log.shape[1]
        dt, B, C = mix.x_proj(u).split([r, n, n], dim=-1)
        delta = F.softplus(mix.dt_proj(dt))
        y = reference_scan(u, delta, -torch.exp(mix.A_log), B, C, mix.D)
        want = mix.out_proj(y * F.silu(z))
        torch.testing.assert_close(mix(x), want, atol=1e-5, rtol=1e-5)


def test_causal_a_later_item_leaves_earlier_positions_unchanged() -> None:
    model = build().eval()
    seq = left_padded(histories())
    with torch.no_grad():
        h = model.encode(seq)
        assert h.shape == (4, MAX_LEN, 16)
        for j in (5, 9, MAX_LEN - 1):
            changed = seq.clone()
            real = changed[:, j] > 0
            changed[real, j] = changed[real, j] % NUM_ITEMS + 1
            h2 = model.encode(changed)
            torch.testing.assert_close(h[:, :j], h2[:, :j])
            assert not torch.allclose(h[real, j], h2[real, j])


def test_left_padding_changes_no_real_position() -> None:
    """A history encodes the same at any width (padding_free: evaluation crops leading padding columns), alone
    or beside longer rows; padding positions output 0."""
    model = build().eval()
    hist = histories()
    with torch.no_grad():
        full = model.encode(left_padded(hist))  # [4, 12, D]
        for i, items in enumerate(hist):
            n = len(items)
            for width in (n, n + 3, MAX_LEN):
                if width > MAX_LEN:
                    continue
                alone = model.encode(left_padded([items], width))[0]  # [width, D]
                torch.testing.assert_close(alone[width - n:], full[i, MAX_LEN - n:], atol=1e-5, rtol=1e-5)
                assert torch.equal(alone[: width - n], torch.zeros_like(alone[: width - n]))
        assert Mamba4Rec.padding_free
        crop = model.encode(left_padded(hist)[:, -8:])  # the batch without its 4 leading columns
        torch.testing.assert_close(crop[1:], full[1:, -8:], atol=1e-5, rtol=1e-5)  # rows with <= 8 items


def test_all_padding_rows_are_finite_zeros() -> None:
    model = build().eval()
    with torch.no_grad():
        u = model.user_embeddings(Batch.from_histories([[], [3, 4]], MAX_LEN))
    assert torch.isfinite(u).all() and torch.equal(u[0], torch.zeros_like(u[0])) and u[1].abs().sum() > 0


@pytest.mark.parametrize("overrides", [{}, {"num_layers": 2}, {"scan": "sequential"}], ids=["default", "2-layers",
                                                                                             "sequential"])
def test_one_training_step(overrides: dict) -> None:
    model = build(**overrides).train()
    seq = left_padded(histories())
    pos = torch.zeros_like(seq)
    pos[:, :-1] = seq[:, 1:] * (seq[:, :-1] > 0)
    pos[:, -1] = torch.tensor([5, 6, 7, 8])
    batch = Batch(seq=seq, target=pos[:, -1].clone(), pos_targets=pos, seq_time=torch.zeros_like(seq),
                  target_time=torch.zeros(4, dtype=torch.long), user=torch.zeros(4, dtype=torch.long))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    loss, logs = model.loss(batch)
    assert math.isfinite(loss.item()) and math.isfinite(logs["tower"])
    assert loss.item() == pytest.approx(math.log(NUM_ITEMS + 1), rel=0.05)  # near-uniform scores at init
    opt.zero_grad()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.layers[0].mixer.dt_proj.bias.grad.abs().sum() > 0 and model.layers[0].mixer.A_log.grad is not None
    opt.step()
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, model.parameters(), strict=True))
    assert model.layers[0].residual == (len(model.layers) > 1)


def test_scan_option_changes_no_output() -> None:
    seq = left_padded(histories())
    with torch.no_grad():
        par, seq_ = build().eval().encode(seq), build(scan="sequential").eval().encode(seq)
    torch.testing.assert_close(par, seq_, atol=1e-5, rtol=1e-5)


def test_official_init_overwrites_the_delta_init() -> None:
    official, own = build().layers[0].mixer, build(official_init=False).layers[0].mixer
    assert torch.equal(official.dt_proj.bias, torch.zeros_like(official.dt_proj.bias))  # Δ = softplus(0) at init
    assert official.dt_proj.weight.std().item() == pytest.approx(0.02, rel=0.3)
    dt = F.softplus(own.dt_proj.bias)  # mambapy's: Δ ~ logU[dt_min, dt_max], floored at 1e-4
    assert ((dt >= 1e-4 - 1e-7) & (dt <= 0.1 + 1e-6)).all() and not torch.allclose(official.dt_proj.bias,
                                                                                    own.dt_proj.bias)
    for mix in (official, own):  # everything else is re-initialised alike; A_log and D keep Mamba's init
        assert mix.in_proj.weight.std().item() == pytest.approx(0.02, rel=0.2)
        torch.testing.assert_close(-torch.exp(mix.A_log[0]), -torch.arange(1.0, 9.0))
        assert torch.equal(mix.D, torch.ones_like(mix.D))


@pytest.mark.parametrize("bad", [{"hidden": 0}, {"d_state": 0}, {"num_layers": 0}, {"dropout": 1.0},
                                 {"dropout": -0.1}, {"scan": "cuda"}, {"ffn_dim": 0}, {"expand": True}])
def test_bad_config_raises(bad: dict) -> None:
    with pytest.raises(ConfigError):
        Mamba4RecConfig(**bad)
    with pytest.raises(ConfigError):
        from_dict(Mamba4RecConfig, bad, "model")


def test_config_loader_rejects_unknown_keys_and_keeps_defaults() -> None:
    with pytest.raises(ConfigError):
        from_dict(Mamba4RecConfig, {"num_blocks": 2}, "model")
    cfg = from_dict(Mamba4RecConfig, {"hidden": 32}, "model")
    assert dataclasses.asdict(cfg) == {**dataclasses.asdict(Mamba4RecConfig()), "hidden": 32}
    assert (Mamba4RecConfig().hidden, Mamba4RecConfig().d_state, Mamba4RecConfig().dropout) == (64, 32, 0.2)


def test_user_embeddings_are_the_last_position_of_encode() -> None:
    model = build().eval()
    batch = Batch.from_histories([*histories(), []], MAX_LEN)
    with torch.no_grad():
        torch.testing.assert_close(model.user_embeddings(batch), model.encode(batch.seq)[:, -1])


def test_onnx_export_matches_torch(tmp_path) -> None:
    """The TorchScript exporter (as t2diff export) runs the sequential scan: it records the parallel one wrongly.
    The output's D must be a static dimension (the ONNX tower reads it from the graph)."""
    ort = pytest.importorskip("onnxruntime")
    model = build().eval()

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, seq: Tensor) -> Tensor:  # [B, L] -> [B, D]
            zeros = torch.zeros_like(seq)
            return self.model.user_embeddings(Batch(seq=seq, target=zeros[:, 0], pos_targets=zeros, seq_time=zeros,
                                                    target_time=zeros[:, 0], user=zeros[:, 0]))

    tower, seq = Tower().eval(), left_padded([*histories(), []])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(tower, (seq[:2],), str(tmp_path / "m.onnx"), opset_version=18, input_names=["seq"],
                          output_names=["user"], dynamic_axes={"seq": {0: "batch"}, "user": {0: "batch"}},
                          dynamo=False)
        want = tower(seq).numpy()
    assert model.layers[0].mixer.config.pscan  # eager calls are back on the parallel scan
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].shape[1] == 16
    got = session.run(None, {"seq": seq.numpy()})[0]
    assert abs(got - want).max() < 1e-5
