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
import os
import re
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Sequence

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, TypeAdapter, ValidationError

from ..core import CATEGORY_NAMES, QA, Conversation, Retrieved, SearchFn, Session, Turn
from ..errors import InputError
from ..fileio import read_json

_DIA = re.compile(r"D(\d+):(\d+)")
_TOKEN = re.compile(r"\w+|[^\w\s]")


class LocomoFormatError(InputError):
    """Malformed LoCoMo file; the message names the file and the offending field."""


_DATE_FORMATS = ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %B %Y", "%I:%M %p on %d %b, %Y", "%I:%M %p on %d %b %Y")


def parse_locomo_date(value: str) -> _dt.datetime:
    """``"1:56 pm on 8 May, 2023"`` -> ``datetime(2023, 5, 8, 13, 56)`` (strptime: "99:56 pm"
    or "31 June" are errors, not guesses)."""
    if isinstance(value, str):
        text = " ".join(value.split())
        for fmt in _DATE_FORMATS:
            try:
                return _dt.datetime.strptime(text, fmt)
            except ValueError:
                continue
    raise ValueError(f"expected a date like '1:56 pm on 8 May, 2023', got {value!r}")


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


# ------------------------------------------------------------- input models
def _non_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("empty string")
    return v


def _category(v: int) -> int:
    if v not in CATEGORY_NAMES:
        raise ValueError(f"expected 1-5, got {v}")
    return v


_Text = Annotated[StrictStr, AfterValidator(_non_blank)]


class _In(BaseModel):
    model_config = ConfigDict(extra="allow")  # the dataset carries more (img_url, query, ...)


class _SampleIn(_In):
    sample_id: _Text


class _ItemIn(_In):
    sample_id: _Text
    conversation: dict[str, Any]
    qa: list[dict[str, Any]]
    observation: dict[str, Any] | None = None
    session_summary: dict[str, Any] | None = None


class _SpeakersIn(_In):
    speaker_a: _Text
    speaker_b: _Text


class _TurnIn(_In):
    speaker: StrictStr
    dia_id: StrictStr
    text: StrictStr
    blip_caption: StrictStr | None = None


class _QAIn(_In):
    question: _Text
    category: Annotated[StrictInt, AfterValidator(_category)]
    answer: Any = None
    adversarial_answer: Any = None
    evidence: list[Any] = Field(default_factory=list)


_TURNS = TypeAdapter(list[_TurnIn])
_EXPECTED = {"string_type": "str", "int_type": "int", "list_type": "a list", "dict_type": "an object",
             "model_type": "an object", "model_attributes_type": "an object", "bool_type": "bool"}


def _validate(adapter, obj: Any, where: str):
    """``adapter.validate_python(obj)``; the first error becomes a LocomoFormatError naming the field."""
    try:
        return adapter.validate_python(obj)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        got = err.get("input")
        if err["type"] == "missing":
            msg = "missing"
        elif err["type"] in _EXPECTED:
            msg = f"expected {_EXPECTED[err['type']]}, got {type(got).__name__} {got!r:.60}"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        raise LocomoFormatError(f"{where}{loc}: {msg}") from None


_ADAPTERS = {m: TypeAdapter(m) for m in (_SampleIn, _ItemIn, _SpeakersIn, _QAIn)}


def _model(model, obj: Any, where: str):
    return _validate(_ADAPTERS[model], obj, where)


