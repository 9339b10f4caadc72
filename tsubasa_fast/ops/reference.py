"""Torch reference for top-d selection and the sparse top-d KL: the specification.

Everything here is plain, readable torch that runs in float64 when given float64 (bf16 and
fp16 inputs are computed in float32). The C++ and Triton kernels are tested against these
functions; the "torch" backend runs them chunk by chunk with autograd.

Notation for one position (METHOD.md): z = student_logits / T, q = softmax(z) over the full
vocabulary, S = the teacher's d entries (idx_j, lp_j). Per-position loss:

* tail="renorm": w = softmax(lp) over the d entries,  L = sum_j w_j (log w_j - log q_idx_j)
* tail="none":   w = exp(lp) (raw),                    L = sum_j w_j (lp_j - log q_idx_j)
* tail="bucket": "none" plus a rest-of-vocabulary category on both sides,
  L += P_tail log(P_tail / Q_tail), P_tail = max(1 - sum_j w_j, 0),
  Q_tail = max(sum_{v not in set(idx)} q_v, TAIL_EPS): the student's mass outside the set,
  summed from the exps outside the set (log-sum-exp in log space), never as 1 - Q_set, which
  cancels in float32 once the student is confident on the set.
* ce_weight > 0 adds ce_weight * (-log q_label) where label != IGNORE_INDEX.

log q is computed as (z - max) - log sum exp(z - max), so logits of any finite
magnitude give the right answer while it is representable. Student logits of -inf are
allowed (vocabulary masking): they get q = 0 and a zero gradient; at a teacher index or at
the CE label they make the loss +inf (the caller rejects that).

Duplicate teacher indices are separate entries: their terms (and gradients) add up.
"""

from __future__ import annotations

import math

import torch

TAIL_MODES = ("renorm", "bucket", "none")
TAIL_EPS = 1e-12
IGNORE_INDEX = -100


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def select_topd(logits: torch.Tensor, d: int, temperature: float = 1.0):
    """Top-d of log_softmax(logits / T) over the last dim, sorted descending, ties -> lower index.

    Returns (indices int64, logprobs in the compute dtype). Rows holding a NaN or an infinity
    get NaN log-probabilities, so callers can reject them (the kernels do the same).
    """
    x = logits.to(compute_dtype(logits.dtype))
    row_ok = torch.isfinite(x).all(dim=-1, keepdim=True)
    lp = torch.log_softmax(torch.where(row_ok, x, 0.0) / temperature, dim=-1)
    # Exact tie-breaking without a full sort: everything strictly above the d-th largest value
    # is in; the lowest-index entries equal to it fill the remaining slots.
    thr = lp.topk(d, dim=-1).values[..., -1:]
    above = lp > thr
    equal = lp == thr
    need = d - above.sum(dim=-1, keepdim=True)
    take = above | (equal & (equal.cumsum(dim=-1) <= need))
    idx = take.nonzero()[:, -1].reshape(*lp.shape[:-1], d)  # ascending index within a row
    vals = lp.gather(-1, idx)
    order = torch.sort(vals, dim=-1, descending=True, stable=True).indices
    vals = vals.gather(-1, order).masked_fill(~row_ok, float("nan"))
    return idx.gather(-1, order), vals


def first_occurrence(indices: torch.Tensor) -> torch.Tensor:
    """Boolean mask, True where indices[..., j] does not appear at an earlier j."""
    same = indices.unsqueeze(-1) == indices.unsqueeze(-2)  # [..., j, k]
    earlier = torch.ones(same.shape[-2:], dtype=torch.bool, device=indices.device).tril(-1)
    return ~(same & earlier).any(dim=-1)


def topd_kl(
    student_logits: torch.Tensor,
    teacher_indices: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    *,
    temperature: float = 1.0,
    tail: str = "renorm",
    labels: torch.Tensor | None = None,
    ce_weight: float = 0.0,
) -> torch.Tensor:
    """Per-position loss (shape = leading dims of student_logits); no masking, no reduction.

    Differentiable with respect to student_logits through plain autograd.
    """
    if tail not in TAIL_MODES:
        raise ValueError(f"tail must be one of {TAIL_MODES}, got {tail!r}")
    z = student_logits.to(compute_dtype(student_logits.dtype))
    if temperature != 1.0:
        z = z / temperature
    # log q = (z - m) - log sum exp(z - m): exact for logits of any finite size (torch's
    # log_softmax is the same formula but sums the exps less accurately in float32)
    shifted = z - z.detach().amax(dim=-1, keepdim=True)  # invariant to the shift: no grad
    # shifted <= 0 with a 0 at the max, so the sum is in [1, V]: no overflow, and one exp
    # pass (torch.logsumexp would subtract its own max again)
    log_s = shifted.exp().sum(dim=-1).log()
    idx = teacher_indices.long()
    log_rest = log_rest_mass(shifted, idx) if tail == "bucket" else None
    shifted_label = None
    if ce_weight:
        if labels is None:
            raise ValueError("labels is required when ce_weight > 0")
        shifted_label = shifted.gather(-1, labels.long().clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return loss_from_parts(
        shifted.gather(-1, idx), log_s, teacher_logprobs, tail=tail, log_rest=log_rest,
        shifted_label=shifted_label, labels=labels, ce_weight=ce_weight,
    )


def loss_from_parts(
    shifted_idx: torch.Tensor,
    log_s: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    *,
    tail: str,
    log_rest: torch.Tensor | None = None,
    shifted_label: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    ce_weight: float = 0.0,
) -> torch.Tensor:
    """The loss from the few numbers it depends on: the full row enters only through log s
    (and, for the bucket tail, log of the exps' sum outside the set).

    shifted_idx [..., d] and shifted_label [...] are z - m at the teacher indices and the
    label; log_s [...] = log sum_v exp(z_v - m); log_rest [...] = log sum_{v not in set}
    exp(z_v - m). Differentiable in all of them (the torch backend gets its gradient so).
    """
    log_q = shifted_idx - log_s.unsqueeze(-1)
    lp = teacher_logprobs.to(log_q.dtype)
    if tail == "renorm":
        log_w = lp - torch.logsumexp(lp, dim=-1, keepdim=True)
        loss = (log_w.exp() * (log_w - log_q)).sum(-1)
    else:
        w = lp.exp()
        loss = (w * (lp - log_q)).sum(-1)
        if tail == "bucket":
            p_tail = (1.0 - w.sum(-1)).clamp_min(0.0)
            log_q_tail = (log_rest - log_s).clamp_min(math.log(TAIL_EPS))
            loss = loss + torch.xlogy(p_tail, p_tail) - p_tail * log_q_tail
    if ce_weight:
        use = labels != IGNORE_INDEX
        ce = log_s - shifted_label
        loss = loss + ce_weight * torch.where(use, ce, torch.zeros_like(ce))
    return loss


def log_rest_mass(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """log sum_{v not in set(idx)} exp(x_v) per row: the sum runs over the entries outside
    the set (with x = log q it is log Q_rest). -inf where nothing is left outside the set
    (then with a zero, not NaN, gradient)."""
    in_set = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, idx, True)
    rest = x.masked_fill(in_set, float("-inf"))
    empty = ~torch.isfinite(rest).any(dim=-1)
    out = torch.logsumexp(rest.masked_fill(empty.unsqueeze(-1), 0.0), dim=-1)
    return out.masked_fill(empty, float("-inf"))
