"""The "torch" backend: the reference run chunk by chunk, gradients through autograd.

Always available; the fallback on CPU when the C++ extension is not built. Chunking bounds
its extra memory to a few [chunk, V] buffers.
"""

from __future__ import annotations

import torch

from . import reference
from .targets import TopDTargets

NAME = "torch"
_CHUNK_BYTES = 64 * 1024 * 1024


def is_available(device: torch.device) -> tuple[bool, str]:
    return True, ""


def _row_chunks(n_rows: int, vocab: int):
    step = max(1, _CHUNK_BYTES // (8 * max(vocab, 1)))
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)


def select_topd(logits: torch.Tensor, d: int, temperature: float):
    n = logits.shape[0]
    out_idx = torch.empty(n, d, dtype=torch.int32, device=logits.device)
    out_lp = torch.empty(n, d, dtype=torch.float32, device=logits.device)
    for s, e in _row_chunks(n, logits.shape[1]):
        idx, lp = reference.select_topd(logits[s:e], d, temperature)
        out_idx[s:e] = idx
        out_lp[s:e] = lp
    return out_idx, out_lp


def topd_kl(
    logits: torch.Tensor,
    targets: TopDTargets,
    temperature: float,
    grad_scale: float,
    grad_out: torch.Tensor | None,
) -> torch.Tensor:
    loss = torch.zeros(logits.shape[0], dtype=reference.compute_dtype(logits.dtype), device=logits.device)
    rows = targets.row_mask.nonzero().squeeze(1)
    if grad_out is not None:
        # Masked rows get a zero gradient (grad_out may alias logits: zero them first,
        # they are never read again).
        grad_out.index_fill_(0, (~targets.row_mask).nonzero().squeeze(1), 0)
    for s, e in _row_chunks(rows.numel(), logits.shape[1]):
        r = rows[s:e]
        t = targets.rows(r)
        x = logits.index_select(0, r).to(reference.compute_dtype(logits.dtype))
        labels = None
        if t.labels is not None:
            labels = t.labels.masked_fill(t.labels < 0, reference.IGNORE_INDEX)
        with torch.enable_grad():
            x.requires_grad_(grad_out is not None)
            rows_loss = reference.topd_kl(
                x, t.indices, t.logprobs, temperature=temperature, tail=t.tail,
                labels=labels, ce_weight=t.ce_weight,
            )
            if grad_out is not None:
                (g,) = torch.autograd.grad(rows_loss.sum(), x)
                grad_out.index_copy_(0, r, (g * grad_scale).to(grad_out.dtype))
        # Same contract as the kernels: a NaN or +inf anywhere in a row makes its loss NaN
        # (-inf logits are allowed; at a teacher index they make the loss +inf by themselves).
        bad = (torch.isnan(x) | (x == float("inf"))).any(-1)
        rows_loss = rows_loss.detach().to(loss.dtype).masked_fill(bad, float("nan"))
        loss.index_copy_(0, r, rows_loss)
    return loss
