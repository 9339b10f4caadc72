"""Answer-text scores shared by the distillation filters and the evaluation, defined once.

:func:`token_f1` is Mem0 / A-MEM's set-based token F1 (lowercase, every ASCII punctuation
mark to a space, *unique* tokens, F1 of the two sets), the "f1" that eval reports; the
answerability filter of QA synthesis scores its re-answers with the same function.
"""

from __future__ import annotations

import string
from typing import Any

__all__ = ["set_tokens", "token_f1"]

_PUNCT_TO_SPACE = str.maketrans({c: " " for c in string.punctuation})


def set_tokens(text: Any) -> set[str]:
    """Mem0-style tokens: lowercase, punctuation -> spaces, unique words (None -> no tokens)."""
    return set(("" if text is None else str(text)).lower().translate(_PUNCT_TO_SPACE).split())


def token_f1(prediction: Any, reference: Any) -> float:
    """Set-based token F1 (Mem0 / A-MEM); 0.0 when either side has no tokens."""
    pred, ref = set_tokens(prediction), set_tokens(reference)
    common = len(pred & ref)
    if not pred or not ref or not common:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)
