"""The LLM question writer: answer first, then its question under a JSON-schema grammar, then a round trip.

For each observation the program picks the answers (:func:`answer_spans`: names, numbers and
dates of the text, then noun runs, each a span copied from it, so no answer is invented or
cut off) and the base model writes one question per answer after worked examples (prompt
version ``WRITER_VERSION`` in :mod:`.prompts`), decoded under :func:`question_schema`: a
question that opens with a wh-word fitting the answer's kind (When for a date, How many for
a number, ...), names the user and ends with "?". The model then answers its own question
from the observation, choosing among all its spans (:func:`pick_schema`); a pair whose pick is
not its answer is dropped. Question first (writer 1), SmolLM2-135M copied its example's stem
into almost every question and then picked an unrelated span. What the grammar cannot state
(third person, the answer not given away) is left to :mod:`.pair_check`, run afterwards.

A chat without ``structured_batch`` (a plain ``messages -> str`` callable, e.g. a scripted
fake in tests) has its replies validated against the same schemas instead (counted as
malformed when invalid).
"""

from __future__ import annotations

import re
from typing import Sequence

from ..structured import StructuredOutputError, parse_reply
from .prompts import WRITER_VERSION, pick_messages, question_messages

__all__ = ["WRITER_VERSION", "candidate_spans", "answer_spans", "span_kind", "question_schema", "pick_schema",
           "write_pairs", "strip_date"]

_DATE_PREFIX = re.compile(r"^\s*\[([^\]]+)\]\s*")
_MONTH = ("January|February|March|April|May|June|July|August|September|October|November|December")
_DATE = re.compile(rf"\b(?:\d{{1,2}} (?:{_MONTH}) \d{{4}}|(?:{_MONTH}) \d{{4}}|(?:{_MONTH}) \d{{1,2}}, \d{{4}}|"
                   rf"\d{{1,2}} (?:{_MONTH})|(?:19|20)\d\d)\b")
# words that end a span: function words, auxiliaries, light verbs and pronouns
_STOP = frozenset("""
a an the and or but nor so yet if then than that this these those there here what which who whom whose when
where why how is are was were be been being am has have had do does did will would can could should shall
may might must to of in on at for with by from into onto about as over under after before during since
until up down out off again also just still very really too not no yes all any some each every both either
neither other another such own same her his their its she he they it them him hers theirs itself herself
himself themselves i me my we us our you your mine said says told tells mentioned shared talked talks
got gets get went goes go going made makes make now recently currently usually often always never
ever while because although though whether like likes liked feel feels felt think thinks thought
want wants wanted lot lots thing things something anything everything way
already even only maybe probably pretty quite much more most less many few
oh yeah yes wow hey hi ok okay well great good cool lol thanks sure anyway also last next ago
day days week weeks month months year years today yesterday tomorrow tonight morning
""".split())
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’.-]*[A-Za-z0-9]|[A-Za-z0-9]")
MAX_SPAN_WORDS = 5
MAX_SPANS = 24


def strip_date(text: str) -> tuple[str | None, str]:
    """``("5 March 2023", "Maya ...")`` for a memory text with a date prefix; ``(None, text)`` without."""
    m = _DATE_PREFIX.match(text)
    return (m.group(1), text[m.end():]) if m else (None, text)


