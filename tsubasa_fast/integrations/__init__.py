"""Integrations with the libraries users already train with (transformers, peft, accelerate).

``apply_topd_kl(model)`` makes a transformers causal LM's forward return the fused top-d KL
when given the teacher's cached top-d entries; ``remove_topd_kl(model)`` undoes it.
``TopDDistillationTrainer`` is a ``transformers.Trainer`` on that loss (``TopDKLMixin`` gives
the same ``compute_loss`` to any Trainer subclass, e.g. TRL's), fed by ``TopDDataCollator``.
"""

from .hf import SUPPORTED_MODEL_TYPES, apply_topd_kl, remove_topd_kl, topd_kl_options
from .trainer import (
    CHECKPOINT_COMPLETE,
    ProgressBarCallback,
    TopDDataCollator,
    TopDDistillationTrainer,
    TopDKLMixin,
    last_complete_checkpoint,
    zero_weight_examples,
)

__all__ = ["CHECKPOINT_COMPLETE", "SUPPORTED_MODEL_TYPES", "ProgressBarCallback", "TopDDataCollator",
           "TopDDistillationTrainer", "TopDKLMixin", "apply_topd_kl", "last_complete_checkpoint",
           "remove_topd_kl", "topd_kl_options", "zero_weight_examples"]
