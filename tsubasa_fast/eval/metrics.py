"""Answer scores for LoCoMo-style QA, computed the way published numbers are.

- :func:`token_f1` ("f1"): Mem0 / A-MEM's set-based token F1: lowercase, punctuation to spaces,
  *unique* tokens, F1 of the two sets. (Their code only drops ``. , ! ?``; we drop every ASCII
  punctuation mark so that ``"(7 May 2023)"`` matches ``"7 May 2023"``.)
- :func:`locomo_f1` ("f1_stemmed"): the dataset's own F1 (snap-research/locomo
  ``task_eval/evaluation.py``): drop commas, lowercase, drop punctuation, drop the words
  a/an/the *and "and"* (their code removes "and" too), Porter-stem (nltk's ``PorterStemmer``,
  as they do), F1 over token *counts*. Category 1 (multi-hop) uses :func:`locomo_multi_f1`
  (comma-separated sub-answers, each gold part scored against its best predicted part, mean);
  category 3 scores against the gold answer's first ``;``-separated part.
- :func:`bleu1` ("bleu1"): sentence BLEU with weights (1, 0, 0, 0) and nltk's
  ``SmoothingFunction().method1``, as Mem0 reports it; with one reference this is exactly
  ``BP * p1`` (clipped unigram precision times the brevity penalty; 0 when no unigram
  matches, since smoothing never lifts unigrams). Tokens: lowercase text, nltk's word
  tokenizer applied per sentence (sentences split on ``. ! ?`` followed by a space, in place
  of punkt, whose data is not shipped in the wheel).
- Category 5 (adversarial): no gold answer; :func:`adversarial_correct` counts the prediction
  correct when it says the information is not there. The default phrases are the dataset
  code's (``"no information available"``, ``"not mentioned"``), so prompts should ask for
  "No information available"; :data:`LENIENT_ADVERSARIAL_PHRASES` accepts more wordings.

Answers may be ints in LoCoMo, so every input is coerced with ``str`` (None -> "").
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from functools import lru_cache
from typing import Any, Iterable, Mapping

from ..core import CATEGORY_NAMES
from ..text import set_tokens, token_f1  # noqa: F401 (defined once, in text)

ANSWERABLE_CATEGORIES = (1, 2, 3, 4)
ADVERSARIAL_PHRASES = ("no information available", "not mentioned")
LENIENT_ADVERSARIAL_PHRASES = ADVERSARIAL_PHRASES + (
    "not available", "no information", "not specified", "not stated", "does not mention",
    "doesn't mention", "never mentioned", "not in the conversation", "cannot be determined",
    "can't be determined", "not enough information", "i don't know", "i do not know",
)
SCORE_KEYS = ("f1", "f1_stemmed", "bleu1")

_PUNCT_DROP = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the|and)\b")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _nltk(what: str):
    try:
        import nltk  # noqa: F401
    except ImportError:
        raise ImportError(f"{what} needs nltk: pip install nltk (it is in the 'distill' extra)") from None
    return nltk


# ------------------------------------------------------------------ LoCoMo's stemmed F1
def locomo_normalize(text: Any) -> str:
    """LoCoMo's normalize_answer: drop commas, lowercase, drop punctuation, a/an/the/and, squeeze spaces."""
    s = _text(text).replace(",", "").lower().translate(_PUNCT_DROP)
    return " ".join(_ARTICLES.sub(" ", s).split())


@lru_cache(maxsize=1)
def _porter():
    _nltk("the stemmed F1")
    from nltk.stem import PorterStemmer
    return PorterStemmer()


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """Porter stem (nltk's PorterStemmer in its default mode, as LoCoMo uses it)."""
    return _porter().stem(word)


def stemmed_tokens(text: Any) -> list[str]:
    return [stem(w) for w in locomo_normalize(text).split()]


def locomo_f1(prediction: Any, reference: Any) -> float:
    """The dataset's token F1: stemmed tokens, multiset overlap; 0.0 when nothing matches."""
    pred, ref = stemmed_tokens(prediction), stemmed_tokens(reference)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    p, r = same / len(pred), same / len(ref)
    return 2 * p * r / (p + r)


