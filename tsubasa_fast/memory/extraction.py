"""LLM observation extraction: one session's utterances -> standalone, dated observations.

Per (session, target speaker) the LLM gets the session date and the numbered utterances (after
one worked example) and answers a JSON list ``[{"dia_id": ..., "text": ...}, ...]``. The reply
is generated under the JSON schema of :func:`extraction_schema` (tsubasa_fast.structured), so
it is valid by construction: 3-5 items (fewer if the speaker has fewer turns), each ``dia_id`` one of the speaker's own turns, each
``text`` one sentence of at most 140 characters that starts with the speaker's name (no id lists, no
fragments, no first person). Relative dates the model leaves in ("yesterday", "last year") are
resolved against the session date; repeated texts are dropped (counted).

A chat that cannot be constrained (a plain ``messages -> str`` callable, e.g. a scripted fake)
is validated against the same schema; an invalid reply is retried ``retries`` times, then the
session is skipped with a counted warning. Every outcome is counted in ``stats``.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import logging
import re
from dataclasses import dataclass
from typing import Callable

from ..structured import StructuredOutputError, parse_reply
from ..core import Session

log = logging.getLogger(__name__)

PROMPT_VERSION = 2
_SYSTEM = (
    "You extract facts about one person from a conversation. For each fact give the id of the turn "
    "it comes from and one short standalone sentence that starts with the person's name and says "
    "what happened, where and when, with absolute dates (the session date is given). Facts only: "
    "no remarks about tone or feelings of the conversation. Answer with a JSON list.")

# One worked example (invented, not from any dataset), shown as a previous exchange.
_EXAMPLE_USER = (
    "Session date: 3 March 2022.\nConversation:\n"
    "[D4:1] Priya: Hi Tom! Guess what, I adopted a cat last week. Her name is Miso.\n"
    "[D4:2] Tom: Congrats! How is she settling in?\n"
    "[D4:3] Priya: Great. I also signed up for a pottery class in Leeds, it starts tomorrow.\n"
    "[D4:4] Tom: Cool, I am still busy with my bakery.\n"
    "[D4:5] Priya: Remember my sister Asha? She is moving in with me in May.\n\n"
    "List the facts about Priya as JSON.")
_EXAMPLE_REPLY = (
    '[{"dia_id": "D4:1", "text": "Priya adopted a cat named Miso in the week before 3 March 2022."}, '
    '{"dia_id": "D4:3", "text": "Priya signed up for a pottery class in Leeds that starts on 4 March 2022."}, '
    '{"dia_id": "D4:5", "text": "Priya\'s sister Asha is moving in with Priya in May 2022."}]')
MAX_ITEMS = 5
MIN_ITEMS = 3  # left to itself SmolLM2-135M closes the list after one fact
MIN_CHARS, MAX_CHARS = 12, 140
REPETITION_PENALTY = 1.2  # a 135M model otherwise repeats its first sentence


@dataclass(frozen=True)
class Extracted:
    text: str
    dia_ids: tuple[str, ...]


def _fmt(d: _dt.date) -> str:
    return f"{d.day} {calendar.month_name[d.month]} {d.year}"


_REL = [
    (re.compile(r"\byesterday\b", re.I), lambda d: f"on {_fmt(d - _dt.timedelta(days=1))}"),
    (re.compile(r"\btoday\b|\bthis morning\b|\btonight\b", re.I), lambda d: f"on {_fmt(d)}"),
    (re.compile(r"\btomorrow\b", re.I), lambda d: f"on {_fmt(d + _dt.timedelta(days=1))}"),
    (re.compile(r"\blast week\b", re.I), lambda d: f"in the week before {_fmt(d)}"),
    (re.compile(r"\bnext week\b", re.I), lambda d: f"in the week after {_fmt(d)}"),
    (re.compile(r"\blast month\b", re.I),
     lambda d: f"in {calendar.month_name[(d.month - 2) % 12 + 1]} {d.year - (d.month == 1)}"),
    (re.compile(r"\bnext month\b", re.I),
     lambda d: f"in {calendar.month_name[d.month % 12 + 1]} {d.year + (d.month == 12)}"),
    (re.compile(r"\blast year\b", re.I), lambda d: f"in {d.year - 1}"),
    (re.compile(r"\bnext year\b", re.I), lambda d: f"in {d.year + 1}"),
    (re.compile(r"\bthis year\b", re.I), lambda d: f"in {d.year}"),
]


def resolve_relative_dates(text: str, date: _dt.date | _dt.datetime) -> str:
    """Replace common relative date phrases by absolute ones (``last year`` -> ``in 2022``)."""
    d = date.date() if isinstance(date, _dt.datetime) else date
    for pattern, repl in _REL:
        text = pattern.sub(lambda _m, r=repl: r(d), text)
    return text


def build_prompt(session: Session, speaker: str) -> list[dict]:
    lines = [f"[{t.dia_id}] {t.speaker}: {t.full_text()}" for t in session.turns]
    user = (f"Session date: {session.date_str}.\nConversation:\n" + "\n".join(lines) +
            f"\n\nList the facts about {speaker} as JSON.")
    return [{"role": "system", "content": _SYSTEM},
            {"role": "user", "content": _EXAMPLE_USER}, {"role": "assistant", "content": _EXAMPLE_REPLY},
            {"role": "user", "content": user}]


def extraction_schema(session: Session, speaker: str, max_items: int = MAX_ITEMS, min_items: int = MIN_ITEMS) -> dict:
    """JSON schema of a reply about ``speaker``: min_items..max_items facts, each tied to one of their turns.

    (min_items is capped by the speaker's number of turns.)

    ``text`` must start with the speaker's name (optionally possessive) and hold no quote,
    backslash or newline: a standalone third-person sentence, never an id list or a fragment.
    """
    ids = [t.dia_id for t in session.turns if t.speaker == speaker]
    if not ids:
        raise ValueError(f"speaker {speaker!r} has no turn in session {session.number}")
    # body lengths such that name + "'s " + body + "." stays within MIN_CHARS..MAX_CHARS
    lo, hi = max(1, MIN_CHARS - len(speaker) - 2), MAX_CHARS - len(speaker) - 4
    pattern = "^" + re.escape(speaker) + "('s)? " + '[^."\\\\\\n]' + f"{{{lo},{hi}}}" + "[.]$"
    text = {"type": "string", "pattern": pattern}
    item = {"type": "object", "additionalProperties": False, "required": ["dia_id", "text"],
            "properties": {"dia_id": {"enum": ids}, "text": text}}
    return {"type": "array", "minItems": max(1, min(min_items, len(ids), max_items)), "maxItems": max_items,
            "items": item}


def _extracted(items: list[dict], session: Session) -> tuple[list[Extracted], int]:
    """Schema-valid items -> observations (relative dates resolved); and the count of repeats dropped."""
    out: list[Extracted] = []
    seen: set[str] = set()
    for item in items:
        text = resolve_relative_dates(item["text"].strip(), session.date)
        key = " ".join(text.lower().split())
        if key in seen:
            continue
        seen.add(key)
        out.append(Extracted(text, (item["dia_id"],)))
    return out, len(items) - len(out)


def parse_extraction(reply: str, session: Session, speaker: str) -> list[Extracted]:
    """Validate an unconstrained chat's reply against the schema; raises ValueError saying what is wrong."""
    return _extracted(parse_reply(reply, extraction_schema(session, speaker)), session)[0]


class ObservationExtractor:
    """Session -> observations, generated under the extraction schema.

    ``chat``: a :class:`tsubasa_fast.llm.ChatLM` (or anything with its ``structured(messages,
    schema)`` method), decoded under the grammar; or a plain ``messages -> str`` callable, whose
    replies are validated and retried up to ``retries`` times.

    ``stats``: sessions, observations, constrained / unconstrained calls, retries, skipped
    (sessions given up: invalid replies of an unconstrained chat, or a constrained reply cut off
    by the token limit), duplicates (repeated texts dropped).
    """

    def __init__(self, chat: Callable, retries: int = 1, name: str = "llm", max_items: int = MAX_ITEMS,
                 min_items: int = MIN_ITEMS, repetition_penalty: float | None = REPETITION_PENALTY):
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if not 1 <= max_items <= 50:
            raise ValueError(f"max_items must be in 1..50, got {max_items}")
        if not 1 <= min_items <= max_items:
            raise ValueError(f"min_items must be in 1..max_items ({max_items}), got {min_items}")
        self.min_items = min_items
        self.chat, self.retries, self.name, self.max_items = chat, retries, name, max_items
        self.repetition_penalty = repetition_penalty
        # room for the longest valid reply at one token per character (a real model needs ~1/4)
        self.max_new_tokens = max_items * (MAX_CHARS + 24) + 8
        self.stats = {"sessions": 0, "observations": 0, "constrained": 0, "unconstrained": 0,
                      "retries": 0, "skipped": 0, "duplicates": 0}

    @property
    def constrained(self) -> bool:
        return callable(getattr(self.chat, "structured", None))

    def extract(self, session: Session, speaker: str) -> list[Extracted] | None:
        """Observations about ``speaker``; None when no valid reply came (counted in ``skipped``)."""
        if not any(t.speaker == speaker for t in session.turns):
            return []
        messages = build_prompt(session, speaker)
        schema = extraction_schema(session, speaker, self.max_items, self.min_items)
        self.stats["sessions"] += 1
        tries = 1 if self.constrained else self.retries + 1
        for attempt in range(tries):
            reply = None
            try:
                if self.constrained:
                    self.stats["constrained"] += 1
                    items = self.chat.structured(messages, schema, max_new_tokens=self.max_new_tokens,
                                                 repetition_penalty=self.repetition_penalty)
                else:
                    self.stats["unconstrained"] += 1
                    reply = self.chat(messages)
                    items = parse_reply(reply, schema)
            except StructuredOutputError as e:
                if attempt + 1 < tries:
                    self.stats["retries"] += 1
                    continue
                self.stats["skipped"] += 1
                log.warning("extraction for session %d / %s skipped after %d tries: %s (reply %r)",
                            session.number, speaker, attempt + 1, e, (reply or "")[:120])
                return None
            out, repeats = _extracted(items, session)
            self.stats["duplicates"] += repeats
            self.stats["observations"] += len(out)
            return out
        return None
