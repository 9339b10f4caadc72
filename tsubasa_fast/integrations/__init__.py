"""Integrations with the libraries users already train with (transformers, peft).

``apply_topd_kl(model)`` makes a transformers causal LM's forward return the fused top-d KL
when given the teacher's cached top-d entries; ``remove_topd_kl(model)`` undoes it.
"""

from .hf import SUPPORTED_MODEL_TYPES, apply_topd_kl, remove_topd_kl

__all__ = ["SUPPORTED_MODEL_TYPES", "apply_topd_kl", "remove_topd_kl"]
