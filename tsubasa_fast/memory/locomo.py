"""LoCoMo: a validating loader for the locomo10.json format and the retrieval evaluation.

Loader: handles every quirk listed in docs/MEMORY.md (``"1:56 pm on 8 May, 2023"`` dates,
date keys without a session, image turns with ``blip_caption``, integer answers, empty
evidence, category-5 ``adversarial_answer``, evidence like ``"D8:6; D9:17"``, observation
dia_ids given as a list). Malformed input raises :class:`LocomoFormatError` whose message
names the file and the exact field (``conversation[1].conversation.session_3[4].dia_id``).

Users: each LoCoMo speaker is a user ``<sample_id>:<speaker>`` (e.g. ``conv-26:Caroline``).

Retrieval evaluation (judge-free): for each question with evidence, recall@k is the fraction
of its evidence dia_ids covered by the source dia_ids of the top-k memories, retrieved from
both speakers' stores and merged by score. Categories (the dataset's own code): 1 multi-hop,
2 temporal, 3 open-domain, 4 single-hop, 5 adversarial (excluded by default: its evidence
points at what was *not* said).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

CATEGORY_NAMES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
_DIA = re.compile(r"D(\d+):(\d+)")
_DATE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*([ap]m)\s+on\s+(\d{1,2})\s+([A-Za-z]+),?\s+(\d{4})\s*$", re.I)
_MONTHS = {m.lower(): i for i, m in enumerate(
    ["January", "February", "March", "April", "May", "June", "July", "August", "September",
     "October", "November", "December"], 1)}
_MONTHS.update({k[:3]: v for k, v in list(_MONTHS.items())})
_TOKEN = re.compile(r"\w+|[^\w\s]")


class LocomoFormatError(ValueError):
    """Malformed LoCoMo file; the message names the offending field."""


@dataclass(frozen=True)
class Turn:
    speaker: str
    dia_id: str
    text: str
    blip_caption: str | None = None

    def full_text(self) -> str:
        """Utterance text plus the shared image's caption, if any."""
        if self.blip_caption:
            return f"{self.text} [shares {self.blip_caption}]".strip()
        return self.text


@dataclass(frozen=True)
class Session:
    number: int
    date_time: str
    date: _dt.datetime
    turns: tuple[Turn, ...]

    @property
    def date_str(self) -> str:
        """Human date used in memory texts and prompts, e.g. ``8 May 2023``."""
        return f"{self.date.day} {self.date.strftime('%B %Y')}"


@dataclass(frozen=True)
class QA:
    question: str
    answer: str | None
    evidence: tuple[str, ...]
    category: int
    adversarial_answer: str | None = None


@dataclass
class Conversation:
    sample_id: str
    speaker_a: str
    speaker_b: str
    sessions: list[Session]
    qa: list[QA]
    # observations[session_number][speaker] = [(text, [dia_ids]), ...]
    observations: dict[int, dict[str, list[tuple[str, list[str]]]]] = field(default_factory=dict)
    session_summaries: dict[int, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def speakers(self) -> tuple[str, str]:
        return (self.speaker_a, self.speaker_b)

    def user_id(self, speaker: str) -> str:
        if speaker not in self.speakers:
            raise ValueError(f"speaker {speaker!r} is not in conversation {self.sample_id} {self.speakers}")
        return f"{self.sample_id}:{speaker}"

    @property
    def user_ids(self) -> list[str]:
        return [self.user_id(s) for s in self.speakers]

    def session(self, number: int) -> Session:
        for s in self.sessions:
            if s.number == number:
                return s
        raise KeyError(f"{self.sample_id} has no session {number}")


def parse_locomo_date(value: str) -> _dt.datetime:
    """``"1:56 pm on 8 May, 2023"`` -> ``datetime(2023, 5, 8, 13, 56)``."""
    m = _DATE.match(value) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"expected a date like '1:56 pm on 8 May, 2023', got {value!r}")
    hour, minute, ampm, day, month, year = m.groups()
    mon = _MONTHS.get(month.lower()) or _MONTHS.get(month.lower()[:3])
    if mon is None:
        raise ValueError(f"unknown month {month!r} in {value!r}")
    hour = int(hour) % 12 + (12 if ampm.lower() == "pm" else 0)
    return _dt.datetime(int(year), mon, int(day), hour, int(minute))


