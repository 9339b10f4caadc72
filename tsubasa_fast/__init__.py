"""tsubasa_fast: personalise an LLM to one user's long history (TSUBASA), fast.

The fused top-d distillation loss is importable on its own::

    from tsubasa_fast import select_topd, topd_kl_loss, fused_linear_topd_kl_loss
"""

from .loss import (
    TopD,
    fused_linear_select_topd,
    fused_linear_topd_kl_loss,
    select_topd,
    topd_kl_loss,
)
from .modules import FusedLinearTopDKLLoss, TopDKLLoss
from .ops import BackendUnavailableError, available_backends

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "FusedLinearTopDKLLoss",
    "TopD",
    "TopDKLLoss",
    "available_backends",
    "fused_linear_select_topd",
    "fused_linear_topd_kl_loss",
    "select_topd",
    "topd_kl_loss",
]