def _parse_sessions(conv: dict, speakers: tuple[str, str], cw: str) -> list[Session]:
    sessions = []
    numbers = sorted(int(m.group(1)) for k in conv if (m := re.fullmatch(r"session_(\d+)", k)))
    for n in numbers:
        sw = f"{cw}.session_{n}"
        turns_in = _validate(_TURNS, conv[f"session_{n}"], sw)
        if not turns_in:
            continue
        if f"session_{n}_date_time" not in conv:
            raise LocomoFormatError(f"{cw}.session_{n}_date_time: missing")
        date_raw = conv[f"session_{n}_date_time"]
        try:
            date = parse_locomo_date(date_raw)
        except ValueError as e:
            raise LocomoFormatError(f"{cw}.session_{n}_date_time: {e}") from None
        turns = []
        for t, turn in enumerate(turns_in):
            tw = f"{sw}[{t}]"
            if turn.speaker not in speakers:
                raise LocomoFormatError(f"{tw}.speaker: {turn.speaker!r} is neither speaker_a {speakers[0]!r} "
                                        f"nor speaker_b {speakers[1]!r}")
            ids, _ = normalise_dia_ids(turn.dia_id, f"{tw}.dia_id")
            if len(ids) != 1:
                raise LocomoFormatError(f"{tw}.dia_id: expected one id like 'D{n}:{t + 1}', got {turn.dia_id!r}")
            if not turn.text.strip() and not (turn.blip_caption or "").strip():
                raise LocomoFormatError(f"{tw}.text: empty (and no blip_caption): nothing was said")
            turns.append(Turn(turn.speaker, ids[0], turn.text, turn.blip_caption))
        sessions.append(Session(n, date_raw, date, tuple(turns)))
    if not sessions:
        raise LocomoFormatError(f"{cw}: no session_N with turns")
    return sessions


def _parse_qa(items: list[dict], where: str, warnings: list[str]) -> list[QA]:
    out = []
    for q, raw in enumerate(items):
        qw = f"{where}.qa[{q}]"
        qa = _model(_QAIn, raw, qw)
        if "answer" not in raw and qa.category != 5:
            raise LocomoFormatError(f"{qw}.answer: missing (only category 5 may omit it)")
        for name in ("answer", "adversarial_answer"):
            value = getattr(qa, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int, float))):
                raise LocomoFormatError(f"{qw}.{name}: expected str or number, got {type(value).__name__}")
        if qa.answer is None and qa.category != 5:
            raise LocomoFormatError(f"{qw}.answer: null (only category 5 may omit it)")
        evidence, bad = normalise_dia_ids(qa.evidence, f"{qw}.evidence")
        if bad:
            warnings.append(f"{qw}.evidence: dropped unparsable entries {bad}")
        out.append(QA(qa.question, None if qa.answer is None else str(qa.answer), tuple(evidence), qa.category,
                      None if qa.adversarial_answer is None else str(qa.adversarial_answer)))
    return out


def _parse_observations(obs_raw: dict, sessions: list[Session], speakers: tuple[str, str], where: str,
                        warnings: list[str]) -> dict[int, dict[str, list[tuple[str, list[str]]]]]:
    """Observations per session and speaker; a key that names no session or speaker is an
    error (it used to drop the observations silently)."""
    known = {s.number for s in sessions}
    observations: dict[int, dict[str, list[tuple[str, list[str]]]]] = {}
    for key, per_speaker in obs_raw.items():
        ow = f"{where}.observation.{key}"
        m = re.fullmatch(r"session_(\d+)_observation", key)
        if not m:
            raise LocomoFormatError(f"{ow}: expected keys like 'session_3_observation'")
        number = int(m.group(1))
        if number not in known:
            raise LocomoFormatError(f"{ow}: there is no session_{number} with turns (sessions: "
                                    f"{', '.join(map(str, sorted(known)))})")
        if not isinstance(per_speaker, dict):
            raise LocomoFormatError(f"{ow}: expected an object keyed by speaker, got {type(per_speaker).__name__}")
        sess = observations.setdefault(number, {})
        for speaker, items in per_speaker.items():
            if speaker not in speakers:
                raise LocomoFormatError(f"{ow}.{speaker}: {speaker!r} is neither speaker_a {speakers[0]!r} "
                                        f"nor speaker_b {speakers[1]!r}")
            if not isinstance(items, list):
                raise LocomoFormatError(f"{ow}.{speaker}: expected a list of [text, dia_id] pairs")
            out = sess.setdefault(speaker, [])
            for i, pair in enumerate(items):
                pw = f"{ow}.{speaker}[{i}]"
                if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
                    raise LocomoFormatError(f"{pw}: expected [text, dia_id], got {pair!r:.80}")
                if not pair[0].strip():
                    raise LocomoFormatError(f"{pw}[0]: empty observation text")
                ids, bad = normalise_dia_ids(pair[1], pw + "[1]")
                if bad:
                    warnings.append(f"{pw}: dropped unparsable dia_ids {bad}")
                out.append((pair[0], ids))
    return observations


