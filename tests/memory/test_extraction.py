"""Observation extractor (scripted LLM): validation, retry, skip, relative dates, ingest cache."""

import datetime as dt
import json

from tsubasa_fast.memory.evolution import make_manager
from tsubasa_fast.memory.extraction import ObservationExtractor, resolve_relative_dates
from tsubasa_fast.memory.ingest import ingest_conversation
from tsubasa_fast.memory.locomo import load_locomo

from .test_evolution import Scripted


def test_relative_dates():
    d = dt.datetime(2023, 5, 8)
    assert resolve_relative_dates("Ann ran a race yesterday", d) == "Ann ran a race on 7 May 2023"
    assert resolve_relative_dates("Ann painted it last year", d) == "Ann painted it in 2022"
    assert resolve_relative_dates("Bob starts next month", dt.datetime(2023, 12, 2)) == "Bob starts in January 2024"


def test_extract_validates_and_retries(locomo_file):
    (conv,) = load_locomo(locomo_file)
    s1 = conv.sessions[0]
    good = json.dumps([{"text": "Ann went to pottery class yesterday", "dia_ids": ["D1:1", "D99:1"]},
                       "Ann likes clay"])
    ex = ObservationExtractor(Scripted(["not json at all", good]))
    out = ex.extract(s1, "Ann")
    assert ex.stats["retries"] == 1 and ex.stats["skipped"] == 0
    assert out[0].text == "Ann went to pottery class on 30 April 2023" and out[0].dia_ids == ("D1:1",)
    assert out[1].dia_ids  # attributed by word overlap to one of Ann's turns
    prompt = ex.chat.calls[0][1]["content"]
    assert "Session date: 1 May 2023" in prompt and "[D1:1] Ann:" in prompt
    ex2 = ObservationExtractor(Scripted(["[{", "[{\"nope\": 1}]"]))
    assert ex2.extract(s1, "Ann") is None and ex2.stats["skipped"] == 1


def test_llm_ingest_caches_extraction_and_keeps_raw(store, locomo_file):
    (conv,) = load_locomo(locomo_file)
    replies = []
    for s in conv.sessions:
        replies += [json.dumps([{"text": f"Ann fact number {s.number}", "dia_ids": [f"D{s.number}:1"]}]), "garbage",
                    "garbage"]  # Bob's extraction fails twice -> skipped
    chat = Scripted(replies)
    ex = ObservationExtractor(chat)
    st = ingest_conversation(store, conv, "llm", make_manager("static"), extractor=ex)
    assert st.applied == 3 and st.skipped_sessions == 3 and ex.stats["skipped"] == 3
    assert len(store.raw_sessions("conv-t:Bob")) == 3  # nothing Bob said is lost
    assert any(e["op"] == "EXTRACTION_SKIPPED" for e in store.events("conv-t:Bob"))
    n_calls = len(chat.calls)
    chat.replies = ["garbage"] * 10
    again = ingest_conversation(store, conv, "llm", make_manager("static"), extractor=ex)
    assert again.applied == 0 and again.replayed == 3
    assert len(chat.calls) == n_calls + 6  # Ann's sessions cached; only the skipped ones retried


def test_malformed_extraction_falls_back_to_the_users_utterances(tmp_path):
    """A session the LLM cannot extract still yields memories (its own words) and is counted."""
    import json

    from tsubasa_fast.memory import HashingEmbedder, MemoryStore
    from tsubasa_fast.memory.evolution import make_manager
    from tsubasa_fast.memory.extraction import ObservationExtractor
    from tsubasa_fast.memory.ingest import ingest_conversation
    from tsubasa_fast.memory.locomo import load_locomo

    from .conftest import tiny_locomo

    path = tmp_path / "c.json"
    path.write_text(json.dumps(tiny_locomo(n_sessions=1, turns=4)))
    (conv,) = load_locomo(path)
    store = MemoryStore(tmp_path / "s", HashingEmbedder())
    ex = ObservationExtractor(lambda messages: "I cannot do that.")
    speaker = conv.speakers[0]
    stats = ingest_conversation(store, conv, "llm", make_manager("static"), extractor=ex,
                                speakers=(speaker,), utterance_fallback=True)
    own = [t for t in conv.sessions[0].turns if t.speaker == speaker]
    assert stats.skipped_sessions == 1 and ex.stats["skipped"] == 1
    assert store.count(conv.user_id(speaker)) == len(own) and store.users() == [conv.user_id(speaker)]
    assert sorted(r.dia_ids[0] for r in store.all(conv.user_id(speaker))) == sorted(t.dia_id for t in own)
    store.close()


def test_id_lists_and_fragments_are_not_observations():
    """Seen with SmolLM2-135M: a JSON list of dia ids. It must count as malformed (retry, then
    skip or fall back), not become memories."""
    import pytest

    from tsubasa_fast.memory.extraction import parse_extraction
    from tsubasa_fast.memory.locomo import Session, Turn
    import datetime as dt

    session = Session(1, "1:00 pm on 5 March, 2023", dt.datetime(2023, 3, 5, 13, 0),
                      (Turn("Maya", "D1:1", "I moved to Leeds in January."),))
    with pytest.raises(ValueError, match="no standalone observation"):
        parse_extraction('["D1:1", "D1:2", "Maya"]', session, "Maya")
    got = parse_extraction('["D1:1", "Maya moved to Leeds in January 2023."]', session, "Maya")
    assert [e.text for e in got] == ["Maya moved to Leeds in January 2023."]
