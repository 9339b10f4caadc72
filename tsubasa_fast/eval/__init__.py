"""Question-answering evaluation (``tsubasa-fast eval qa``): answer scoring as the field does it.

:mod:`.metrics` holds the scores (Mem0-style set token F1, LoCoMo's own stemmed F1, BLEU-1,
the category-5 adversarial rule) and their aggregation; it imports nothing else of ours.
"""

from .metrics import (
    ADVERSARIAL_PHRASES,
    CATEGORY_NAMES,
    adversarial_correct,
    aggregate_scores,
    bleu1,
    locomo_f1,
    locomo_multi_f1,
    score_answer,
    token_f1,
)

__all__ = [
    "ADVERSARIAL_PHRASES", "CATEGORY_NAMES", "adversarial_correct", "aggregate_scores", "bleu1",
    "locomo_f1", "locomo_multi_f1", "score_answer", "token_f1",
]