def normalise_dia_ids(value: Any, where: str) -> tuple[list[str], list[str]]:
    """Dia ids from a string (``"D8:6; D9:17"``) or a list; returns (ids, unparsable parts)."""
    parts = [value] if isinstance(value, str) else value
    if not isinstance(parts, (list, tuple)):
        raise LocomoFormatError(f"{where}: expected a dia_id string or a list of them, got {type(value).__name__}")
    ids, bad = [], []
    for i, p in enumerate(parts):
        if not isinstance(p, str):
            raise LocomoFormatError(f"{where}[{i}]: expected a dia_id string like 'D1:3', got {p!r}")
        found = _DIA.findall(p)
        if not found:
            bad.append(p)
        ids.extend(f"D{int(a)}:{int(b)}" for a, b in found)
    return list(dict.fromkeys(ids)), bad


def _req(obj: dict, key: str, typ, where: str):
    if not isinstance(obj, dict):
        raise LocomoFormatError(f"{where}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise LocomoFormatError(f"{where}.{key}: missing")
    val = obj[key]
    if not isinstance(val, typ):
        names = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise LocomoFormatError(f"{where}.{key}: expected {names}, got {type(val).__name__} {val!r:.60}")
    return val


def _parse_conversation(item: Any, where: str) -> Conversation:
    if not isinstance(item, dict):
        raise LocomoFormatError(f"{where}: expected an object, got {type(item).__name__}")
    sample_id = _req(item, "sample_id", str, where)
    where = f"{where} ({sample_id})"
    conv = _req(item, "conversation", dict, where)
    cw = f"{where}.conversation"
    speaker_a = _req(conv, "speaker_a", str, cw)
    speaker_b = _req(conv, "speaker_b", str, cw)
    warnings: list[str] = []
    sessions: list[Session] = []
    numbers = sorted(int(m.group(1)) for k in conv if (m := re.fullmatch(r"session_(\d+)", k)))
    for n in numbers:
        sw = f"{cw}.session_{n}"
        turns_raw = conv[f"session_{n}"]
        if not isinstance(turns_raw, list):
            raise LocomoFormatError(f"{sw}: expected a list of turns, got {type(turns_raw).__name__}")
        if not turns_raw:
            continue
        date_raw = _req(conv, f"session_{n}_date_time", str, cw)
        try:
            date = parse_locomo_date(date_raw)
        except ValueError as e:
            raise LocomoFormatError(f"{cw}.session_{n}_date_time: {e}") from None
        turns = []
        for t, turn in enumerate(turns_raw):
            tw = f"{sw}[{t}]"
            speaker = _req(turn, "speaker", str, tw)
            if speaker not in (speaker_a, speaker_b):
                raise LocomoFormatError(f"{tw}.speaker: {speaker!r} is neither speaker_a {speaker_a!r} "
                                        f"nor speaker_b {speaker_b!r}")
            dia = _req(turn, "dia_id", str, tw)
            ids, _ = normalise_dia_ids(dia, f"{tw}.dia_id")
            if len(ids) != 1:
                raise LocomoFormatError(f"{tw}.dia_id: expected one id like 'D{n}:{t + 1}', got {dia!r}")
            text = _req(turn, "text", str, tw)
            caption = turn.get("blip_caption")
            if caption is not None and not isinstance(caption, str):
                raise LocomoFormatError(f"{tw}.blip_caption: expected str, got {type(caption).__name__}")
            turns.append(Turn(speaker, ids[0], text, caption))
        sessions.append(Session(n, date_raw, date, tuple(turns)))
    if not sessions:
        raise LocomoFormatError(f"{cw}: no session_N with turns")

    qa_list = []
    for q, qa in enumerate(_req(item, "qa", list, where)):
        qw = f"{where}.qa[{q}]"
        question = _req(qa, "question", str, qw)
        category = _req(qa, "category", int, qw)
        if category not in CATEGORY_NAMES:
            raise LocomoFormatError(f"{qw}.category: expected 1-5, got {category}")
        answer = qa.get("answer")
        if answer is None and category != 5:
            raise LocomoFormatError(f"{qw}.answer: missing (only category 5 may omit it)")
        if answer is not None and not isinstance(answer, (str, int, float)):
            raise LocomoFormatError(f"{qw}.answer: expected str or number, got {type(answer).__name__}")
        adv = qa.get("adversarial_answer")
        evidence_raw = qa.get("evidence", [])
        if not isinstance(evidence_raw, list):
            raise LocomoFormatError(f"{qw}.evidence: expected a list, got {type(evidence_raw).__name__}")
        evidence, bad = normalise_dia_ids(evidence_raw, f"{qw}.evidence")
        if bad:
            warnings.append(f"{qw}.evidence: dropped unparsable entries {bad}")
        qa_list.append(QA(question, None if answer is None else str(answer), tuple(evidence), category,
                          None if adv is None else str(adv)))

    observations: dict[int, dict[str, list[tuple[str, list[str]]]]] = {}
    obs_raw = item.get("observation", {}) or {}
    if not isinstance(obs_raw, dict):
        raise LocomoFormatError(f"{where}.observation: expected an object, got {type(obs_raw).__name__}")
    for key, per_speaker in obs_raw.items():
        ow = f"{where}.observation.{key}"
        m = re.fullmatch(r"session_(\d+)_observation", key)
        if not m:
            raise LocomoFormatError(f"{ow}: expected keys like 'session_3_observation'")
        if not isinstance(per_speaker, dict):
            raise LocomoFormatError(f"{ow}: expected an object keyed by speaker, got {type(per_speaker).__name__}")
        sess = observations.setdefault(int(m.group(1)), {})
        for speaker, items in per_speaker.items():
            if not isinstance(items, list):
                raise LocomoFormatError(f"{ow}.{speaker}: expected a list of [text, dia_id] pairs")
            out = sess.setdefault(speaker, [])
            for i, pair in enumerate(items):
                pw = f"{ow}.{speaker}[{i}]"
                if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
                    raise LocomoFormatError(f"{pw}: expected [text, dia_id], got {pair!r:.80}")
                ids, bad = normalise_dia_ids(pair[1], pw + "[1]")
                if bad:
                    warnings.append(f"{pw}: dropped unparsable dia_ids {bad}")
                out.append((pair[0], ids))
    summaries = {}
    for key, text in (item.get("session_summary") or {}).items():
        m = re.fullmatch(r"session_(\d+)_summary", key)
        if m and isinstance(text, str):
            summaries[int(m.group(1))] = text
    return Conversation(sample_id, speaker_a, speaker_b, sessions, qa_list, observations, summaries, warnings)


def load_locomo(path: str | os.PathLike, conversations: Sequence[str] | None = None) -> list[Conversation]:
    """Load and validate a locomo10.json-format file (any path), optionally a subset by sample_id."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--locomo: no such file {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LocomoFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise LocomoFormatError(f"{path}: top level must be a list of conversations, got {type(data).__name__}")
    try:
        convs = [_parse_conversation(item, f"conversation[{i}]") for i, item in enumerate(data)]
    except LocomoFormatError as e:
        raise LocomoFormatError(f"{path}: {e}") from None
    if conversations:
        known = {c.sample_id for c in convs}
        missing = [c for c in conversations if c not in known]
        if missing:
            raise ValueError(f"--conversation: {missing} not in {path} (has {sorted(known)})")
        convs = [c for c in convs if c.sample_id in set(conversations)]
    return convs


# ------------------------------------------------------------------ evaluation
@dataclass(frozen=True)
class Retrieved:
    """One retrieved memory: its text, source dia_ids and score."""
    text: str
    dia_ids: tuple[str, ...]
    score: float
    user_id: str = ""


SearchFn = Callable[[str, str, int], list[Retrieved]]  # (user_id, question, k) -> ranked


def count_tokens(text: str) -> int:
    """Word-and-punctuation token count (model-free, used for 'retrieved tokens')."""
    return len(_TOKEN.findall(text))


def merged_search(search: SearchFn, conv: Conversation, question: str, k: int,
                  speaker_boost: float = 0.0) -> list[Retrieved]:
    """Top-k over both speakers' stores, merged by score (as Mem0 / Memory-R1 evaluations do).

    ``speaker_boost`` > 0 (ours) adds that much to the scores from the store of the speaker
    the question names, when it names exactly one of the two.
    """
    named = [u for s, u in zip(conv.speakers, conv.user_ids)
             if re.search(rf"\b{re.escape(s)}\b", question, re.I)]
    hits: list[Retrieved] = []
    for user in conv.user_ids:
        got = search(user, question, k)
        if speaker_boost and len(named) == 1 and user == named[0]:
            got = [Retrieved(h.text, h.dia_ids, h.score + speaker_boost, h.user_id) for h in got]
        hits.extend(got)
    hits.sort(key=lambda h: -h.score)
    return hits[:k]


def evaluate_retrieval(conversations: Iterable[Conversation], search: SearchFn,
                       ks: Sequence[int] = (1, 3, 5, 10), categories: Sequence[int] = (1, 2, 3, 4),
                       progress: bool = False, merge: Callable | None = None) -> dict:
    """Recall@k of evidence dia_ids per category and overall, plus mean retrieved tokens.

    Returns ``{"questions": n, "overall": {"recall@K": r}, "by_category": {"<c>": {...}},
    "mean_retrieved_tokens": {"<K>": t}}``.
    """
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"-k: values must be positive integers, got {ks}")
    merge = merge or merged_search
    kmax = ks[-1]
    items = [(c, q) for c in conversations for q in c.qa if q.evidence and q.category in categories]
    totals = {k: 0.0 for k in ks}
    tokens = {k: 0 for k in ks}
    per_cat: dict[int, dict] = {}
    it = items
    if progress:
        from tqdm import tqdm
        it = tqdm(items, desc="retrieval eval", unit="q")
    for conv, qa in it:
        ranked = merge(search, conv, qa.question, kmax)
        gold = set(qa.evidence)
        cat = per_cat.setdefault(qa.category, {"n": 0, **{k: 0.0 for k in ks}})
        cat["n"] += 1
        for k in ks:
            covered = set()
            for h in ranked[:k]:
                covered.update(h.dia_ids)
            r = len(gold & covered) / len(gold)
            totals[k] += r
            cat[k] += r
            tokens[k] += sum(count_tokens(h.text) for h in ranked[:k])
    n = len(items)
    if n == 0:
        raise ValueError("no questions with evidence in the selected categories")
    return {
        "questions": n,
        "overall": {f"recall@{k}": totals[k] / n for k in ks},
        "by_category": {str(c): {"questions": v["n"], **{f"recall@{k}": v[k] / v["n"] for k in ks}}
                        for c, v in sorted(per_cat.items())},
        "mean_retrieved_tokens": {str(k): tokens[k] / n for k in ks},
    }


def format_report(result: dict) -> str:
    """A plain-text table: one row per category and an overall row."""
    keys = list(result["overall"])
    head = f"{'category':<18}{'n':>5}" + "".join(f"{k:>11}" for k in keys)
    lines = [head, "-" * len(head)]
    for c, row in result["by_category"].items():
        name = f"{c} {CATEGORY_NAMES.get(int(c), '')}"
        lines.append(f"{name:<18}{row['questions']:>5}" + "".join(f"{row[k]:>11.3f}" for k in keys))
    lines.append("-" * len(head))
    lines.append(f"{'overall':<18}{result['questions']:>5}" + "".join(f"{result['overall'][k]:>11.3f}" for k in keys))
    toks = "  ".join(f"k={k}: {v:.1f}" for k, v in result["mean_retrieved_tokens"].items())
    lines.append(f"mean retrieved tokens per question: {toks}")
    return "\n".join(lines)
