"""The LLM question writer: per observation, short factoid pairs decoded under a JSON-schema grammar.

The base model sees one observation (with its date), the user's name and the observation's
candidate answer spans (:func:`candidate_spans`: dates, names, numbers and the noun phrases
between function words), after one worked example (prompt version ``WRITER_VERSION`` in
:mod:`.prompts`). Its reply is decoded under :func:`writer_schema`: a list of
``{"answer": ..., "question": ...}`` items where ``answer`` is an enum of those spans (so every
answer is copied from the observation: never invented, never cut off mid-word) and
``question`` is a wh-question, written before its answer, that names the user and ends with
"?". What the grammar cannot state (third person, the right kind of answer, the answer not
given away by the question) is left to :mod:`.pair_check`, run afterwards as a filter.

A chat without ``structured_batch`` (a plain ``messages -> str`` callable, e.g. a scripted
fake in tests) has its reply validated against the same schema instead (counted as malformed
when invalid).
"""

from __future__ import annotations

import re
from typing import Sequence

from ..structured import StructuredOutputError, parse_reply
from .prompts import WRITER_VERSION, writer_messages

__all__ = ["WRITER_VERSION", "candidate_spans", "writer_schema", "write_pairs", "strip_date"]

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
QUESTION_WORDS = ("What", "Where", "When", "Who", "Which", "How many", "How")


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


def writer_schema(spans: Sequence[str], user: str, n_pairs: int) -> dict:
    """JSON schema of one reply: 1..n_pairs items, answer one of ``spans``, question naming the user."""
    if not spans:
        raise ValueError("spans: no candidate answer in the observation")
    name = re.escape(_name(user))
    word = r"[A-Za-z0-9'-]+"
    lead = "|".join(QUESTION_WORDS)
    question = rf"^({lead})( {word}){{0,8}} {name}('s)?( {word}){{1,10}}\?$"
    # the question is written first, then its answer picked among the spans: answer-first, SmolLM2-135M
    # picked the first span and wrote a question about something else
    item = {"type": "object", "additionalProperties": False, "required": ["question", "answer"],
            "properties": {"question": {"type": "string", "pattern": question, "maxLength": 160},
                           "answer": {"enum": list(spans)}}}
    return {"type": "array", "minItems": 1, "maxItems": n_pairs, "items": item}


def write_pairs(chat, texts: Sequence[str], user: str, n_pairs: int, batch_size: int = 8,
                stats: dict | None = None) -> list[list[tuple[str, str]]]:
    """Pairs ``[(question, answer), ...]`` for each observation text (``[]`` for one that failed).

    ``stats`` (optional) is updated with ``prompts``, ``no_spans`` (observations with no
    candidate answer), ``malformed_generations`` (replies invalid or cut off) and ``errors``
    (generation raised).
    """
    stats = stats if stats is not None else {}
    for k in ("prompts", "no_spans", "malformed_generations", "errors"):
        stats.setdefault(k, 0)
    name = _name(user)
    jobs = []
    out: list[list[tuple[str, str]]] = [[] for _ in texts]
    for i, text in enumerate(texts):
        spans = candidate_spans(text, user)
        if not spans:
            stats["no_spans"] += 1
            continue
        jobs.append((i, writer_messages(text, name, spans, n_pairs), writer_schema(spans, user, n_pairs)))
    constrained = callable(getattr(chat, "structured_batch", None))
    max_new = 76 * n_pairs + 8  # the longest valid reply (160-char question, 80-char answer) fits
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        stats["prompts"] += len(chunk)
        if constrained:
            try:
                replies = chat.structured_batch([m for _, m, _ in chunk], [s for _, _, s in chunk],
                                                max_new_tokens=max_new)
            except StructuredOutputError:
                replies = []
                for _, m, s in chunk:  # one cut-off row: redo the rows one by one
                    try:
                        replies.append(chat.structured_batch([m], [s], max_new_tokens=max_new)[0])
                    except StructuredOutputError:
                        stats["malformed_generations"] += 1
                        replies.append([])
        else:
            replies = []
            for _, m, s in chunk:
                try:
                    replies.append(parse_reply(chat(m), s))
                except StructuredOutputError:
                    stats["malformed_generations"] += 1
                    replies.append([])
                except Exception:  # a failed generation is counted, never fatal
                    stats["errors"] += 1
                    replies.append([])
        for (i, _, _), items in zip(chunk, replies):
            seen = set()
            for item in items:  # one pair per answer and per question (the first one written)
                keys = ("a:" + item["answer"].lower(), "q:" + " ".join(item["question"].lower().split()))
                if not seen.intersection(keys):
                    seen.update(keys)
                    out[i].append((item["question"], item["answer"]))
    return out
