"""The "torch" backend: the reference loss run chunk by chunk, gradients through autograd
of its gathered parts plus one dense multiply (see ``topd_kl``).

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


def _select_chunk(x: torch.Tensor, d: int, temperature: float):
    """reference.select_topd, same values and the same tie rule, in three passes: log_softmax,
    topk of d + 1 (a (d+1)-th value equal to the d-th means topk had to choose among ties)
    and a row minimum (NaN or -inf there: a non-finite logit, or one so far below the max
    that its log-probability overflows). Only such rows run the spec itself, whose exact tie
    resolution costs a cumsum and nonzero over the whole row."""
    x = x.to(reference.compute_dtype(x.dtype))
    lp = torch.log_softmax(x / temperature if temperature != 1.0 else x, dim=-1)
    vocab = lp.shape[-1]
    vals, idx = lp.topk(min(d + 1, vocab), dim=-1)
    clean = lp.amin(dim=-1) > float("-inf")  # False for NaN rows too
    if d < vocab:
        clean &= vals[:, d] < vals[:, d - 1]
        vals, idx = vals[:, :d], idx[:, :d]
    # order inside the set: value descending, ties to the lower index
    by_id = idx.sort(dim=-1).indices
    idx, vals = idx.gather(-1, by_id), vals.gather(-1, by_id)
    order = vals.sort(dim=-1, descending=True, stable=True).indices
    idx, vals = idx.gather(-1, order), vals.gather(-1, order)
    if not bool(clean.all()):
        slow = (~clean).nonzero().squeeze(1)
        s_idx, s_vals = reference.select_topd(x[slow], d, temperature)
        idx[slow], vals[slow] = s_idx, s_vals
    return idx, vals


def select_topd(logits: torch.Tensor, d: int, temperature: float):
    n = logits.shape[0]
    out_idx = torch.empty(n, d, dtype=torch.int32, device=logits.device)
    out_lp = torch.empty(n, d, dtype=torch.float32, device=logits.device)
    for s, e in _row_chunks(n, logits.shape[1]):
        idx, lp = _select_chunk(logits[s:e], d, temperature)
        out_idx[s:e] = idx
        out_lp[s:e] = lp
    return out_idx, out_lp


def _take_rows(t: torch.Tensor, r: torch.Tensor, s: int, e: int, contiguous: bool) -> torch.Tensor:
    """Rows r = [s, e) as a view when they are a contiguous range, else gathered. Advanced
    indexing, not index_select: on CPU index_select of 150k-wide rows is ~10x slower than a
    copy (it was most of this backend's time)."""
    return t[s:e] if contiguous else t[r]


def _leaf(t: torch.Tensor | None, grad: bool) -> torch.Tensor | None:
    return None if t is None else t.detach().requires_grad_(grad)


def topd_kl(
    logits: torch.Tensor,
    targets: TopDTargets,
    temperature: float,
    grad_scale: float,
    grad_out: torch.Tensor | None,
) -> torch.Tensor:
    """The reference loss (``reference.loss_from_parts``) with its gradient by autograd over
    the few numbers it depends on; the one dense part, d log s / dz_v = q_v (and
    exp(z_v - m) / rest for the bucket tail), is applied with one multiply. Per chunk: one
    exp pass over the logits and one pass writing the gradient, nothing N x V through
    autograd (naive log_softmax + gather + autograd makes two exp passes and more copies)."""
    dtype = reference.compute_dtype(logits.dtype)
    loss = torch.zeros(logits.shape[0], dtype=dtype, device=logits.device)
    dense = bool(targets.row_mask.all())  # no masked row: chunks are plain slices
    rows = targets.row_mask.nonzero().squeeze(1)
    want_grad = grad_out is not None
    if want_grad and not dense:
        # Masked rows get a zero gradient (grad_out may alias logits: zero them first,
        # they are never read again).
        grad_out[~targets.row_mask] = 0
    bucket = targets.tail == "bucket"
    for s, e in _row_chunks(rows.numel(), logits.shape[1]):
        r = rows[s:e]
        t = targets if (dense and s == 0 and e == rows.numel()) else targets.rows(r)
        z = _take_rows(logits, r, s, e, dense).detach().to(dtype)
        if temperature != 1.0:
            z = z / temperature
        m = z.amax(dim=-1, keepdim=True)  # NaN / +inf anywhere make m, hence the loss, NaN
        ex = (z - m).exp_()  # exp(z - m): a new buffer (z may alias grad_out)
        idx = t.indices
        sh_idx = z.gather(-1, idx) - m
        e_idx = ex.gather(-1, idx)
        label = None
        if t.labels is not None:
            label = t.labels.clamp_min(0).unsqueeze(-1)
            sh_label = (z.gather(-1, label) - m).squeeze(-1)
        if bucket:
            # the rest mass is a sum over the entries outside the set (never s - S_set);
            # zeroing them in the buffer is harmless: their gradient is written whole below
            ex.scatter_(-1, idx, 0.0)
            rest = ex.sum(dim=-1)
            sum_exp = rest + (e_idx * t.first).sum(-1)
        else:
            sum_exp = ex.sum(dim=-1)
        with torch.enable_grad():
            parts = {"shifted_idx": _leaf(sh_idx, want_grad), "log_s": _leaf(sum_exp.log(), want_grad)}
            if bucket:
                parts["log_rest"] = _leaf(rest.log(), want_grad)
            if label is not None:
                parts["shifted_label"] = _leaf(sh_label, want_grad)
            rows_loss = reference.loss_from_parts(
                teacher_logprobs=t.logprobs, tail=t.tail,
                labels=None if label is None else t.labels.masked_fill(t.labels < 0, reference.IGNORE_INDEX),
                ce_weight=t.ce_weight, **parts,
            )
            if want_grad:
                # the scale rides on the seed: autograd returns grad_scale * dL/d(part)
                seed = torch.full_like(rows_loss, grad_scale / temperature)
                grads = dict(zip(parts, torch.autograd.grad(rows_loss, list(parts.values()),
                                                            grad_outputs=seed)))
        loss[r] = rows_loss.detach()
        if not want_grad:
            continue
        in_set = (grads["log_s"] / sum_exp).unsqueeze(-1)  # coefficient of exp(z_v - m)
        outside = in_set
        if bucket:
            by_rest = torch.where(rest > 0, grads["log_rest"] / rest, 0.0)
            outside = in_set + by_rest.unsqueeze(-1)
        direct = dense and grad_out.dtype == dtype
        g = torch.mul(ex, outside, out=grad_out[s:e]) if direct else ex.mul_(outside)
        # the teacher positions (and the label) get their whole value: dense part + sparse
        g.scatter_(-1, idx, (e_idx * in_set).to(g.dtype))
        g.scatter_add_(-1, idx, grads["shifted_idx"].to(g.dtype))
        if label is not None:
            g.scatter_add_(-1, label, grads["shifted_label"].unsqueeze(-1).to(g.dtype))
        if not direct:
            if dense:
                grad_out[s:e] = g
            else:
                grad_out[r] = g.to(grad_out.dtype)
    return loss