def locomo_multi_f1(prediction: Any, reference: Any) -> float:
    """Category 1: split both on commas; mean over gold parts of the best F1 against a predicted part."""
    preds = [p.strip() for p in _text(prediction).split(",")]
    golds = [g.strip() for g in _text(reference).split(",")]
    return sum(max(locomo_f1(p, g) for p in preds) for g in golds) / len(golds)


# ------------------------------------------------------------------ BLEU-1
@lru_cache(maxsize=1)
def _word_tokenizer():
    _nltk("BLEU-1")
    from nltk.tokenize import NLTKWordTokenizer
    return NLTKWordTokenizer()


def bleu_tokens(text: Any) -> list[str]:
    """Lowercased nltk word tokens (word_tokenize without its punkt sentence splitter)."""
    tok = _word_tokenizer()
    return [t for sent in _SENTENCE_END.split(_text(text).lower().strip()) if sent for t in tok.tokenize(sent)]


def bleu1(prediction: Any, reference: Any) -> float:
    """Sentence BLEU-1 with smoothing method1 against one reference: ``BP * p1``."""
    hyp, ref = bleu_tokens(prediction), bleu_tokens(reference)
    c, r = len(hyp), len(ref)
    matches = sum((Counter(hyp) & Counter(ref)).values())
    if c == 0 or matches == 0:
        return 0.0
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return bp * matches / c


# ------------------------------------------------------------------ category 5 and a whole answer
def adversarial_correct(prediction: Any, phrases: Iterable[str] = ADVERSARIAL_PHRASES) -> bool:
    """Category 5: correct iff the prediction contains one of ``phrases`` (case-insensitive)."""
    low = _text(prediction).lower()
    return any(p in low for p in phrases)


def score_answer(prediction: Any, answer: Any, category: int, *,
                 adversarial_phrases: Iterable[str] = ADVERSARIAL_PHRASES) -> dict[str, float]:
    """``{"f1", "f1_stemmed", "bleu1"}`` in [0, 1] for one question, following the conventions above.

    Category 5 gives the adversarial rule's 1.0 / 0.0 under every key. f1 and bleu1 use the
    whole gold answer (as Mem0 does); f1_stemmed follows the dataset code's per-category rules.
    """
    if category not in CATEGORY_NAMES:
        raise ValueError(f"category: expected 1-5 ({CATEGORY_NAMES}), got {category!r}")
    if category == 5:
        v = 1.0 if adversarial_correct(prediction, adversarial_phrases) else 0.0
        return {k: v for k in SCORE_KEYS}
    answer = _text(answer)
    if category == 1:
        stemmed = locomo_multi_f1(prediction, answer)
    else:
        stemmed = locomo_f1(prediction, answer.split(";")[0].strip() if category == 3 else answer)
    return {"f1": token_f1(prediction, answer), "f1_stemmed": stemmed, "bleu1": bleu1(prediction, answer)}


def aggregate_scores(rows: Iterable[Mapping[str, Any]],
                     overall_categories: Iterable[int] = ANSWERABLE_CATEGORIES) -> dict:
    """Means in percent, overall (categories 1-4 by default) and per category.

    ``rows``: dicts with ``category`` and the :data:`SCORE_KEYS`, optionally ``judge`` (1/0, or
    None when not judged). Returns ``{"questions": n, "overall": {"f1", "f1_stemmed", "bleu1",
    "judge"}, "by_category": {"<n>": {"questions": n, ...same keys}}, "category_names": {...}}``;
    a mean over no rows is None, and so is ``judge`` when no row has one.
    """
    rows = list(rows)
    wanted = set(overall_categories)

    def means(sel: list[Mapping[str, Any]]) -> dict:
        out = {k: (100.0 * sum(float(r[k]) for r in sel) / len(sel) if sel else None) for k in SCORE_KEYS}
        judged = [float(r["judge"]) for r in sel if r.get("judge") is not None]
        out["judge"] = 100.0 * sum(judged) / len(judged) if judged else None
        return out

    overall = [r for r in rows if r["category"] in wanted]
    by_cat = {}
    for c in sorted({int(r["category"]) for r in rows}):
        sel = [r for r in rows if r["category"] == c]
        by_cat[str(c)] = {"questions": len(sel), **means(sel)}
    return {"questions": len(overall), "overall": means(overall), "by_category": by_cat,
            "category_names": {str(k): v for k, v in CATEGORY_NAMES.items()}}
