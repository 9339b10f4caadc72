"""Triton kernel: sparse top-d KL loss and its gradient in one launch (math: ops/targets.py).

One program per row: a sweep for the log-sum-exp, d gathered logits for the loss, then (when
a gradient is wanted) a second sweep writing the dense part coef * q_v * scale, a barrier,
and d scalar fix-ups at the teacher indices (duplicates merged first, so each address gets
one value) plus one at the CE label. The gradient buffer may alias the logits: each block is
read before it is overwritten and the gathered logits are read before the second sweep.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference import TAIL_EPS
from ..targets import TopDTargets
from .common import block_v, num_warps, online_lse


@triton.jit
def _topd_kl_kernel(
    logits_ptr, grad_ptr, loss_ptr,
    idx_ptr, w_ptr, const_ptr, wsum_ptr, ptail_ptr, first_ptr, labels_ptr, mask_ptr,
    V, stride_row, inv_temp, grad_scale, ce_weight,
    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_V: tl.constexpr, TAIL_EPS: tl.constexpr,
    HAS_TAIL: tl.constexpr, HAS_CE: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    grad_row = grad_ptr + row * stride_row
    offs = tl.arange(0, BLOCK_V)
    keep = tl.load(mask_ptr + row)
    if keep != 0:
        lse = online_lse(row_ptr, V, inv_temp, BLOCK_V)
        j = tl.arange(0, D_PAD)
        jm = j < D
        idx = tl.load(idx_ptr + row * D + j, mask=jm, other=0)
        w = tl.load(w_ptr + row * D + j, mask=jm, other=0.0)
        z = tl.load(row_ptr + idx, mask=jm, other=0.0).to(tl.float32) * inv_temp
        q = tl.where(jm, tl.exp(z - lse), 0.0)
        loss = tl.load(const_ptr + row) - tl.sum(w * (z - lse), 0)
        coef = tl.load(wsum_ptr + row)
        tail_j = tl.zeros([D_PAD], dtype=tl.float32)
        if HAS_TAIL:
            first = tl.load(first_ptr + row * D + j, mask=jm, other=0) != 0
            q_set = tl.sum(tl.where(first, q, 0.0), 0)
            q_tail_raw = 1.0 - q_set
            q_tail = tl.maximum(q_tail_raw, TAIL_EPS)
            p_tail = tl.load(ptail_ptr + row)
            loss -= p_tail * tl.log(q_tail)
            ratio = tl.where((p_tail > 0.0) & (q_tail_raw > TAIL_EPS), p_tail / q_tail, 0.0)
            coef -= ratio * q_set
            tail_j = tl.where(first, ratio * q, 0.0)
        label = -1
        z_label = 0.0
        if HAS_CE:
            label = tl.load(labels_ptr + row)
            z_label = tl.load(row_ptr + tl.maximum(label, 0)).to(tl.float32) * inv_temp
            loss += tl.where(label >= 0, ce_weight * (lse - z_label), 0.0)
            coef += tl.where(label >= 0, ce_weight, 0.0)
        tl.store(loss_ptr + row, loss)
        if COMPUTE_GRAD:
            scale = grad_scale * inv_temp
            for start in range(0, V, BLOCK_V):
                cols = start + offs
                valid = cols < V
                x = tl.load(row_ptr + cols, mask=valid, other=0.0).to(tl.float32) * inv_temp
                g = scale * coef * tl.exp(x - lse)
                tl.store(grad_row + cols, g.to(grad_ptr.dtype.element_ty), mask=valid)
            tl.debug_barrier()
            # Sparse fix-ups, duplicates merged so every copy of an index stores one value.
            same = (idx[:, None] == idx[None, :]) & jm[None, :]
            w_tot = tl.sum(tl.where(same, w[None, :], 0.0), 1)
            tail_tot = tl.sum(tl.where(same, tail_j[None, :], 0.0), 1)
            ce_here = tl.where((idx == label) & (label >= 0), ce_weight, 0.0)
            fix = scale * (coef * q - w_tot + tail_tot - ce_here)
            tl.store(grad_row + idx, fix.to(grad_ptr.dtype.element_ty), mask=jm)
            if HAS_CE:
                in_set = tl.sum(((idx == label) & jm).to(tl.int32), 0) > 0
                if (label >= 0) & (in_set == 0):
                    g_label = scale * (coef * tl.exp(z_label - lse) - ce_weight)
                    tl.store(grad_row + label, g_label.to(grad_ptr.dtype.element_ty))
    else:
        tl.store(loss_ptr + row, 0.0)
        if COMPUTE_GRAD:
            for start in range(0, V, BLOCK_V):
                cols = start + offs
                zero = tl.zeros([BLOCK_V], dtype=tl.float32)
                tl.store(grad_row + cols, zero.to(grad_ptr.dtype.element_ty), mask=cols < V)


def topd_kl(
    logits: torch.Tensor,
    targets: TopDTargets,
    temperature: float,
    grad_scale: float,
    grad_out: torch.Tensor | None,
) -> torch.Tensor:
    if not logits.is_contiguous():
        raise ValueError("the Triton topd_kl kernel needs row-contiguous logits")
    n, vocab = logits.shape
    loss = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n == 0:
        return loss
    t = targets
    d = t.d
    has_tail = t.p_tail is not None
    has_ce = t.labels is not None
    block = block_v(vocab)
    _topd_kl_kernel[(n,)](
        logits, grad_out if grad_out is not None else logits, loss,
        t.indices, t.weights, t.const, t.wsum,
        t.p_tail if has_tail else loss, t.first.to(torch.int8) if has_tail else loss,
        t.labels if has_ce else t.indices, t.row_mask.to(torch.int8),
        vocab, logits.stride(0), 1.0 / temperature, float(grad_scale), float(t.ce_weight),
        D=d, D_PAD=triton.next_power_of_2(d), BLOCK_V=block, TAIL_EPS=TAIL_EPS,
        HAS_TAIL=has_tail, HAS_CE=has_ce, COMPUTE_GRAD=grad_out is not None,
        num_warps=num_warps(block),
    )
    return loss
