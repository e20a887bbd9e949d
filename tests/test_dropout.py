"""The cheap CPU dropout: its drop rate, its unbiasedness, its gradient, its seeding, and attention written out
equals SDPA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from t2diff.models.dropout import Dropout, attention, dropout, keep_scale


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_drop_rate_and_scale(p):
    torch.manual_seed(0)
    n = 1 << 20
    m = keep_scale((n,), p, torch.float32)
    dropped = round(p * 65536) / 65536
    frac = (m == 0).float().mean().item()
    sd = (dropped * (1 - dropped) / n) ** 0.5
    assert abs(frac - dropped) < 6 * sd  # a Bernoulli(p) rate, within 6 standard deviations
    kept = m[m != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - dropped)))  # E[m] = 1 exactly
    assert abs(m.mean().item() - 1.0) < 6 * (dropped / (1 - dropped) / n) ** 0.5


def test_lanes_of_one_word_are_independent():
    # the four 16-bit lanes of each 64-bit word decide four neighbouring elements: their drops must not
    # correlate (a bias in one lane, e.g. a sign bit never set, would show here)
    torch.manual_seed(1)
    m = (keep_scale((1 << 20,), 0.5, torch.float32) == 0).float().view(-1, 4)
    rates = m.mean(0)
    assert ((rates - 0.5).abs() < 0.005).all(), rates
    c = torch.corrcoef(m.T)
    assert (c - torch.eye(4)).abs().max() < 0.01


def test_forward_backward_train_eval_and_seeding():
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(7)
    y = dropout(x, 0.3)
    y.sum().backward()
    mask = (y != 0)
    torch.testing.assert_close(y[mask], x[mask] / (1 - round(0.3 * 65536) / 65536))
    torch.testing.assert_close(x.grad, (y / x).detach())  # d y / d x = the same scaled mask
    torch.manual_seed(7)
    torch.testing.assert_close(dropout(x, 0.3), y)  # the default generator's seed decides the draws
    mod = Dropout(0.3)
    assert isinstance(mod, torch.nn.Dropout) and mod.p == 0.3
    mod.eval()
    assert mod(x) is x
    assert dropout(x, 0.0) is x
    assert (dropout(x, 1.0) == 0).all()
    with pytest.raises(ValueError, match="dropout probability"):
        dropout(x, 1.5)


def test_attention_written_out_equals_sdpa():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 4, generator=g) for _ in range(3))
    allow = torch.ones(7, 7, dtype=torch.bool).tril()[None, None].expand(3, 1, 7, 7).clone()
    allow[0, :, :, :2] = False
    allow |= torch.eye(7, dtype=torch.bool)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=allow)
    torch.testing.assert_close(attention(q, k, v, allow, 0.0, True), ref)
    torch.testing.assert_close(attention(q, k, v, allow, 0.4, False), ref)  # eval: no dropout
    # with dropout: softmax, then the probabilities dropped with the same draws as keep_scale's
    torch.manual_seed(3)
    got = attention(q, k, v, allow, 0.4, True)
    torch.manual_seed(3)
    s = (q @ k.transpose(-1, -2) / 2).masked_fill(~allow, float("-inf"))
    want = (torch.softmax(s, -1) * keep_scale((3, 2, 7, 7), 0.4, torch.float32)) @ v
    torch.testing.assert_close(got, want)