def _parse_conversation(item: Any, where: str) -> Conversation:
    sample_id = _model(_SampleIn, item, where).sample_id
    where = f"{where} ({sample_id})"
    cw = f"{where}.conversation"
    if isinstance(item.get("conversation"), dict):  # the speakers first: every other check needs them
        _model(_SpeakersIn, item["conversation"], cw)
    it = _model(_ItemIn, item, where)
    sp = _model(_SpeakersIn, it.conversation, cw)
    speakers = (sp.speaker_a, sp.speaker_b)
    if sp.speaker_a == sp.speaker_b:
        raise LocomoFormatError(f"{cw}.speaker_b: the same as speaker_a ({sp.speaker_a!r})")
    warnings: list[str] = []
    sessions = _parse_sessions(it.conversation, speakers, cw)
    qa_list = _parse_qa(it.qa, where, warnings)
    observations = _parse_observations(it.observation or {}, sessions, speakers, where, warnings)
    summaries = {}
    for key, text in (it.session_summary or {}).items():
        m = re.fullmatch(r"session_(\d+)_summary", key)
        if m and isinstance(text, str):
            summaries[int(m.group(1))] = text
    return Conversation(sample_id, sp.speaker_a, sp.speaker_b, sessions, qa_list, observations, summaries, warnings)


def load_locomo(path: str | os.PathLike, conversations: Sequence[str] | None = None) -> list[Conversation]:
    """Load and validate a locomo10.json-format file (any path), optionally a subset by sample_id.

    Everything is checked before anything is returned, so an ingest never stops midway on
    bad input; every error names the file and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise LocomoFormatError(f"no such file {path}", field="locomo")
    try:
        data = read_json(path)
    except ValueError as e:
        raise LocomoFormatError(str(e)) from None
    if not isinstance(data, list):
        raise LocomoFormatError(f"{path}: top level must be a list of conversations, got {type(data).__name__}")
    try:
        convs = [_parse_conversation(item, f"conversation[{i}]") for i, item in enumerate(data)]
    except LocomoFormatError as e:
        raise LocomoFormatError(f"{path}: {e}") from None
    ids = [c.sample_id for c in convs]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise LocomoFormatError(f"{path}: sample_id {dup[0]!r} appears more than once")
    if conversations:
        known = set(ids)
        missing = [c for c in conversations if c not in known]
        if missing:
            raise InputError(f"{missing} not in {path} (has {sorted(known)})", field="conversation")
        convs = [c for c in convs if c.sample_id in set(conversations)]
    return convs


# ------------------------------------------------------------------ evaluation
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


def evidence_recall(gold: set[str], cited: Sequence[Sequence[str]], k: int) -> float:
    """Share of the ``gold`` evidence dia_ids cited by the first ``k`` results (``cited``: each
    result's dia_ids, best first)."""
    covered: set[str] = set()
    for ids in cited[:k]:
        covered.update(ids)
    return len(gold & covered) / len(gold)


def evaluate_retrieval(conversations: Iterable[Conversation], search: SearchFn,
                       ks: Sequence[int] = (1, 3, 5, 10), categories: Sequence[int] = (1, 2, 3, 4),
                       progress: bool = False, merge: Callable | None = None) -> dict:
    """Recall@k of evidence dia_ids per category and overall, plus mean retrieved tokens.

    Returns ``{"questions": n, "overall": {"recall@K": r}, "by_category": {"<c>": {...}},
    "mean_retrieved_tokens": {"<K>": t}}``.
    """
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise InputError(f"values must be positive integers, got {ks}", field="k")
    merge = merge or merged_search
    kmax = ks[-1]
    items = [(c, q) for c in conversations for q in c.qa if q.evidence and q.category in categories]
    totals = {k: 0.0 for k in ks}
    tokens = {k: 0 for k in ks}
    per_cat: dict[int, dict] = {}
    it = items
    if progress:
        from ..progress import progress_bar
        it = progress_bar(items, desc="retrieval eval", unit="q")
    for conv, qa in it:
        ranked = merge(search, conv, qa.question, kmax)
        gold = set(qa.evidence)
        cat = per_cat.setdefault(qa.category, {"n": 0, **{k: 0.0 for k in ks}})
        cat["n"] += 1
        cited = [h.dia_ids for h in ranked]
        for k in ks:
            r = evidence_recall(gold, cited, k)
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
