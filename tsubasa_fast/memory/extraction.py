"""LLM observation extraction: one session's utterances -> standalone, dated observations.

Per (session, target speaker) the LLM gets the session date and the numbered utterances and
must answer a JSON list ``[{"text": ..., "dia_ids": [...]}, ...]`` of factual sentences about
the speaker (who/what/where/when, absolute dates, no remarks about tone). Output is validated;
malformed output is retried once, then the session is skipped with a counted warning (the
raw session is stored by the pipeline, so nothing the user said is lost). Relative dates the
model leaves in ("yesterday", "last year") are resolved against the session date.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import logging
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from ..llm import json_in_reply
from .locomo import Session, Turn

log = logging.getLogger(__name__)

_SYSTEM = (
    "You extract facts about one person from a conversation. Write short standalone sentences that "
    "name the person, say what happened, where and when. Use absolute dates (the session date is "
    "given; turn 'yesterday' or 'last week' into a date). Do not comment on tone or feelings of the "
    "conversation. Answer with a JSON list only.")


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
            f"\n\nList the facts about {speaker} as JSON: "
            f'[{{"text": "{speaker} ...", "dia_ids": ["D{session.number}:1"]}}]')
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def _overlap_ids(text: str, turns: Sequence[Turn], speaker: str) -> tuple[str, ...]:
    words = set(re.findall(r"[a-z0-9]+", text.lower())) - {speaker.lower()}
    best, best_n = None, 0
    for t in turns:
        n = len(words & set(re.findall(r"[a-z0-9]+", t.full_text().lower())))
        if t.speaker == speaker and n > best_n:
            best, best_n = t.dia_id, n
    return (best,) if best else ()


MIN_WORDS = 3
_WORDS = re.compile(r"[^\W\d_]{2,}")


def parse_extraction(reply: str, session: Session, speaker: str) -> list[Extracted]:
    """Validate the model's JSON; raises ValueError saying what is wrong."""
    items = json_in_reply(reply, list)
    valid_ids = {t.dia_id for t in session.turns}
    out: list[Extracted] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) or not item["text"].strip():
            raise ValueError(f"item {i} has no non-empty 'text'")
        if len(_WORDS.findall(item["text"])) < MIN_WORDS:
            continue  # an id list or a fragment ("D1:1", "Maya"), not a standalone sentence
        text = resolve_relative_dates(item["text"].strip(), session.date)
        ids = item.get("dia_ids") or []
        if isinstance(ids, str):
            ids = [ids]
        ids = tuple(x for x in ids if isinstance(x, str) and x in valid_ids)
        if not ids:
            ids = _overlap_ids(text, session.turns, speaker)
        out.append(Extracted(text, ids))
    if not out:
        raise ValueError(f"no standalone observation (sentences of at least {MIN_WORDS} words) in the reply")
    return out


class ObservationExtractor:
    """Session -> observations with any ``chat(messages) -> str`` callable (one retry)."""

    def __init__(self, chat: Callable[[list[dict]], str], retries: int = 1, name: str = "llm"):
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.chat, self.retries, self.name = chat, retries, name
        self.stats = {"sessions": 0, "observations": 0, "retries": 0, "skipped": 0}

    def extract(self, session: Session, speaker: str) -> list[Extracted] | None:
        """Observations about ``speaker``; None when the output stayed malformed (counted)."""
        if not any(t.speaker == speaker for t in session.turns):
            return []
        messages = build_prompt(session, speaker)
        self.stats["sessions"] += 1
        for attempt in range(self.retries + 1):
            reply = self.chat(messages)
            try:
                out = parse_extraction(reply, session, speaker)
            except ValueError as e:
                if attempt < self.retries:
                    self.stats["retries"] += 1
                    continue
                self.stats["skipped"] += 1
                log.warning("extraction for session %d / %s skipped after %d tries: %s (reply %r)",
                            session.number, speaker, attempt + 1, e, (reply or "")[:120])
                return None
            self.stats["observations"] += len(out)
            return out
        return None
