"""tsubasa_fast.history: the user-history format (JSON, JSONL, LoCoMo) and the bundled sample user."""

import datetime as dt
import json
import os
from importlib import resources
from pathlib import Path

import pytest

from .helpers import LOCOMO_DEV
from tsubasa_fast.history import HistoryFormatError, load_eval_questions, load_history, parse_history_date
from tsubasa_fast.core import Conversation, Session, Turn

SAMPLE = Path(resources.files("tsubasa_fast") / "data" / "sample_user.json")


def _sessions():
    return [
        {"date": "2024-03-02", "turns": [{"speaker": "Maya", "text": "I moved to Bristol."},
                                         {"speaker": "Sam", "text": "Congrats!"}]},
        {"date": "2024-03-09T18:30", "turns": [{"speaker": "Sam", "text": "How's the job?"},
                                               {"speaker": "Maya", "text": "I love it."},
                                               {"speaker": "Maya", "text": "Also I run now."}]},
        {"date": "1:56 pm on 8 May, 2024", "turns": [{"speaker": "Maya", "text": "Half marathon done."}]},
    ]


def _write(tmp_path, data, name="hist.json"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


def _err(tmp_path, data, user="Maya", name="hist.json"):
    with pytest.raises(HistoryFormatError) as e:
        load_history(_write(tmp_path, data, name), user)
    return str(e.value)


# ------------------------------------------------------------------ accepted inputs
def test_json_list_gives_locomo_structure(tmp_path):
    conv, user = load_history(_write(tmp_path, _sessions()), "Maya")
    assert isinstance(conv, Conversation) and user == "Maya"
    assert conv.sample_id == "hist" and conv.speakers == ("Maya", "Sam") and conv.qa == []
    assert [s.number for s in conv.sessions] == [1, 2, 3]
    assert all(isinstance(s, Session) and all(isinstance(t, Turn) for t in s.turns) for s in conv.sessions)
    assert [t.dia_id for t in conv.sessions[1].turns] == ["D2:1", "D2:2", "D2:3"]
    assert conv.sessions[1].turns[1] == Turn("Maya", "D2:2", "I love it.", None)
    assert [s.date for s in conv.sessions] == [dt.datetime(2024, 3, 2), dt.datetime(2024, 3, 9, 18, 30),
                                               dt.datetime(2024, 5, 8, 13, 56)]
    assert conv.sessions[0].date_time == "2024-03-02" and conv.sessions[2].date_str == "8 May 2024"
    assert conv.user_id(user) == "hist:Maya" and conv.warnings == []


def test_json_object_user_default_id_and_session_ids(tmp_path):
    sessions = _sessions()
    sessions[0]["id"] = 4
    sessions[1]["id"] = "session_7"
    data = {"user": "Maya", "id": "maya-1", "sessions": sessions, "eval_questions": []}
    conv, user = load_history(_write(tmp_path, data), None)
    assert user == "Maya" and conv.sample_id == "maya-1"
    assert [s.number for s in conv.sessions] == [4, 7, 3]
    assert conv.sessions[1].turns[0].dia_id == "D7:1"
    # --user wins over the file's default: personalising for the partner is allowed
    conv, user = load_history(tmp_path / "hist.json", "Sam")
    assert user == "Sam"


def test_jsonl_by_suffix_and_by_content(tmp_path):
    text = "\n".join(json.dumps(s) for s in _sessions()) + "\n\n"
    for name in ("h.jsonl", "h.json"):
        conv, user = load_history(_write(tmp_path, text, name), "Maya")
        assert len(conv.sessions) == 3 and conv.sessions[2].turns[0].dia_id == "D3:1"


def test_sessions_sorted_by_date_with_warning_and_stable_ids(tmp_path):
    s = _sessions()
    conv, _ = load_history(_write(tmp_path, [s[1], s[0], s[2]]), "Maya")
    assert [x.date.day for x in conv.sessions] == [2, 9, 8]  # 2 Mar, 9 Mar, 8 May
    assert [x.number for x in conv.sessions] == [2, 1, 3]  # numbers follow the file, ids stay stable
    assert conv.sessions[0].turns[0].dia_id == "D2:1" and "date order" in conv.warnings[0]


@pytest.mark.parametrize("value,expected", [
    ("2023-08-20", dt.datetime(2023, 8, 20)),
    ("2023-08-20T12:05", dt.datetime(2023, 8, 20, 12, 5)),
    ("2023-08-20 12:05:09", dt.datetime(2023, 8, 20, 12, 5, 9)),
    ("2023-08-20T12:05:09.123Z", dt.datetime(2023, 8, 20, 12, 5, 9)),
    ("2023-08-20T12:05+02:00", dt.datetime(2023, 8, 20, 12, 5)),
    ("10:05 am on 3 Jan, 2022", dt.datetime(2022, 1, 3, 10, 5)),
    ("12:30 am on 1 December, 2022", dt.datetime(2022, 12, 1, 0, 30)),
])
def test_parse_history_date(value, expected):
    assert parse_history_date(value) == expected


def test_ingest_consumes_history_unchanged(tmp_path):
    from tsubasa_fast.memory import HashingEmbedder, MemoryStore
    from tsubasa_fast.memory.ingest import ingest_conversation

    conv, user = load_history(_write(tmp_path, _sessions()), "Maya")
    store = MemoryStore(tmp_path / "store", HashingEmbedder(dim=64))
    try:
        stats = ingest_conversation(store, conv, "utterances")
        assert stats.observations == 6 and stats.applied == 6
        assert store.count(conv.user_id(user)) == 4 and store.count(conv.user_id("Sam")) == 2
        hit = store.search(conv.user_id(user), "Where did Maya move?", k=1)[0]
        assert "Bristol" in hit.record.text and hit.record.dia_ids == ["D1:1"]  # provenance
        again = ingest_conversation(store, conv, "utterances")  # idempotent replay
        assert again.replayed == 6 and again.applied == 0
    finally:
        store.close()


# ------------------------------------------------------------------ LoCoMo files
def _locomo(sample_id, a, b):
    return {"sample_id": sample_id, "qa": [],
            "conversation": {"speaker_a": a, "speaker_b": b,
                             "session_1_date_time": "1:56 pm on 8 May, 2023",
                             "session_1": [{"speaker": a, "dia_id": "D1:1", "text": "hi"},
                                           {"speaker": b, "dia_id": "D1:2", "text": "hello"}]}}


def test_locomo_file_picks_the_conversation(tmp_path):
    p = _write(tmp_path, [_locomo("conv-1", "Ann", "Bob"), _locomo("conv-2", "Cat", "Ann")], "lc.json")
    conv, user = load_history(p, "Bob")
    assert conv.sample_id == "conv-1" and user == "Bob" and conv.sessions[0].turns[1].dia_id == "D1:2"
    msg = _err(tmp_path, [_locomo("conv-1", "Ann", "Bob"), _locomo("conv-2", "Cat", "Ann")], "Ann", "lc.json")
    assert "2 conversations" in msg and "conv-1:Ann" in msg and "conv-2:Ann" in msg
    conv, user = load_history(p, "conv-2:Ann")
    assert conv.sample_id == "conv-2" and user == "Ann"
    msg = _err(tmp_path, [_locomo("conv-1", "Ann", "Bob")], "bob", "lc.json")
    assert "no conversation has speaker 'bob'" in msg and "did you mean 'conv-1:Bob'" in msg
    with pytest.raises(HistoryFormatError) as e:  # the library names its argument, not a CLI flag
        load_history(_write(tmp_path, [_locomo("conv-1", "Ann", "Bob")], "lc.json"), None)
    assert e.value.field == "user" and "several users" in e.value.message and "--" not in str(e.value)


def test_locomo_format_errors_become_history_errors(tmp_path):
    bad = _locomo("conv-1", "Ann", "Bob")
    bad["conversation"]["session_1"][1]["speaker"] = "Zed"
    msg = _err(tmp_path, [bad], "Ann", "lc.json")
    assert "lc.json" in msg and "session_1[1].speaker" in msg


def test_real_locomo_dev():
    conv, user = load_history(LOCOMO_DEV, "Caroline")
    assert conv.sample_id == "conv-26" and user == "Caroline" and len(conv.sessions) > 10


# ------------------------------------------------------------------ errors name the place
def test_unparseable_date(tmp_path):
    s = _sessions()
    s[1]["date"] = "March 9th"
    msg = _err(tmp_path, s)
    assert "hist.json: sessions[1].date: cannot parse 'March 9th'" in msg
    s[1]["date"] = "2024-02-30"
    assert "sessions[1].date: invalid date '2024-02-30'" in _err(tmp_path, s)
    del s[1]["date"]
    assert "sessions[1].date: missing" in _err(tmp_path, s)


def test_empty_session_and_no_sessions(tmp_path):
    s = _sessions()
    s[2]["turns"] = []
    assert "sessions[2].turns: empty session" in _err(tmp_path, s)
    assert "no sessions" in _err(tmp_path, [])
    assert "no sessions" in _err(tmp_path, {"user": "Maya", "sessions": []})


def test_bad_turn_fields(tmp_path):
    s = _sessions()
    s[1]["turns"][2]["speaker"] = 5
    assert "hist.json: sessions[1].turns[2].speaker: expected a non-empty string, got 5" in _err(tmp_path, s)
    s = _sessions()
    del s[0]["turns"][1]["text"]
    assert "sessions[0].turns[1].text: missing" in _err(tmp_path, s)
    s = _sessions()
    s[0]["turns"][0] = "Maya: hi"
    assert "sessions[0].turns[0]: expected" in _err(tmp_path, s)


def test_unknown_user(tmp_path):
    msg = _err(tmp_path, _sessions(), user="Mia")
    assert "user 'Mia' never speaks" in msg and "'Maya', 'Sam'" in msg
    assert "did you mean 'Maya'" in _err(tmp_path, _sessions(), user="maya")
    assert "user: " in _err(tmp_path, _sessions(), user=None) and "names no user" in _err(tmp_path, _sessions(), None)


def test_third_speaker_and_monologue(tmp_path):
    s = _sessions()
    s[2]["turns"].append({"speaker": "Lena", "text": "hi!"})
    assert "sessions[2].turns[1].speaker: a third speaker 'Lena'" in _err(tmp_path, s)
    solo = [{"date": "2024-01-01", "turns": [{"speaker": "Maya", "text": "dear diary"}]}]
    assert "only 'Maya' speaks" in _err(tmp_path, solo)


def test_duplicate_session_ids(tmp_path):
    s = _sessions()
    s[0]["id"] = 2
    assert "sessions[1].id: session number 2 is used twice" in _err(tmp_path, s)
    s[0]["id"] = "two"
    assert "sessions[0].id: expected a positive session number" in _err(tmp_path, s)


def test_not_json_names_the_line(tmp_path):
    msg = _err(tmp_path, '[\n {"date": "2024-01-01",\n  "turns": [}\n]')
    assert "hist.json:3: not valid JSON" in msg
    lines = [json.dumps(s) for s in _sessions()]
    lines[1] = lines[1][:-1]
    assert "h.jsonl:2: not valid JSON" in _err(tmp_path, "\n".join(lines), name="h.jsonl")
    lines = [json.dumps(s) for s in _sessions()]
    lines.insert(1, "")
    bad = _sessions()
    bad[2]["date"] = "soon"
    lines[3] = json.dumps(bad[2])
    assert "h.jsonl:4: date: cannot parse 'soon'" in _err(tmp_path, "\n".join(lines), name="h.jsonl")
    assert "h.jsonl:1: expected a session object" in _err(tmp_path, "[1]\n[2]", name="h.jsonl")
    assert "top level must be" in _err(tmp_path, '"hello"')
    assert "sessions: missing" in _err(tmp_path, {"user": "Maya", "session": []})


def test_unreadable_file(tmp_path):
    with pytest.raises(HistoryFormatError, match="no such file"):
        load_history(tmp_path / "missing.json", "Maya")
    with pytest.raises(HistoryFormatError, match="is not a file"):
        load_history(tmp_path, "Maya")
    p = tmp_path / "bin.json"
    p.write_bytes(b"\xff\xfe\x00garbage\x80")
    with pytest.raises(HistoryFormatError, match="not UTF-8"):
        load_history(p, "Maya")
    if os.geteuid() != 0:
        q = _write(tmp_path, _sessions(), "locked.json")
        q.chmod(0)
        try:
            with pytest.raises(HistoryFormatError, match="locked.json: cannot read"):
                load_history(q, "Maya")
        finally:
            q.chmod(0o600)


# ------------------------------------------------------------------ the bundled sample user
def test_sample_user_is_a_valid_evolving_history():
    conv, user = load_history(SAMPLE)
    assert user == "Maya" and set(conv.speakers) == {"Maya", "Sam"} and conv.warnings == []
    assert 8 <= len(conv.sessions) <= 10
    dates = [s.date for s in conv.sessions]
    assert dates == sorted(dates) and 300 <= (dates[-1] - dates[0]).days <= 400
    assert all(8 <= len(s.turns) <= 16 for s in conv.sessions)
    text = " ".join(t.text for s in conv.sessions for t in s.turns)
    for fact in ("Leeds", "Bristol", "Northway Freight", "Harbour Health", "vegetarian", "pescatarian",
                 "hate running", "Half Marathon", "Sunday", "piano", "Miso", "Lena"):
        assert fact in text, fact


def test_sample_eval_questions_cite_real_turns():
    conv, _ = load_history(SAMPLE)
    turns = {t.dia_id: t for s in conv.sessions for t in s.turns}
    qs = load_eval_questions(SAMPLE)
    assert 12 <= len(qs) <= 16
    assert {q.category for q in qs} == {"single-hop", "temporal", "multi-hop", "evolving"}
    for q in qs:
        assert q.evidence and all(e in turns for e in q.evidence), q
    latest = {q.question: q for q in qs}
    # answers follow the evolved state, and the evidence of the evolved ones reaches late sessions
    assert latest["Which city does Maya live in now?"].answer == "Bristol"
    assert latest["Does Maya eat fish?"].answer.startswith("Yes")
    assert max(int(e[1:].split(":")[0]) for e in latest["How does Maya feel about running?"].evidence) == 9
    # the temporal answers are derivable: the cited turn's session date lies after the event
    when = {s.number: s.date for s in conv.sessions}
    for q in qs:
        if q.category == "temporal":
            event = dt.datetime.strptime(q.answer, "%d %B %Y")
            assert any(when[int(e[1:].split(":")[0])] >= event for e in q.evidence), q


def test_load_eval_questions_validation(tmp_path):
    assert load_eval_questions(_write(tmp_path, _sessions())) == []
    bad = {"sessions": _sessions(), "eval_questions": [{"question": "q", "answer": 3, "category": "trivia"}]}
    with pytest.raises(HistoryFormatError, match=r"eval_questions\[0\]\.category"):
        load_eval_questions(_write(tmp_path, bad))
    bad["eval_questions"][0].update(category="temporal", evidence=["3:4"])
    with pytest.raises(HistoryFormatError, match=r"eval_questions\[0\]\.evidence"):
        load_eval_questions(_write(tmp_path, bad))
    bad["eval_questions"][0]["evidence"] = ["D3:4"]
    (q,) = load_eval_questions(_write(tmp_path, bad))
    assert q.answer == "3" and q.evidence == ("D3:4",)


def test_history_only_imports_the_core_types_and_the_loader():
    import ast

    import tsubasa_fast.history as h
    ours = set()
    for node in ast.walk(ast.parse(Path(h.__file__).read_text())):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("tsubasa_fast")):
            ours.add(node.module)
        elif isinstance(node, ast.Import):
            ours.update(a.name for a in node.names if a.name.startswith("tsubasa_fast"))
    assert ours == {"core", "memory.locomo", "errors"}


