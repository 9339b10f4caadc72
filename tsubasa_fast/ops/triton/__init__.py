"""The "triton" backend: Triton kernels for CUDA tensors, or CPU tensors under
TRITON_INTERPRET=1 (how CI tests them). Kernels live one per file: topd_select.py, topd_kl.py."""

from __future__ import annotations

import torch

from .common import INTERPRETED
from .topd_kl import topd_kl
from .topd_select import topd_select as select_topd

NAME = "triton"


def is_available(device: torch.device) -> tuple[bool, str]:
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "CUDA is not available"
        if INTERPRETED:
            return False, "TRITON_INTERPRET=1 is set: the kernels run on CPU tensors only"
        return True, ""
    if device.type == "cpu":
        if INTERPRETED:
            return True, ""
        return False, (
            "Triton kernels need a CUDA device; set TRITON_INTERPRET=1 before importing "
            "tsubasa_fast to run them on CPU tensors under the interpreter"
        )
    return False, f"unsupported device type {device.type!r}"


__all__ = ["NAME", "is_available", "select_topd", "topd_kl"]
