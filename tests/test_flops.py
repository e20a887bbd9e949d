"""The FLOP counter behind the benchmarks' floors counts in-place matmuls (plain FlopCounterMode does not)."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from t2diff.flops import count_flops
from t2diff.losses import chunked_softmax_ce


def test_in_place_matmuls_count_like_their_out_of_place_forms() -> None:
    a, b, c = torch.zeros(10, 6), torch.randn(10, 3), torch.randn(3, 6)
    assert count_flops(lambda: a.addmm_(b, c)) == 10 * 3 * 6 * 2 == count_flops(lambda: torch.addmm(a, b, c))
    x, y, z = torch.zeros(4, 10, 8), torch.randn(4, 10, 5), torch.randn(4, 5, 8)
    assert count_flops(lambda: x.baddbmm_(y, z)) == 4 * 10 * 5 * 8 * 2
    with FlopCounterMode(display=False) as plain:  # why the module exists: torch's counter misses it
        a.addmm_(b, c)
    assert plain.get_total_flops() == 0


def test_chunked_cross_entropy_counts_its_three_matmuls() -> None:
    n, items, d = 300, 41, 8  # chunks of 256 and 44 rows
    u = torch.randn(n, d, requires_grad=True)
    v = torch.randn(items + 1, d, requires_grad=True)
    t = torch.randint(1, items + 1, (n,))
    # logits, d user, d items: 2 * N * I * D each, the padding row excluded
    assert count_flops(lambda: chunked_softmax_ce(u, v, t).backward()) == 6 * n * items * d
    u2 = torch.randn(n, d, requires_grad=True)  # no item gradient wanted: two matmuls
    assert count_flops(lambda: chunked_softmax_ce(u2, v.detach(), t).backward()) == 4 * n * items * d