def candidate_spans(text: str, user: str, max_spans: int = MAX_SPANS) -> list[str]:
    """The short spans of an observation that can answer a question about it, in text order.

    Dates (the prefix date first), then maximal runs of words between function words
    ("ginger cat", "Mrs Okafor", "Harbour Health"), at most MAX_SPAN_WORDS long, without
    the user's own name, stripped of trailing possessives; duplicates removed.
    """
    date, body = strip_date(text)
    names = {w.lower() for w in re.findall(r"[A-Za-z]+", user.rpartition(":")[2])}
    spans: list[str] = []
    if date:
        spans.append(date)
    spans += [m.group(0) for m in _DATE.finditer(body)]
    for chunk in re.split(r"[,;:!?()\"]|\.(?=\s|$)|\s[-–]\s", _DATE.sub(",", body)):
        run: list[str] = []
        for tok in _TOKEN.findall(chunk) + [""]:
            low = tok.lower().replace("’", "'")
            base = low[:-2] if low.endswith("'s") else low
            if tok and low not in _STOP and base not in _STOP and base not in names:
                if run or not (low.endswith("ed") and len(low) > 4):  # no span opens on a past verb
                    run.append(tok)  # "Chopin's Nocturne": a possessive continues the span
                continue
            if run:
                last = run[-1].replace("’", "'")
                run[-1] = last[:-2] if last.lower().endswith("'s") else last
                if len(run) <= MAX_SPAN_WORDS:
                    spans.append(" ".join(run))
            run = []
    out: list[str] = []
    seen: set[str] = set()
    for s in spans:
        s = s.strip(" .'-")
        key = s.lower()
        if s and key not in seen and not re.fullmatch(r"[\W_]+", s) and len(s) <= 80 and '"' not in s \
                and "\\" not in s:
            seen.add(key)
            out.append(s)
    return out[:max_spans]


def _name(user: str) -> str:
    return user.rpartition(":")[2].strip() or user


def span_kind(span: str, text: str) -> str:
    """What kind of thing ``span`` is in ``text``: "date", "number", "name" or "thing".

    A name is a span with a capital letter that does not merely open a sentence (so it is a
    proper noun: "Harbour Health", "Lena"); the kind picks the question's wh-word.
    """
    words = span.split()
    if _DATE.fullmatch(span) or (words and all(w.lower().rstrip("s") in _TIME_NAMES for w in words)):
        return "date"
    if any(ch.isdigit() for ch in span) or any(w.lower() in _NUMBER_WORDS for w in words):
        return "number"
    _, body = strip_date(text)
    capital = [i for i, w in enumerate(words) if w[:1].isupper()]
    if capital and (capital != [0] or len(words) > 1 or
                    re.search(rf"(?:[a-z0-9,] ){re.escape(span)}\b", body)):
        return "name"
    return "thing"


_TIME_NAMES = frozenset(("monday tuesday wednesday thursday friday saturday sunday weekend evening morning "
                         "afternoon night christmas easter summer winter spring autumn " + _MONTH.replace("|", " ")
                         ).lower().split())
_NUMBER_WORDS = frozenset("two three four five six seven eight nine ten eleven twelve twenty thirty forty "
                          "fifty hundred thousand dozen".split())
# the wh-words a question about each kind of span may open with
STEMS = {"date": ("When",), "number": ("How many", "How much", "How long", "How far", "What"),
         "name": ("Who", "Where", "What", "Which"), "thing": ("What", "Where", "Which", "How", "Who")}
_KIND_ORDER = {"name": 0, "number": 1, "date": 2, "thing": 3}


