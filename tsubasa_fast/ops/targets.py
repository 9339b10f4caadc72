"""Teacher top-d targets prepared for the kernels (small [N, d] tensors, cheap to build).

The kernels never see the tail mode: every mode reduces to per-entry weights w_j and a few
per-row constants, so one kernel serves all three (formulas in ``reference.py``):

    loss_n = const_n - sum_j w_j (z_idx_j - lse) + tail_n + ce_weight * (lse - z_label)
    tail_n = -p_tail * log(max(1 - Q_S, TAIL_EPS)),  Q_S = sum_{j: first_j} q_idx_j  (bucket only)
    dL/dz_v = (wsum + ce + tail_coef) * q_v - sum_{j: idx_j = v} w_j
              + [bucket, Q_tail > TAIL_EPS] (p_tail / Q_tail) * q_v * [v in set(idx)]
              - ce_weight * [v = label]
    tail_coef = -(p_tail / Q_tail) * Q_S when the tail is active, else 0

where z = logits / T and the gradient with respect to the logits is dL/dz / T. A label < 0
means "no CE term at this row". Masked rows (row_mask False) have loss 0 and gradient 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .reference import IGNORE_INDEX, TAIL_MODES, first_occurrence


@dataclass(frozen=True)
class TopDTargets:
    """Teacher entries for N rows, in raw form (for the reference) and kernel form."""

    indices: torch.Tensor  # int64 [N, d]
    logprobs: torch.Tensor  # float32 [N, d], as given by the user
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
) -> TopDTargets:
    """Builds kernel-ready targets from validated [N, d] teacher entries."""
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
        logprobs=lp,
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
