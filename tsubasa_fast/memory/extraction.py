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

Grounding (ours): a small model invents facts the grammar cannot stop ("Maya adopted a dog
named Bella"). A fact is kept only when its content words are supported by the text of the
turn it cites (:func:`unsupported_words`); the others are dropped and counted
(``ungrounded``). A session left with no grounded fact falls back, visibly (``fallback_sessions``,
``fallback_observations``), to the speaker's own utterances rewritten in the third person
(:func:`third_person`: "I moved to Bristol" -> "Maya moved to Bristol").
"""

from __future__ import annotations

import calendar
import datetime as _dt
import functools
import logging
import re
from dataclasses import dataclass
from typing import Callable

from ..structured import StructuredOutputError, parse_reply
from ..core import Session
from ..text import verb_base, verb_form

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


# --------------------------------------------------------------------------- grounding
_WORD = re.compile(r"[A-Za-z0-9]+")
_FUNCTION = frozenset("""
a an the and or but nor so yet if then than that this these those there here what which who whom whose
when where why how is are was were be been being am has have had do does did will would can could
should shall may might must to of in on at for with by from into onto about as over under after before
during since until up down out off again also just still very really too not no yes all any some each
every both either neither other another such own same her his their its she he they it them him hers
theirs itself herself himself themselves one ones i me my we us our you your named called said says
told tells mentioned shared talked likes liked loves loved feels felt thinks thought wants wanted
got gets get went goes go going made makes make new now recently currently week month year day
days weeks months years ago last next later earlier before after s t
""".split()) | {m.lower() for m in calendar.month_name if m} | {d.lower() for d in calendar.day_name}
MIN_GROUNDED = 0.67  # share of a fact's common content words its turn must support


@functools.lru_cache(maxsize=1)
def _snowball():
    import Stemmer  # PyStemmer, the stemmer bm25s uses

    return Stemmer.Stemmer("english")


def _stems(word: str) -> tuple[str, str]:
    """The word's Snowball stem ("lives" / "live") and its first 5 letters ("painting" / "paints")."""
    return _snowball().stemWord(word), word[:5] if len(word) > 5 else word


def unsupported_words(text: str, turn_text: str, speaker: str, date: _dt.date | _dt.datetime) -> tuple[list[str], int]:
    """``(unsupported, n_content)``: the content words of ``text`` the cited turn does not support.

    Content words are the words left after removing function words, light verbs, month and
    day names and the speaker's name. A word is supported when the turn (with its relative
    dates resolved against ``date``, plus the session date itself) has it, a word with its
    Snowball stem ("lives" / "live") or one sharing its first 5 letters ("painting" / "paints").
    """
    d = date.date() if isinstance(date, _dt.datetime) else date
    support = _WORD.findall(f"{turn_text} {resolve_relative_dates(turn_text, d)} {_fmt(d)}".lower())
    words = set(support)
    stems = {s for w in words for s in _stems(w)}
    names = {w.lower() for w in _WORD.findall(speaker)}
    content = [w for w in _WORD.findall(text.lower()) if w not in _FUNCTION and w not in names]
    return [w for w in content if w not in words and not stems.intersection(_stems(w))], len(content)


def is_grounded(text: str, turn_text: str, speaker: str, date: _dt.date | _dt.datetime) -> bool:
    """True when ``text`` is supported by its turn: every name and number in it occurs there
    (capitalised words after the first, digits), and at least MIN_GROUNDED of its other
    content words do; a fact with no content word beyond the name is not grounded."""
    missing, n = unsupported_words(text, turn_text, speaker, date)
    if n == 0:
        return False
    missing_set = set(missing)
    tokens = _WORD.findall(text)
    for i, tok in enumerate(tokens):
        low = tok.lower()
        if low in missing_set and (tok.isdigit() or any(c.isdigit() for c in tok) or (i > 0 and tok[:1].isupper())):
            return False
    return (n - len(missing)) / n >= MIN_GROUNDED


_CONTRACTIONS = [  # first person -> third person, applied in order (case-insensitive)
    (r"\bI'm\b|\bI am\b", "{n} is"), (r"\bI've\b", "{n} has"), (r"\bI'll\b", "{n} will"),
    (r"\bI'd\b", "{n} would"), (r"\bI was\b", "{n} was"), (r"\bI have\b", "{n} has"),
    (r"\bI do not\b|\bI don't\b", "{n} does not"), (r"\bI do\b", "{n} does"),
    (r"\bmyself\b", "{n}"), (r"\bmine\b", "{n}'s"), (r"\bmy\b", "{n}'s"), (r"\bme\b", "{n}"),
]
_YOU_CONTRACTIONS = [  # second person -> the other speaker (when known)
    (r"\byou're\b|\byou are\b", "{n} is"), (r"\byou've\b", "{n} has"), (r"\byou'll\b", "{n} will"),
    (r"\byou'd\b", "{n} would"), (r"\byou were\b", "{n} was"), (r"\byourself\b", "{n}"),
    (r"\byours\b", "{n}'s"),
]
_MODAL = frozenset("can could will would should shall may might must".split())
_ADVERB = frozenset("just still already also really never always actually finally only even usually "
                    "often sometimes totally definitely recently".split())


_CONTRACTED_3RD = {"am": "is", "don't": "doesn't", "haven't": "hasn't"}


def _third_verb(verb: str) -> str:
    """The verb after "I" for a third-person subject (lemminflect's forms); past tenses and
    modals stay as they are."""
    low = verb.lower()
    if low in _CONTRACTED_3RD:
        return _CONTRACTED_3RD[low]
    if low in _MODAL or not low.isalpha() or verb_base(low, "past"):
        return verb
    form = verb_form(low, "present") or verb
    return form[:1].upper() + form[1:] if verb[:1].isupper() else form


def third_person(text: str, name: str, other: str | None = None) -> str:
    """``text`` said by ``name`` rewritten in the third person, deterministically.

    I / me / my / mine -> the name ("I love my cat" -> "Maya loves Maya's cat"), with the verb
    after "I" put in the third person (adverbs skipped; past tenses and modals unchanged);
    "you" / "your" -> the other speaker's name when given. Other words are kept as they are.
    """
    out = text.replace("\u2019", "'")
    for pattern, repl in _CONTRACTIONS:
        out = re.sub(pattern, repl.format(n=name), out, flags=re.I)

    def subject(m: re.Match) -> str:
        advs, verb = m.group(1) or "", m.group(2)
        return f"{name} {advs}{_third_verb(verb)}"

    adv = "|".join(sorted(_ADVERB))
    out = re.sub(rf"\bI\s+((?:(?:{adv})\s+)*)([A-Za-z]+(?:'t)?)(?![\w'])", subject, out)
    out = re.sub(r"\bI\b", name, out)
    if other:
        for pattern, repl in _YOU_CONTRACTIONS:
            out = re.sub(pattern, repl.format(n=other), out, flags=re.I)
        out = re.sub(r"\byour\b", f"{other}'s", out, flags=re.I)
        out = re.sub(r"\byou\b", other, out, flags=re.I)
    return out


def utterance_observations(session: Session, speaker: str) -> list["Extracted"]:
    """The fallback: ``speaker``'s own utterances of ``session`` in the third person, one per turn."""
    others = [t.speaker for t in session.turns if t.speaker != speaker]
    other = others[0] if others and len(set(others)) == 1 else None
    return [Extracted(third_person(t.full_text(), speaker, other), (t.dia_id,))
            for t in session.turns if t.speaker == speaker]


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


def _extracted(items: list[dict], session: Session, speaker: str | None = None,
               grounding: bool = False) -> tuple[list[Extracted], int, list[dict]]:
    """Schema-valid items -> observations (relative dates resolved); the count of repeats dropped;
    and, with ``grounding``, the items dropped as not supported by their turn."""
    out: list[Extracted] = []
    seen: set[str] = set()
    ungrounded: list[dict] = []
    turns = {t.dia_id: t.full_text() for t in session.turns}
    repeats = 0
    for item in items:
        text = resolve_relative_dates(item["text"].strip(), session.date)
        key = " ".join(text.lower().split())
        if key in seen:
            repeats += 1
            continue
        if grounding and not is_grounded(text, turns.get(item["dia_id"], ""), speaker or "", session.date):
            ungrounded.append({"dia_id": item["dia_id"], "text": text})
            continue
        seen.add(key)
        out.append(Extracted(text, (item["dia_id"],)))
    return out, repeats, ungrounded


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
    by the token limit), duplicates (repeated texts dropped), ungrounded (facts their turn does
    not support, dropped), fallback_sessions / fallback_observations (sessions with no grounded
    fact, and the third-person utterances that stand in for them). ``ungrounded_examples``
    keeps the first few dropped facts for the report.

    ``grounding=False`` keeps every schema-valid fact (ablation); ``fallback=False`` leaves a
    session with no grounded fact empty instead of falling back to its utterances.
    """

    def __init__(self, chat: Callable, retries: int = 1, name: str = "llm", max_items: int = MAX_ITEMS,
                 min_items: int = MIN_ITEMS, repetition_penalty: float | None = REPETITION_PENALTY,
                 grounding: bool = True, fallback: bool = True, report_examples: int = 5):
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
        self.grounding, self.fallback, self.report_examples = grounding, fallback, report_examples
        self.stats = {"sessions": 0, "observations": 0, "constrained": 0, "unconstrained": 0,
                      "retries": 0, "skipped": 0, "duplicates": 0, "ungrounded": 0,
                      "fallback_sessions": 0, "fallback_observations": 0}
        self.ungrounded_examples: list[dict] = []
        self._prefetched: dict[tuple[int, str], list] = {}

    @property
    def constrained(self) -> bool:
        return callable(getattr(self.chat, "structured", None))

    def prefetch(self, sessions, speaker: str, batch_size: int = 16) -> int:
        """Extract several sessions in padded batches (one decode for many prompts: several times
        faster on a CPU than one session at a time); :meth:`extract` then uses the results.
        A batch with a reply cut off is left to :meth:`extract`. Returns the sessions prefetched."""
        if not self.constrained:
            return 0
        todo = [s for s in sessions if any(t.speaker == speaker for t in s.turns)
                and (s.number, speaker) not in self._prefetched]
        done = 0
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            try:
                replies = self.chat.structured_batch(
                    [build_prompt(s, speaker) for s in chunk],
                    [extraction_schema(s, speaker, self.max_items, self.min_items) for s in chunk],
                    max_new_tokens=self.max_new_tokens, repetition_penalty=self.repetition_penalty)
            except StructuredOutputError as e:
                log.info("batched extraction of %d sessions left to one-by-one: %s", len(chunk), e)
                continue
            for s, items in zip(chunk, replies):
                self._prefetched[(s.number, speaker)] = items
            done += len(chunk)
        return done

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
                if (session.number, speaker) in self._prefetched:
                    self.stats["constrained"] += 1
                    items = self._prefetched.pop((session.number, speaker))
                elif self.constrained:
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
            out, repeats, dropped = _extracted(items, session, speaker, self.grounding)
            self.stats["duplicates"] += repeats
            self.stats["ungrounded"] += len(dropped)
            room = self.report_examples - len(self.ungrounded_examples)
            self.ungrounded_examples += [dict(d, session=session.number) for d in dropped[:max(room, 0)]]
            if not out and dropped and self.fallback:
                out = utterance_observations(session, speaker)
                self.stats["fallback_sessions"] += 1
                self.stats["fallback_observations"] += len(out)
                log.info("session %d / %s: no grounded fact, %d utterances in the third person instead",
                         session.number, speaker, len(out))
            self.stats["observations"] += len(out)
            return out
        return None
