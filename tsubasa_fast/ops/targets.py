"""Teacher top-d targets prepared for the kernels (small [N, d] tensors, cheap to build).

The kernels never see the tail mode: every mode reduces to per-entry weights w_j and a few
per-row constants, so one kernel serves all three (formulas in ``reference.py``). With
z = logits / T, m = max_v z_v, s = sum_v exp(z_v - m) and log q_v = (z_v - m) - log s:

    loss_n = const_n - sum_j w_j log q_idx_j + tail_n + ce_weight * (-log q_label)
    tail_n = -p_tail * max(log Q_rest, log TAIL_EPS)                 (bucket only)
    Q_rest = sum_{v not in set(idx)} q_v, from the exps outside the set (never 1 - Q_set)

Gradient, with base = wsum + ce_weight [label >= 0] + p_tail [tail active] and
ratio = p_tail / Q_rest [tail active] (active: bucket, p_tail > 0, Q_rest > TAIL_EPS):

    dL/dz_v = (base - ratio) q_v                                   v not in set(idx)
    dL/dz_v = base q_v - sum_{j: idx_j = v} w_j                     v in set(idx)
              - ce_weight [v = label]                               (both cases)

The in-set values are computed whole (not as a dense value plus a correction) so the large
ratio never cancels against itself. The gradient with respect to the logits is dL/dz / T.
A label < 0 means "no CE term at this row". Masked rows (row_mask False) have loss 0 and
gradient 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .reference import IGNORE_INDEX, TAIL_MODES, first_occurrence


@dataclass(frozen=True)
class TopDTargets:
    """Teacher entries for N rows, in raw form (for the reference) and kernel form."""

    indices: torch.Tensor  # int64 [N, d]
    logprobs: torch.Tensor  # [N, d] as given, float32 (float64 for float64 students)
    tail: str
    weights: torch.Tensor  # float32 [N, d]
    const: torch.Tensor  # float32 [N]: sum_j w_j log w_j (+ P_tail log P_tail)
    wsum: torch.Tensor  # float32 [N]
    p_tail: torch.Tensor | None  # float32 [N] (bucket only)
    first: torch.Tensor | None  # bool [N, d] (bucket only)
    labels: torch.Tensor | None  # int64 [N]; < 0 means no CE term
    ce_weight: float
    row_mask: torch.Tensor  # bool [N]

    @property
    def d(self) -> int:
        return self.indices.shape[1]

    def rows(self, r: torch.Tensor) -> "TopDTargets":
        """The targets of a subset of rows (r: int64 row numbers)."""

        def pick(t):
            return None if t is None else t.index_select(0, r)

        return TopDTargets(
            indices=pick(self.indices),
            logprobs=pick(self.logprobs),
            tail=self.tail,
            weights=pick(self.weights),
            const=pick(self.const),
            wsum=pick(self.wsum),
            p_tail=pick(self.p_tail),
            first=pick(self.first),
            labels=pick(self.labels),
            ce_weight=self.ce_weight,
            row_mask=pick(self.row_mask),
        )


def prepare_targets(
    indices: torch.Tensor,
    logprobs: torch.Tensor,
    *,
    tail: str,
    row_mask: torch.Tensor,
    labels: torch.Tensor | None = None,
    ce_weight: float = 0.0,
    raw_dtype: torch.dtype = torch.float32,
) -> TopDTargets:
    """Builds kernel-ready targets from validated [N, d] teacher entries.

    The kernel form (weights, const, ...) is float32; ``raw_dtype`` keeps the raw log-probs
    in float64 for a float64 student, so the torch path computes all of it in float64."""
    if tail not in TAIL_MODES:
        raise ValueError(f"tail must be one of {TAIL_MODES}, got {tail!r}")
    idx = indices.long().contiguous()
    lp = logprobs.float().contiguous()
    p_tail = first = None
    if tail == "renorm":
        log_w = lp - torch.logsumexp(lp, dim=-1, keepdim=True)
        w = log_w.exp()
        const = (w * log_w).sum(-1)
    else:
        w = lp.exp()
        const = (w * lp).sum(-1)
        if tail == "bucket":
            p_tail = (1.0 - w.sum(-1)).clamp_min(0.0)
            const = const + torch.xlogy(p_tail, p_tail)
            first = first_occurrence(idx).contiguous()
    ce_labels = None
    if ce_weight and labels is not None:
        ce_labels = labels.long().masked_fill(labels == IGNORE_INDEX, -1).contiguous()
    return TopDTargets(
        indices=idx,
        logprobs=logprobs.to(raw_dtype).contiguous(),
        tail=tail,
        weights=w.contiguous(),
        const=const.contiguous(),
        wsum=w.sum(-1).contiguous(),
        p_tail=p_tail,
        first=first,
        labels=ce_labels,
        ce_weight=float(ce_weight) if ce_labels is not None else 0.0,
        row_mask=row_mask.contiguous(),
    )
