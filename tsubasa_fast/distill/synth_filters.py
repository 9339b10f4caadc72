"""The synthesis filters' text tests: answer normalisation, the answer's overlap with its
context, the re-ask's token F1 against the pair's answer, questions about when a conversation
took place, the normalised question that detects duplicates (used by :func:`.synth.synthesize`)."""

from __future__ import annotations

import re
import string

from ..text import token_f1

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation + "\u2018\u2019\u201c\u201d")


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = str(text).lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


_CONVERSATION = re.compile(
    r"\b(conversations?|chats?|sessions?|dialogues?|discussions?|this talk|the talk|their talk|"
    r"(talk|talked|talking|speak|spoke|spoken|chat|chatted|chatting|message|messaged)\s+(to|with))\b", re.I)
_WHEN = re.compile(r"\b(when|what (date|day|time|month|year)|which (date|day|month|year)|how long ago)\b", re.I)


FUNCTION_WORDS = frozenset(
    "is are was were be been being to of in on at for with by from and or but her his their its "
    "she he they it i you we my our your this that these those as into about".split())


def context_overlap(answer: str, context: str, extend_short: bool = False) -> float:
    """Share of the answer's content words that occur in the context (prefix match on the
    first 5 letters, so "painting" finds "paint"); 1.0 for an answer of function words only.
    ``extend_short``: a word under 5 letters is also found at the start of a longer context
    word ("face" in "faced")."""
    words = [w for w in normalize_answer(answer).split() if w not in FUNCTION_WORDS]
    if not words:
        return 1.0
    ctx = normalize_answer(context).split()
    stems = {w[:5] for w in ctx}
    found = sum(1 for w in words if w in ctx or w[:5] in stems
                or (extend_short and len(w) < 5 and any(c.startswith(w) for c in ctx)))
    return found / len(words)


def answer_f1(reply: str, answer: str, question: str, strip_question_words: bool = True) -> float:
    """Token F1 of a re-answer against the pair's answer.

    With ``strip_question_words`` (ours) it is the larger of the plain F1 and the F1 after
    removing, from both sides, the words that also occur in the question, so a reply that
    restates the question ("Caroline's favorite hobby is music") is scored on what it adds.
    """
    plain = token_f1(reply, answer)
    if not strip_question_words:
        return plain
    qwords = set(normalize_answer(question).split())
    r = " ".join(w for w in normalize_answer(reply).split() if w not in qwords)
    a = " ".join(w for w in normalize_answer(answer).split() if w not in qwords)
    return max(plain, token_f1(r, a)) if r and a else plain


def is_conversation_time_question(question: str) -> bool:
    """True for uninformative questions about when a conversation / chat / session happened."""
    return bool(_WHEN.search(question) and _CONVERSATION.search(question))


def normalize_question(question: str) -> str:
    """The duplicate key of a question."""
    return normalize_answer(question)


# ----------------------------------------------------------------------------- parsing
_PREAMBLE = re.compile(r"^\s*(the\s+)?(short\s+)?(answer|a)\s*(to (the|this) question)?\s*(is|:)\s*:?\s*", re.I)


def clean_reply_answer(reply: str) -> str:
    """The answer in a re-ask reply: first non-empty line, common preambles removed."""
    line = next((ln.strip() for ln in str(reply).splitlines() if ln.strip()), "")
    line = _PREAMBLE.sub("", line)
    return line.strip().strip('"').strip()
