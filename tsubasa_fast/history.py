"""One user's history for ``tsubasa-fast personalize --history FILE --user NAME``.

:func:`load_history` reads the file and returns the same :class:`~tsubasa_fast.core.Conversation`
the LoCoMo loader produces, so the memory-writing pipeline (``ingest_conversation``) consumes
it unchanged, plus the speaker who is the user.

History format
--------------
A JSON file holding either a list of sessions or an object::

    {
      "user": "Maya",                      # optional: the default for --user
      "id": "maya",                        # optional: conversation id (default: the file name)
      "sessions": [
        {
          "date": "2023-08-20T12:05",      # required, see below
          "id": 4,                         # optional session number (default: position, 1-based)
          "turns": [
            {"speaker": "Sam",  "text": "How's the new flat?"},
            {"speaker": "Maya", "text": "We moved in on 12 August. Miso still hides under the bed."}
          ]
        }
      ],
      "eval_questions": [...]              # optional, ignored here (see load_eval_questions)
    }

or a JSONL file (``.jsonl`` / ``.ndjson``, or any file holding several JSON values one a line):
one session object per line, blank lines ignored. Other keys are ignored.

- ``date``: ``"2024-03-02"``, ``"2024-03-02T18:30"`` (also with a space, seconds, fractions or a
  timezone suffix, which is dropped: the user's wall-clock time is kept) or LoCoMo's
  ``"1:56 pm on 8 May, 2023"``. Relative dates in the text ("last Saturday") are resolved
  against it.
- ``turns``: a non-empty list of ``{"speaker": str, "text": str}``; ``blip_caption`` (a
  description of a shared image) is kept if present. Exactly two people talk across the
  history: the user and one partner (a friend, an assistant). NAME must speak at least once.
- Sessions are processed in date order (a stable sort; a warning is recorded when the file
  order differs). Each turn gets a LoCoMo-style id ``D<session>:<turn>`` (1-based) so every
  memory can be traced back to the utterances it came from; questions cite these ids.

LoCoMo files (``locomo10.json`` format) are accepted as they are: the conversation whose
speakers include NAME is used (``--user conv-26:Caroline`` picks one when a name occurs in
several).

Every problem raises :class:`HistoryFormatError` naming the place: ``FILE: sessions[3].turns[2].speaker: ...``
for JSON, ``FILE:4: turns[2].speaker: ...`` for line 4 of a JSONL file.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, TypeAdapter,
                      ValidationError)

from .errors import InputError
from .core import Conversation, Session, Turn
from .memory.locomo import LocomoFormatError, load_locomo, parse_locomo_date

__all__ = ["EVAL_CATEGORIES", "EvalQuestion", "HistoryFormatError", "load_eval_questions", "load_history",
           "parse_history_date"]

EVAL_CATEGORIES = ("single-hop", "temporal", "multi-hop", "evolving")
_SESSION_ID = re.compile(r"^(?:session_?|D)?(\d+)$", re.I)
_JSONL_SUFFIXES = {".jsonl", ".ndjson"}


class HistoryFormatError(InputError):
    """A history file that cannot be used; the message names the file and the exact place."""


# ------------------------------------------------------------- input models
def _non_blank(v):
    if isinstance(v, str) and not v.strip():
        raise ValueError(f"expected a non-empty string, got {v!r}")
    return v


def _dia_id(v: str) -> str:
    if not re.fullmatch(r"D\d+:\d+", v):
        raise ValueError(f"expected a dia_id like 'D3:4', got {v!r:.40}")
    return v


_Text = Annotated[StrictStr, AfterValidator(_non_blank)]


class _In(BaseModel):
    model_config = ConfigDict(extra="allow")  # other keys are ignored


class _FileIn(_In):
    sessions: list[Any]
    user: _Text | None = None
    id: Any = None                     # a string or an integer, checked in load_history


class _SessionIn(_In):
    id: Any = None                     # a session number, checked in _build
    date: Any                          # parse_history_date
    turns: list[Any]


class _TurnIn(_In):
    speaker: _Text
    text: _Text
    blip_caption: StrictStr | None = None


class _EvalIn(_In):
    question: _Text
    answer: Any                        # a non-empty string or a number, checked in load_eval_questions
    category: Literal[EVAL_CATEGORIES]  # type: ignore[valid-type]
    evidence: list[Annotated[StrictStr, AfterValidator(_dia_id)]] = Field(default_factory=list)


_ADAPTERS = {m: TypeAdapter(m) for m in (_FileIn, _SessionIn, _TurnIn, _EvalIn)}
_KINDS = {"string_type": "a non-empty string", "list_type": "a list", "model_type": "an object",
          "model_attributes_type": "an object"}


def _place(where: str, path: str) -> str:
    """``FILE: sessions[1]`` + ``.turns`` -> ``FILE: sessions[1].turns``; ``FILE:4: `` + ``.date``
    -> ``FILE:4: date`` (a JSONL line has no field path of its own)."""
    if where.endswith(": "):
        return where + path.lstrip(".") if path else where[:-2]
    return where + path


def _parse(model, obj: Any, where: str, what: str):
    """``model`` validated from ``obj``; the first error becomes a HistoryFormatError naming the field
    (``where`` + its path); ``what`` describes the object when it is not one."""
    try:
        return _ADAPTERS[model].validate_python(obj)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = [p for p in err["loc"] if isinstance(p, int) or p in model.model_fields]
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
        got = err.get("input")
        if err["type"] == "missing":
            msg = "missing"
        elif not loc:
            msg = f"expected {what}, got {type(got).__name__}"
        elif err["type"] == "string_type":
            msg = f"expected a non-empty string, got {got!r:.60}"
        elif loc == ["turns"] and err["type"] == "list_type":
            msg = f"expected a list of turns, got {type(got).__name__}"
        elif err["type"] in _KINDS:
            msg = f"expected {_KINDS[err['type']]}, got {type(got).__name__}"
        elif err["type"] == "literal_error":
            msg = f"expected one of {EVAL_CATEGORIES}, got {got!r:.40}"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        raise HistoryFormatError(f"{_place(where, path)}: {msg}") from None


@dataclass(frozen=True)
class EvalQuestion:
    """A held-back question about the user (the bundled sample's ``eval_questions``)."""
    question: str
    answer: str
    category: str
    evidence: tuple[str, ...]


def parse_history_date(value: Any) -> _dt.datetime:
    """ISO date / date-time (``datetime.fromisoformat``; a timezone and fractions of a second are
    dropped, the wall-clock time kept) or LoCoMo's ``"1:56 pm on 8 May, 2023"`` -> naive datetime."""
    if not isinstance(value, str):
        raise ValueError(f"expected a date string, got {type(value).__name__} {value!r:.40}")
    text = value.strip()
    try:
        return _dt.datetime.fromisoformat(text).replace(tzinfo=None, microsecond=0)
    except ValueError as e:
        iso_error = e
    try:
        return parse_locomo_date(value)
    except ValueError:
        pass
    if text[:4].isdigit() and text[4:5] == "-":  # meant as ISO: say why datetime refused it
        raise ValueError(f"invalid date {value!r} ({iso_error})") from None
    raise ValueError(f"cannot parse {value!r}; expected 'YYYY-MM-DD', 'YYYY-MM-DDTHH:MM' "
                     f"or '1:56 pm on 8 May, 2023'") from None


def load_history(path: str | os.PathLike, user: str | None = None) -> tuple[Conversation, str]:
    """Read a history file (format in the module docstring); return ``(conversation, user_speaker)``.

    ``user`` is NAME from ``--user``; when None, the file's ``"user"`` is used.
    """
    path = Path(path)
    raw = _read_text(path)
    if path.suffix.lower() in _JSONL_SUFFIXES:
        return _from_jsonl(path, raw, user)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several JSON values: JSONL under another name
            return _from_jsonl(path, raw, user)
        raise HistoryFormatError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
    except RecursionError:
        raise HistoryFormatError(f"{path}: JSON nested too deeply to parse") from None
    if isinstance(data, list) and data and isinstance(data[0], dict) and "conversation" in data[0]:
        return _from_locomo(path, user)
    if isinstance(data, list):
        items, default_user, conv_id = data, None, None
    elif isinstance(data, dict):
        head = _parse(_FileIn, data, f"{path}: ", "an object")
        items, default_user, conv_id = head.sessions, head.user, head.id
        if conv_id is not None and (isinstance(conv_id, bool) or not (isinstance(conv_id, (str, int))
                                                                      and str(conv_id).strip())):
            raise HistoryFormatError(f"{path}: id: expected a non-empty string, got {conv_id!r:.40}")
    else:
        raise HistoryFormatError(f"{path}: top level must be a list of sessions or an object with "
                                 f"\"sessions\", got {type(data).__name__}")
    located = [(f"{path}: ", f"sessions[{i}]", item) for i, item in enumerate(items)]
    return _build(path, located, user or default_user, None if conv_id is None else str(conv_id).strip())


def load_eval_questions(path: str | os.PathLike) -> list[EvalQuestion]:
    """The ``eval_questions`` of a history JSON object (an empty list if it has none)."""
    path = Path(path)
    raw = _read_text(path)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise HistoryFormatError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(data, dict) or "eval_questions" not in data:
        return []
    items = data["eval_questions"]
    if not isinstance(items, list):
        raise HistoryFormatError(f"{path}: eval_questions: expected a list, got {type(items).__name__}")
    out = []
    for i, q in enumerate(items):
        where = f"{path}: eval_questions[{i}]"
        m = _parse(_EvalIn, q, where, "an object")
        answer = m.answer
        if not isinstance(answer, (str, int, float)) or isinstance(answer, bool) or not str(answer).strip():
            raise HistoryFormatError(f"{where}.answer: expected a non-empty string or number, got {answer!r:.40}")
        out.append(EvalQuestion(m.question, str(answer), m.category, tuple(m.evidence)))
    return out


# ------------------------------------------------------------------ internals
def _read_text(path: Path) -> str:
    if not path.exists():
        raise HistoryFormatError(f"no such file {path}", field="history")
    if not path.is_file():
        raise HistoryFormatError(f"{path} is not a file", field="history")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise HistoryFormatError(f"{path}: not UTF-8 text (byte {e.start}); expected JSON or JSONL") from None
    except OSError as e:
        raise HistoryFormatError(f"{path}: cannot read ({e.strerror or e})") from None


def _from_jsonl(path: Path, raw: str, user: str | None) -> tuple[Conversation, str]:
    located = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise HistoryFormatError(f"{path}:{lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
        located.append((f"{path}:{lineno}: ", "", item))
    return _build(path, located, user, None)


def _from_locomo(path: Path, user: str | None) -> tuple[Conversation, str]:
    try:
        convs = load_locomo(path)
    except (LocomoFormatError, FileNotFoundError) as e:
        raise HistoryFormatError(str(e)) from None
    everyone = [f"{c.sample_id}:{s}" for c in convs for s in c.speakers]
    if not user:
        raise HistoryFormatError(f"{path} is a LoCoMo file with several users; name one "
                                 f"(e.g. {', '.join(everyone[:4])}{', ...' if len(everyone) > 4 else ''})",
                                 field="user")
    sample, _, name = user.rpartition(":")
    if sample:
        matches = [c for c in convs if c.sample_id == sample and name in c.speakers]
    else:
        matches = [c for c in convs if user in c.speakers]
    if not matches:
        raise HistoryFormatError(f"{path}: no conversation has speaker {user!r}{_suggest(user, everyone)}")
    if len(matches) > 1:
        ids = [f"{c.sample_id}:{name}" for c in matches]
        raise HistoryFormatError(f"{path}: speaker {user!r} is in {len(matches)} conversations; "
                                 f"pick one: {' or '.join(ids)}", field="user")
    return matches[0], name


def _build(path: Path, located: list[tuple[str, str, Any]], user: str | None, conv_id: str | None
           ) -> tuple[Conversation, str]:
    """Validate sessions given as (message prefix, field path of the session, object) triples."""
    if not located:
        raise HistoryFormatError(f"{path}: no sessions")
    sessions: list[Session] = []
    speakers: list[str] = []
    seen_ids: dict[int, str] = {}
    for pos, (prefix, field, item) in enumerate(located):
        where = prefix + field if field else prefix.rstrip(": ")
        at = (lambda key, p=prefix, f=field: f"{p}{f}.{key}" if f else f"{p}{key}")
        sess = _parse(_SessionIn, item, prefix + field, "a session object")
        number = pos + 1
        if sess.id is not None:
            m = _SESSION_ID.match(str(sess.id).strip()) if isinstance(sess.id, (str, int)) else None
            if not m or int(m.group(1)) < 1 or isinstance(sess.id, bool):
                raise HistoryFormatError(f"{at('id')}: expected a positive session number, got {sess.id!r:.40}")
            number = int(m.group(1))
        if number in seen_ids:
            raise HistoryFormatError(f"{at('id')}: session number {number} is used twice "
                                     f"(also by {seen_ids[number]})")
        seen_ids[number] = where
        try:
            date = parse_history_date(sess.date)
        except ValueError as e:
            raise HistoryFormatError(f"{at('date')}: {e}") from None
        turns_raw = sess.turns
        if not turns_raw:
            raise HistoryFormatError(f"{at('turns')}: empty session (a session needs at least one turn)")
        turns = []
        for t, turn in enumerate(turns_raw):
            tw = at(f"turns[{t}]")
            tin = _parse(_TurnIn, turn, tw, '{"speaker": ..., "text": ...}')
            speaker, text, caption = tin.speaker.strip(), tin.text.strip(), tin.blip_caption
            if speaker not in speakers:
                if len(speakers) == 2:
                    raise HistoryFormatError(f"{tw}.speaker: a third speaker {speaker!r} (already "
                                             f"{speakers[0]!r} and {speakers[1]!r}); a history is a "
                                             f"conversation between the user and one partner")
                speakers.append(speaker)
            turns.append(Turn(speaker, f"D{number}:{t + 1}", text, caption or None))
        date_raw = sess.date.strip()
        sessions.append(Session(number, date_raw, date, tuple(turns)))

    user = user.strip() if isinstance(user, str) else user
    if not user:
        raise HistoryFormatError(f"{path} names no user: name one of the speakers "
                                 f"({', '.join(map(repr, speakers))})", field="user")
    if user not in speakers:
        raise HistoryFormatError(f"{path}: user {user!r} never speaks in this history (speakers: "
                                 f"{', '.join(map(repr, speakers))}){_suggest(user, speakers)}")
    if len(speakers) < 2:
        raise HistoryFormatError(f"{path}: only {user!r} speaks; a history is a conversation between "
                                 f"the user and one partner")
    warnings = []
    ordered = sorted(sessions, key=lambda s: s.date)
    if [s.number for s in ordered] != [s.number for s in sessions]:
        warnings.append(f"{path}: sessions are not in date order in the file; processed by date "
                        f"(session numbers {[s.number for s in ordered]})")
    sample_id = conv_id or path.stem
    return Conversation(sample_id, speakers[0], speakers[1], ordered, [], warnings=warnings), user


def _suggest(name: str, known: list[str]) -> str:
    lower = {k.lower(): k for k in known}
    close = [lower[name.lower()]] if name.lower() in lower else difflib.get_close_matches(name, known, n=2)
    if not close:
        short = {k.rpartition(":")[2].lower(): k for k in known}
        close = [short[name.lower()]] if name.lower() in short else []
    return f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
