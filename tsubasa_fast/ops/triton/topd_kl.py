"""Triton kernel: sparse top-d KL loss and its gradient in one launch (math: ops/targets.py).

One program per row: a sweep for the max and the sum of exps (for the bucket tail, the sum
over the entries outside the teacher set, the set's own exps added back from the gathered
logits), d gathered logits for the loss with log q = (z - m) - log s, then (when a gradient
is wanted) a second sweep writing the dense part (base - ratio) * q_v * scale, a barrier,
and the whole value at each teacher index (duplicates merged first, so each address gets
one value) and at the CE label. -inf logits are allowed (q = 0); NaN / +inf make the loss
NaN. The gradient buffer may alias the logits: each block is read before it is overwritten
and the gathered logits are read before the second sweep.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..reference import TAIL_EPS
from ..targets import TopDTargets
from .common import block_v, masked_lse_step, num_warps


@triton.jit
def _topd_kl_kernel(
    logits_ptr, grad_ptr, loss_ptr,
    idx_ptr, w_ptr, const_ptr, wsum_ptr, ptail_ptr, first_ptr, labels_ptr, mask_ptr,
    V, stride_row, inv_temp, grad_scale, ce_weight,
    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_V: tl.constexpr, LOG_TAIL_EPS: tl.constexpr,
    HAS_TAIL: tl.constexpr, HAS_CE: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    grad_row = grad_ptr + row * stride_row
    offs = tl.arange(0, BLOCK_V)
    keep = tl.load(mask_ptr + row)
    if keep != 0:
        j = tl.arange(0, D_PAD)
        jm = j < D
        idx = tl.load(idx_ptr + row * D + j, mask=jm, other=-1)
        m = -float("inf")
        s = 0.0
        check = 0.0
        for start in range(0, V, BLOCK_V):
            cols = start + offs
            valid = cols < V
            x = tl.load(row_ptr + cols, mask=valid, other=-float("inf")).to(tl.float32) * inv_temp
            x_sum = x
            if HAS_TAIL:  # the sum runs outside the teacher set (Q_rest without cancellation)
                for k in tl.static_range(D):
                    x_sum = tl.where(cols == tl.load(idx_ptr + row * D + k), -float("inf"), x_sum)
            m, s, check = masked_lse_step(x, x_sum, m, s, check)
        w = tl.load(w_ptr + row * D + j, mask=jm, other=0.0)
        z = tl.load(row_ptr + idx, mask=jm, other=0.0).to(tl.float32) * inv_temp
        s_tot = s
        if HAS_TAIL:
            first = (tl.load(first_ptr + row * D + j, mask=jm, other=0) != 0) & jm
            s_tot = s + tl.sum(tl.where(first, tl.exp(z - m), 0.0), 0)
        log_s = tl.log(s_tot)
        lq = (z - m) - log_s
        q = tl.where(jm, tl.exp(lq), 0.0)
        loss = tl.load(const_ptr + row) - tl.sum(tl.where(jm, w * lq, 0.0), 0)
        base = tl.load(wsum_ptr + row)
        ratio = 0.0
        if HAS_TAIL:
            p_tail = tl.load(ptail_ptr + row)
            log_rest = tl.log(s) - log_s
            active = log_rest > LOG_TAIL_EPS
            loss -= p_tail * tl.maximum(log_rest, LOG_TAIL_EPS)
            on = active & (p_tail > 0.0)
            ratio = tl.where(on, p_tail * tl.exp(-log_rest), 0.0)
            base += tl.where(on, p_tail, 0.0)
        label = -1
        lq_label = 0.0
        if HAS_CE:
            label = tl.load(labels_ptr + row)
            z_label = tl.load(row_ptr + tl.maximum(label, 0)).to(tl.float32) * inv_temp
            lq_label = (z_label - m) - log_s
            loss -= tl.where(label >= 0, ce_weight * lq_label, 0.0)
            base += tl.where(label >= 0, ce_weight, 0.0)
        tl.store(loss_ptr + row, loss + check)
        if COMPUTE_GRAD:
            scale = grad_scale * inv_temp
            dense = (base - ratio) * scale
            for start in range(0, V, BLOCK_V):
                cols = start + offs
                valid = cols < V
                x = tl.load(row_ptr + cols, mask=valid, other=0.0).to(tl.float32) * inv_temp
                g = dense * tl.exp((x - m) - log_s)
                tl.store(grad_row + cols, g.to(grad_ptr.dtype.element_ty), mask=valid)
            tl.debug_barrier()
            # Whole values at the teacher indices, duplicates merged so every copy of an
            # index stores one value.
            same = (idx[:, None] == idx[None, :]) & jm[None, :]
            w_tot = tl.sum(tl.where(same, w[None, :], 0.0), 1)
            ce_here = tl.where((idx == label) & (label >= 0), ce_weight, 0.0)
            fix = scale * (base * q - w_tot - ce_here)
            tl.store(grad_row + idx, fix.to(grad_ptr.dtype.element_ty), mask=jm)
            if HAS_CE:
                in_set_l = tl.sum(((idx == label) & jm).to(tl.int32), 0) > 0
                if (label >= 0) & (in_set_l == 0):
                    g_label = dense * tl.exp(lq_label) - scale * ce_weight
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
    """Computes in float32 for every input dtype; float64 logits get the loss as float64."""
    if not logits.is_contiguous():
        raise ValueError("the Triton topd_kl kernel needs row-contiguous logits")
    n, vocab = logits.shape
    loss = torch.empty(n, dtype=torch.float32, device=logits.device)
    out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    if n == 0:
        return loss.to(out_dtype)
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
        D=d, D_PAD=triton.next_power_of_2(d), BLOCK_V=block, LOG_TAIL_EPS=math.log(TAIL_EPS),
        HAS_TAIL=has_tail, HAS_CE=has_ce, COMPUTE_GRAD=grad_out is not None,
        num_warps=num_warps(block),
    )
    return loss.to(out_dtype)
