"""tsubasa_fast: personalise an LLM to one user's long history (TSUBASA), fast.

The fused top-d distillation loss is importable on its own::

    from tsubasa_fast import select_topd, topd_kl_loss, fused_linear_topd_kl_loss

A Mem0-shaped memory (README, "Memory for Mem0 users")::

    from tsubasa_fast import Memory
    m = Memory("mem/")
    m.add([{"role": "user", "content": "I adopted a dog named Rex."}], user_id="ann", infer=False)
    m.search("Does Ann have pets?", user_id="ann")

The names below are loaded on first use, so ``import tsubasa_fast.memory`` (or any other
sub-package) does not import torch and the loss kernels unless it needs them.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module (relative to this package) that defines it
_EXPORTS = {
    "TopD": ".loss",
    "fused_linear_select_topd": ".loss",
    "fused_linear_topd_kl_loss": ".loss",
    "select_topd": ".loss",
    "topd_kl_loss": ".loss",
    "FusedLinearTopDKLLoss": ".modules",
    "TopDKLLoss": ".modules",
    "BackendUnavailableError": ".ops",
    "available_backends": ".ops",
    "Memory": ".memory.api",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tsubasa_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])
