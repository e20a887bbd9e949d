"""The chunked full-softmax cross-entropy equals the reference (values and gradients)."""

from __future__ import annotations

import pytest
import torch

from t2diff.losses import chunked_softmax_ce, full_softmax_ce


def _grads(f, u, w, t):
    u = u.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    loss = f(u * 1.0, w * 1.0, t)  # through a product, as a model's tensors come: not leaves
    loss.backward()
    return loss.detach(), u.grad, w.grad


@pytest.mark.parametrize(("n", "chunk"), [(1, 256), (7, 3), (300, 256), (512, 256), (1000, 1000)])
def test_chunked_equals_reference(n, chunk):
    g = torch.Generator().manual_seed(n)
    num_items, d = 97, 12
    u = 2 * torch.randn(n, d, generator=g)
    w = 2 * torch.randn(num_items + 1, d, generator=g)
    t = torch.randint(1, num_items + 1, (n,), generator=g)
    t[: n // 3] = 5  # repeated targets inside a chunk
    ref = _grads(full_softmax_ce, u, w, t)
    got = _grads(lambda a, b, c: chunked_softmax_ce(a, b, c, chunk), u, w, t)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(got[2], ref[2], rtol=1e-4, atol=1e-7)
    assert (got[2][0] == 0).all()  # the padding row gets no gradient


def test_extreme_logits_stay_finite_and_equal_the_reference():
    # targets whose probability underflows float32 (logit gaps of thousands): the loss comes from the
    # log-sum-exp, never from log(p_target)
    g = torch.Generator().manual_seed(5)
    u = 300 * torch.randn(40, 6, generator=g)
    w = torch.randn(51, 6, generator=g)
    t = torch.randint(1, 51, (40,), generator=g)
    ref = _grads(full_softmax_ce, u, w, t)
    got = _grads(lambda a, b, c: chunked_softmax_ce(a, b, c, 16), u, w, t)
    assert ref[0] > 100 and torch.isfinite(got[0])
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got[2], ref[2], rtol=1e-4, atol=1e-6)


def test_gradient_to_one_input_only_and_no_grad():
    g = torch.Generator().manual_seed(0)
    u, w = torch.randn(9, 4, generator=g), torch.randn(11, 4, generator=g)
    t = torch.randint(1, 11, (9,), generator=g)
    wr = w.clone().requires_grad_(True)
    chunked_softmax_ce(u, wr, t, 4).backward()
    wref = w.clone().requires_grad_(True)
    full_softmax_ce(u, wref, t).backward()
    torch.testing.assert_close(wr.grad, wref.grad, rtol=1e-4, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(chunked_softmax_ce(u, w, t), full_softmax_ce(u, w, t))
    with pytest.raises(ValueError, match="empty batch"):
        chunked_softmax_ce(u[:0], w, t[:0])


def test_bf16_autocast_loss_and_gradients_close_to_fp32():
    # bf16 training (train.precision=bf16): bfloat16 matmuls, float32 softmax and accumulation; the loss and
    # gradients stay within bfloat16's rounding of the float32 reference, and come back in float32
    g = torch.Generator().manual_seed(3)
    n, num_items, d = 700, 301, 16
    u = torch.randn(n, d, generator=g)
    w = 0.5 * torch.randn(num_items + 1, d, generator=g)
    t = torch.randint(1, num_items + 1, (n,), generator=g)
    ref = _grads(full_softmax_ce, u, w, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _grads(chunked_softmax_ce, u, w, t)
    assert got[0].dtype == got[1].dtype == got[2].dtype == torch.float32
    torch.testing.assert_close(got[0], ref[0], rtol=5e-3, atol=0)
    for a, b in ((got[1], ref[1]), (got[2], ref[2])):
        assert (a - b).norm() / b.norm() < 2e-2
    assert (got[2][0] == 0).all()
    # and it is really bf16 arithmetic (not silently fp32)
    assert not torch.equal(got[1], ref[1])


def test_mixture_softmax_nll_against_closed_forms() -> None:
    from t2diff.losses import full_softmax_ce, mixture_softmax_nll

    g = torch.Generator().manual_seed(0)
    items = torch.randn(8, 4, generator=g)  # 7 real items + the pad row
    u = torch.randn(5, 4, generator=g)
    t = torch.tensor([1, 3, 7, 2, 2])
    ce = full_softmax_ce(u, items, t)
    assert torch.allclose(mixture_softmax_nll(u[None], items, t), ce, atol=1e-6)  # K = 1: the CE
    assert torch.allclose(mixture_softmax_nll(u[None].expand(3, -1, -1), items, t), ce, atol=1e-6)  # K copies
    v = torch.randn(5, 4, generator=g)
    p = lambda w: torch.softmax(w @ items[1:].T, -1)[torch.arange(5), t - 1]  # noqa: E731
    want = -torch.log((p(u) + p(v)) / 2).mean()  # -log of the mean of the two softmaxes at the target
    assert torch.allclose(mixture_softmax_nll(torch.stack([u, v]), items, t, chunk=2), want, atol=1e-6)
    # -log is convex (Jensen): the mixture's NLL is never above the mean of the draws' CEs
    mean_ce = (full_softmax_ce(u, items, t).item() + full_softmax_ce(v, items, t).item()) / 2
    assert mixture_softmax_nll(torch.stack([u, v]), items, t).item() <= mean_ce + 1e-6
    uu = torch.stack([u, v]).requires_grad_()
    mixture_softmax_nll(uu, items, t).backward()
    assert torch.isfinite(uu.grad).all() and uu.grad.abs().sum() > 0
