"""nn.Module wrappers around the functional loss API (options fixed at construction)."""

from __future__ import annotations

import torch
from torch import nn

from .loss import fused_linear_topd_kl_loss, topd_kl_loss


class TopDKLLoss(nn.Module):
    """``topd_kl_loss`` as a module: ``loss = TopDKLLoss(tail="renorm")(logits, idx, lp)``."""

    def __init__(self, *, temperature: float = 1.0, tail: str = "renorm", reduction: str = "mean",
                 ce_weight: float = 0.0, backend: str = "auto"):
        super().__init__()
        self.options = dict(temperature=temperature, tail=tail, reduction=reduction,
                            ce_weight=ce_weight, backend=backend)

    def forward(self, student_logits: torch.Tensor, teacher_indices: torch.Tensor,
                teacher_logprobs: torch.Tensor, *, mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        return topd_kl_loss(student_logits, teacher_indices, teacher_logprobs,
                            mask=mask, labels=labels, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


class FusedLinearTopDKLLoss(TopDKLLoss):
    """``fused_linear_topd_kl_loss`` as a module; takes hidden states and the lm_head weight."""

    def __init__(self, *, chunk_size: int | None = None, **options):
        super().__init__(**options)
        self.options["chunk_size"] = chunk_size

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor, teacher_indices: torch.Tensor,
                teacher_logprobs: torch.Tensor, *, bias: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        return fused_linear_topd_kl_loss(hidden, weight, teacher_indices, teacher_logprobs,
                                         bias=bias, mask=mask, labels=labels, **self.options)
