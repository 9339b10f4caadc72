"""The torch backend's fast paths against the plain specification in ops/reference.py."""

import torch

from tsubasa_fast.ops import reference
from tsubasa_fast.ops import torch_backend as tb


def test_select_topd_equals_the_spec_with_ties_and_bad_rows():
    g = torch.Generator().manual_seed(0)
    cases = [
        torch.randint(-3, 3, (17, 500), generator=g).float(),  # ties at the d-th place everywhere
        torch.randn(17, 500, generator=g).to(torch.bfloat16),  # bf16 rounding ties
        torch.randn(17, 500, generator=g, dtype=torch.float64),
    ]
    bad = torch.randn(9, 300, generator=g)
    bad[3, 7], bad[5, 2], bad[6, 0] = float("nan"), float("-inf"), float("inf")
    cases.append(bad)
    for x in cases:
        for temperature in (1.0, 0.7):
            idx, lp = tb.select_topd(x, 7, temperature)
            want_idx, want_lp = reference.select_topd(x, 7, temperature)
            assert torch.equal(idx.long(), want_idx)
            assert torch.equal(lp.isnan(), want_lp.isnan())
            assert torch.equal(lp[~lp.isnan()], want_lp[~want_lp.isnan()].float())
