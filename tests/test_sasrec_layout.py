"""SASRec's block layouts: ``kang`` (the original SASRec, as the SASRec+ reference builds it) against a forward
written out from its definition, last-position-only evaluation against the full pass, causality, and the init."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from t2diff.config import ConfigError
from t2diff.models.base import DataInfo
from t2diff.models.layers import TransformerBlock, attention_mask
from t2diff.models.sasrec import SASRec, SASRecConfig

D, L = 8, 6


def _seq() -> torch.Tensor:
    return torch.tensor([[0, 0, 3, 5, 2, 9], [4, 1, 7, 7, 2, 6], [0, 0, 0, 0, 0, 8]])


def _kang_reference(blk: TransformerBlock, x: torch.Tensor, allow: torch.Tensor) -> torch.Tensor:
    """One head: q = LN1(x) Wq, k = x Wk, v = x Wv; h = LN1(x) + softmax(q k^T / sqrt(D)) v Wo;
    out = LN2(h) + W2 relu(W1 LN2(h))."""
    wq, wk, wv = blk.qkv.weight.split(D)
    bq, bk, bv = blk.qkv.bias.split(D)
    y = blk.ln1(x)
    q, k, v = F.linear(y, wq, bq), F.linear(x, wk, bk), F.linear(x, wv, bv)
    s = (q @ k.transpose(-1, -2)) / D**0.5
    s = s.masked_fill(~allow[:, 0], float("-inf"))
    h = y + blk.proj(torch.softmax(s, -1) @ v)
    z = blk.ln2(h)
    lin1, lin2 = blk.ffn[0], blk.ffn[3]
    return z + lin2(torch.relu(lin1(z)))


def test_kang_block_matches_its_definition() -> None:
    torch.manual_seed(0)
    blk = TransformerBlock(D, 1, 16, dropout=0.3, layout="kang").eval()
    for p in blk.parameters():  # LayerNorm weights away from 1/0 so that a swapped norm would show
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(3, L, D)
    allow = attention_mask(_seq(), causal=True)
    torch.testing.assert_close(blk(x, allow), _kang_reference(blk, x, allow))
    pre_ln = TransformerBlock(D, 1, 16, dropout=0.3).eval()
    pre_ln.load_state_dict(blk.state_dict())
    assert not torch.allclose(pre_ln(x, allow), blk(x, allow))  # the layouts really differ


@pytest.mark.parametrize("layout", ["pre_ln", "kang"])
@pytest.mark.parametrize("heads", [1, 2])
def test_last_only_equals_the_full_pass(layout: str, heads: int) -> None:
    torch.manual_seed(1)
    blk = TransformerBlock(D, heads, 16, dropout=0.2, layout=layout).eval()
    x = torch.randn(3, L, D)
    allow = attention_mask(_seq(), causal=True)
    torch.testing.assert_close(blk(x, allow, last_only=True), blk(x, allow)[:, -1:])


def _kang_model(**kw) -> SASRec:
    torch.manual_seed(2)
    cfg = SASRecConfig(hidden=D, num_heads=2, ffn_dim=D, layout="kang", emb_scale=True, init_std=0.02, **kw)
    return SASRec(cfg, DataInfo(num_items=10, num_users=3, max_len=L))


def test_kang_sasrec_is_causal_and_ranks_from_the_last_position() -> None:
    m = _kang_model().eval()
    seq = _seq()
    full = m.encode(seq)  # [B, L, D]
    later = seq.clone()
    later[:, -1] = torch.tensor([1, 3, 5])
    torch.testing.assert_close(m.encode(later)[:, :-1], full[:, :-1])  # a later item leaves earlier rows alone
    torch.testing.assert_close(m.encode(seq, last_only=True)[:, -1], full[:, -1])


def test_init_std_and_embedding_scale() -> None:
    m = _kang_model()
    w = torch.cat([m.item_emb.weight[1:].flatten(), m.blocks[0].qkv.weight.flatten(),
                   m.blocks[1].ffn[0].weight.flatten()])
    assert abs(w.std().item() - 0.02) < 0.004
    assert m.item_emb.weight[0].abs().sum() == 0  # padding row stays zero
    assert m.blocks[0].qkv.bias.abs().sum() == 0
    assert m.emb_mult == pytest.approx(D**0.5)
    ours = SASRec(SASRecConfig(hidden=D, num_heads=2), DataInfo(num_items=10, num_users=3, max_len=L))
    assert ours.emb_mult == 1.0


@pytest.mark.parametrize("bad,match", [({"layout": "post_ln"}, "layout"), ({"init_std": 0.0}, "init_std"),
                                       ({"hidden": 10, "num_heads": 3}, "num_heads")])
def test_bad_options_are_rejected(bad: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SASRecConfig(**bad)