def answer_spans(text: str, user: str, n: int, spans: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """Up to ``n`` ``(span, kind)`` answers to ask about, most specific first.

    Names, then numbers, then dates written in the text, then noun runs of at least two words.
    The prefix date is never asked: it is when the user said it, not when it happened, and the
    round trip cannot catch it (it is often the only date of its text; writer 2 first asked it,
    and 12 of 20 kept pairs read "When did Maya <anything>? -> <that day>"). Single common
    words ("fine", "visiting") are not asked either. ``spans``: the text's
    :func:`candidate_spans`, when the caller has them already.
    """
    date, _ = strip_date(text)
    spans = candidate_spans(text, user) if spans is None else spans
    picked = [(s, k) for s, k in ((s, span_kind(s, text)) for s in spans)
              if s != date and not (k == "thing" and len(s.split()) < 2)]
    picked.sort(key=lambda sk: _KIND_ORDER[sk[1]])
    return picked[:n]


def question_schema(kind: str, user: str) -> dict:
    """JSON schema of one written question: opens with a wh-word of ``kind``, names the user, ends with "?"."""
    if kind not in STEMS:
        raise ValueError(f"kind must be one of {tuple(STEMS)}, got {kind!r}")
    name = re.escape(_name(user))
    word = r"[A-Za-z0-9'-]+"
    lead = "|".join(STEMS[kind])
    pattern = rf"^({lead})( {word}){{0,8}} {name}('s)?( {word}){{1,10}}\?$"
    return {"type": "object", "additionalProperties": False, "required": ["question"],
            "properties": {"question": {"type": "string", "pattern": pattern, "maxLength": 160}}}


def pick_schema(spans: Sequence[str]) -> dict:
    """JSON schema of the round-trip check's reply: one of the observation's spans."""
    if not spans:
        raise ValueError("spans: no candidate answer in the observation")
    return {"type": "object", "additionalProperties": False, "required": ["answer"],
            "properties": {"answer": {"enum": list(spans)}}}


def _run(chat, jobs: list, max_new: int, batch_size: int, stats: dict) -> list:
    """The chat's replies to ``[(messages, schema), ...]``: under the grammar when the chat has
    ``structured_batch``, else validated text; ``None`` for a reply that failed (counted)."""
    out: list = []
    constrained = callable(getattr(chat, "structured_batch", None))
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        if constrained:
            try:
                out += chat.structured_batch([m for m, _ in chunk], [s for _, s in chunk], max_new_tokens=max_new)
                continue
            except StructuredOutputError:
                pass  # one cut-off row: redo the rows one by one
        for m, s in chunk:
            try:
                out.append(chat.structured_batch([m], [s], max_new_tokens=max_new)[0] if constrained
                           else parse_reply(chat(m), s))
            except StructuredOutputError:
                stats["malformed_generations"] += 1
                out.append(None)
            except Exception:  # a failed generation is counted, never fatal
                stats["errors"] += 1
                out.append(None)
    return out


def write_pairs(chat, texts: Sequence[str], user: str, n_pairs: int, batch_size: int = 8,
                stats: dict | None = None, round_trip: bool = True) -> list[list[tuple[str, str]]]:
    """Pairs ``[(question, answer), ...]`` for each observation text (``[]`` for one with none).

    Answer first: the answers are picked by :func:`answer_spans` (up to ``n_pairs`` per
    observation), and the model writes one question per answer under :func:`question_schema`
    (its wh-word fits the answer's kind). With ``round_trip`` the model then answers each
    question from the observation, picking among all its candidate spans
    (:func:`pick_schema`); a pair whose pick is not its answer is dropped: the question does
    not ask for what it claims to.

    ``stats`` (optional) is updated with ``prompts``, ``no_spans`` (observations with nothing
    to ask), ``malformed_generations`` (replies invalid or cut off), ``errors`` (generation
    raised), ``round_trip_checked``, ``round_trip_failed`` and ``duplicate_questions`` (a question
    already written for another answer: dropped).
    """
    stats = stats if stats is not None else {}
    for k in ("prompts", "no_spans", "malformed_generations", "errors", "round_trip_checked",
              "round_trip_failed", "duplicate_questions"):
        stats.setdefault(k, 0)
    name = _name(user)
    asks = []  # (text index, answer span, its kind, all the text's spans)
    for i, text in enumerate(texts):
        spans = candidate_spans(text, user)
        answers = answer_spans(text, user, n_pairs, spans)
        if not answers:
            stats["no_spans"] += 1
            continue
        asks += [(i, span, kind, spans) for span, kind in answers]
    stats["prompts"] += len(asks)
    replies = _run(chat, [(question_messages(texts[i], name, span), question_schema(kind, user))
                          for i, span, kind, _ in asks], 60, batch_size, stats)
    written = [(i, r["question"], span, spans) for (i, span, _, spans), r in zip(asks, replies) if r is not None]
    if round_trip and written:
        picks = _run(chat, [(pick_messages(texts[i], q, spans), pick_schema(spans)) for i, q, _, spans in written],
                     40, batch_size, stats)
        stats["round_trip_checked"] += len(written)
        kept = []
        for w, p in zip(written, picks):
            if p is not None and p["answer"].lower() == w[2].lower():
                kept.append(w)
            else:
                stats["round_trip_failed"] += 1
        written = kept
    out: list[list[tuple[str, str]]] = [[] for _ in texts]
    seen: set[str] = set()
    for i, q, span, _ in written:
        key = " ".join(q.lower().split())
        if key in seen:  # one answer per question (a question asked twice teaches a coin toss)
            stats["duplicate_questions"] += 1
            continue
        seen.add(key)
        out[i].append((q, span))
    return out
