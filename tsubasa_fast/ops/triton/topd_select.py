"""Triton kernel: top-d token selection with full-vocabulary log-probabilities.

One program per row. A single sweep keeps the online log-sum-exp and a running top-d list;
a block contributes candidates only while its maximum beats the current d-th best, found by
repeated max/argmax/mask-out (no vocabulary-wide sort). Ties go to the lower token id: blocks
are visited in ascending order, argmax breaks ties to the left, an equal later value never
evicts, and among equal worst entries the highest id is evicted. The final d entries are
ranked by a d x d comparison and stored in order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import block_v, lse_step, num_warps


@triton.jit
def _topd_select_kernel(
    logits_ptr, out_idx_ptr, out_lp_ptr,
    V, stride_row, inv_temp,
    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    offs = tl.arange(0, BLOCK_V)
    slot = tl.arange(0, D_PAD)
    real = slot < D
    # Padding slots hold +inf so they are never the worst; real slots start empty (-inf).
    best_v = tl.where(real, -float("inf"), float("inf"))
    best_i = (V + slot).to(tl.int64)
    m = -float("inf")
    s = 0.0
    check = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        valid = cols < V
        x = tl.load(row_ptr + cols, mask=valid, other=-float("inf")).to(tl.float32) * inv_temp
        m, s, check = lse_step(x, valid, m, s, check)
        taken = 0
        while (taken < D) & (tl.max(x, 0) > tl.min(best_v, 0)):
            cur = tl.max(x, 0)
            pos = tl.argmax(x, 0)
            worst = tl.min(best_v, 0)
            evict = tl.argmax(tl.where(best_v == worst, best_i, -1), 0)
            best_v = tl.where(slot == evict, cur, best_v)
            best_i = tl.where(slot == evict, start + pos, best_i)
            x = tl.where(offs == pos, -float("inf"), x)
            taken += 1
    lse = m + tl.log(s) + check
    # rank_j = number of entries ordered before j (higher value, or equal value, lower id)
    vj = best_v[:, None]
    vk = best_v[None, :]
    ij = best_i[:, None]
    ik = best_i[None, :]
    before = ((vk > vj) | ((vk == vj) & (ik < ij))) & real[None, :]
    rank = tl.sum(before.to(tl.int32), 1)
    out = row * D + rank
    tl.store(out_idx_ptr + out, best_i.to(tl.int32), mask=real)
    tl.store(out_lp_ptr + out, best_v - lse, mask=real)


def topd_select(logits: torch.Tensor, d: int, temperature: float):
    logits = logits.contiguous()
    n, vocab = logits.shape
    out_idx = torch.empty(n, d, dtype=torch.int32, device=logits.device)
    out_lp = torch.empty(n, d, dtype=torch.float32, device=logits.device)
    if n == 0:
        return out_idx, out_lp
    block = block_v(vocab)
    _topd_select_kernel[(n,)](
        logits, out_idx, out_lp, vocab, logits.stride(0), 1.0 / temperature,
        D=d, D_PAD=triton.next_power_of_2(d), BLOCK_V=block, num_warps=num_warps(block),
    )
    return out_idx, out_lp