def test_deeply_nested_json_is_a_clear_error(tmp_path):
    assert "nested too deeply" in _err(tmp_path, "[" * 100_000)


def test_structure_errors_name_the_field_exactly(tmp_path):
    """The pydantic models' errors come out as one HistoryFormatError with the file and the field."""
    s = _sessions()
    s[0]["turns"][1]["blip_caption"] = 7
    assert _err(tmp_path, s).endswith("hist.json: sessions[0].turns[1].blip_caption: expected a non-empty string, got 7")
    s = _sessions()
    s[1]["turns"] = "hi"
    assert _err(tmp_path, s).endswith("hist.json: sessions[1].turns: expected a list of turns, got str")
    s = _sessions()
    s[2]["turns"][0]["text"] = "   "
    assert _err(tmp_path, s).endswith("sessions[2].turns[0].text: expected a non-empty string, got '   '")
    assert _err(tmp_path, {"user": 3, "sessions": _sessions()}).endswith("hist.json: user: expected a non-empty string, got 3")
    assert _err(tmp_path, {"user": "Maya", "sessions": {"a": 1}}).endswith("hist.json: sessions: expected a list, got dict")
    lines = [json.dumps(x) for x in _sessions()]
    lines[2] = json.dumps({"date": "2024-05-08", "turns": [{"speaker": "Maya"}]})
    assert _err(tmp_path, "\n".join(lines), name="h.jsonl").endswith("h.jsonl:3: turns[0].text: missing")
    base = {"user": "Maya", "sessions": _sessions()}
    q = {"question": "Q?", "answer": "A", "category": "temporal", "evidence": ["D1:1", "D1"]}
    with pytest.raises(HistoryFormatError, match=r"eval_questions\[0\]\.evidence\[1\]: expected a dia_id like 'D3:4', got 'D1'"):
        load_eval_questions(_write(tmp_path, dict(base, eval_questions=[q])))
    with pytest.raises(HistoryFormatError, match=r"eval_questions\[0\]\.category: expected one of .*got 'soon'"):
        load_eval_questions(_write(tmp_path, dict(base, eval_questions=[dict(q, category="soon")])))
