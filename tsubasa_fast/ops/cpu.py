"""The "cpu" backend: binding to the C++ kernels in csrc/ (ATen + OpenMP).

The extension is optional: when it was not built, ``is_available`` says why and the
dispatcher falls back to the torch reference.
"""

from __future__ import annotations

import torch

from .targets import TopDTargets

NAME = "cpu"

try:
    from .. import _C  # noqa: F401  (registers torch.ops.tsubasa_fast.*)

    _OPS = torch.ops.tsubasa_fast
    _IMPORT_ERROR = ""
except ImportError as exc:  # not built: a compiler problem at install time, or no compiler
    _OPS = None
    _IMPORT_ERROR = f"the C++ extension tsubasa_fast._C is not built ({exc})"


def is_available(device: torch.device) -> tuple[bool, str]:
    if _OPS is None:
        return False, _IMPORT_ERROR
    if device.type != "cpu":
        return False, f"the C++ kernels run on CPU tensors only (got a {device.type} tensor)"
    return True, ""


def select_topd(logits: torch.Tensor, d: int, temperature: float):
    return _OPS.topd_select(logits.contiguous(), d, float(temperature))


def topd_kl(
    logits: torch.Tensor,
    targets: TopDTargets,
    temperature: float,
    grad_scale: float,
    grad_out: torch.Tensor | None,
) -> torch.Tensor:
    t = targets
    return _OPS.topd_kl(
        logits.contiguous(), t.indices, t.weights, t.const, t.wsum, t.p_tail, t.first,
        t.labels, float(t.ce_weight), t.row_mask, float(temperature), float(grad_scale), grad_out,
    )
