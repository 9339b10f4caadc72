"""Observation extractor: schema, grammar-constrained replies (random and real model), validation of
unconstrained replies (retry, skip), relative dates, ingest cache."""

import datetime as dt
import json
import re

import pytest

from tsubasa_fast.memory.evolution import make_manager
from tsubasa_fast.memory.extraction import (ObservationExtractor, extraction_schema, resolve_relative_dates,
                                            utterance_observations)
from tsubasa_fast.memory.ingest import ingest_conversation
from tsubasa_fast.memory.locomo import load_locomo

from .test_evolution import Scripted


def test_relative_dates():
    d = dt.datetime(2023, 5, 8)
    assert resolve_relative_dates("Ann ran a race yesterday", d) == "Ann ran a race on 7 May 2023"
    assert resolve_relative_dates("Ann painted it last year", d) == "Ann painted it in 2022"
    assert resolve_relative_dates("Bob starts next month", dt.datetime(2023, 12, 2)) == "Bob starts in January 2024"


def test_extract_validates_and_retries(locomo_file):
    """An unconstrained chat's reply is checked against the extraction schema: retried, then skipped."""
    (conv,) = load_locomo(locomo_file)
    s1 = conv.sessions[0]
    good = json.dumps([{"dia_id": "D1:1", "text": "Ann went to pottery class yesterday."},
                       {"dia_id": "D1:3", "text": "Ann likes clay."},
                       {"dia_id": "D1:3", "text": "Ann  likes clay."}])
    ex = ObservationExtractor(Scripted(["not json at all", good]), grounding=False)  # grounding: its own test
    out = ex.extract(s1, "Ann")
    assert ex.stats["retries"] == 1 and ex.stats["skipped"] == 0 and ex.stats["unconstrained"] == 2
    assert [(e.text, e.dia_ids) for e in out] == [("Ann went to pottery class on 30 April 2023.", ("D1:1",)),
                                                  ("Ann likes clay.", ("D1:3",))]
    assert ex.stats["duplicates"] == 1 and ex.stats["observations"] == 2
    prompt = ex.chat.calls[0][-1]["content"]
    assert "Session date: 1 May 2023" in prompt and "[D1:1] Ann:" in prompt
    ok = {"dia_id": "D1:3", "text": "Ann likes clay."}
    bad = [json.dumps([ok, {"dia_id": "D1:2", "text": "Ann went to class."}]),  # D1:2 is Bob's turn
           json.dumps([ok, {"dia_id": "D1:1", "text": "I went to class."}]),    # first person, not standalone
           json.dumps([ok, {"dia_id": "D1:1", "text": "Ann"}]),                 # a fragment
           json.dumps(["D1:1", "D1:3"]),                                         # an id list (seen with SmolLM2)
           json.dumps([ok])]                                                     # fewer than min_items
    for reply in bad:
        ex2 = ObservationExtractor(Scripted([reply, reply]))
        assert ex2.extract(s1, "Ann") is None and ex2.stats["skipped"] == 1 and ex2.stats["retries"] == 1, reply


def test_extraction_schema_names_the_speaker_and_their_turns(locomo_file):
    (conv,) = load_locomo(locomo_file)
    schema = extraction_schema(conv.sessions[0], "Bob")
    item = schema["items"]["properties"]
    assert item["dia_id"]["enum"] == ["D1:2", "D1:4"]
    assert schema["minItems"] == 2 and schema["maxItems"] == 5  # min_items 3, capped by Bob's 2 turns
    assert extraction_schema(conv.sessions[0], "Bob", min_items=1)["minItems"] == 1
    text = re.compile(item["text"]["pattern"])
    assert text.search("Bob's sister moved to Leeds in May 2023.")
    for wrong in ("Ann moved to Leeds.", "Bob moved. Then he left.", 'Bob said "hi" to me.', "Bob " + "x" * 200 + "."):
        assert not text.search(wrong), wrong
    with pytest.raises(ValueError, match="speaker 'Cid' has no turn in session 1"):
        extraction_schema(conv.sessions[0], "Cid")


def test_extraction_under_the_grammar_with_a_random_model(locomo_file, tiny_qwen3):
    """A tiny random Qwen3 writes nonsense, but every reply is a valid extraction: no retry, no skip."""
    from tsubasa_fast.llm import ChatLM

    lm = ChatLM.load(tiny_qwen3, max_new_tokens=400)
    (conv,) = load_locomo(locomo_file)
    ex = ObservationExtractor(lm, grounding=False)  # the grammar alone (nonsense is never grounded)
    for speaker in ("Ann", "Bob"):
        own = {t.dia_id for t in conv.sessions[0].turns if t.speaker == speaker}
        out = ex.extract(conv.sessions[0], speaker)
        assert 1 <= len(out) <= 5
        for e in out:
            assert re.fullmatch(rf"{speaker}('s)? [^.\"\\\n]+\.", e.text) and len(e.text) <= 140, e.text
            assert len(e.dia_ids) == 1 and e.dia_ids[0] in own
    assert ex.stats["constrained"] == 2 and ex.stats["skipped"] == ex.stats["retries"] == 0


def test_llm_ingest_caches_extraction_and_keeps_raw(store, locomo_file):
    (conv,) = load_locomo(locomo_file)
    replies = []
    for s in conv.sessions:
        replies += [json.dumps([{"text": f"Ann fact number {s.number}.", "dia_id": f"D{s.number}:1"},
                                {"text": f"Ann other fact {s.number}.", "dia_id": f"D{s.number}:3"}]), "garbage",
                    "garbage"]  # Bob's extraction fails twice -> skipped
    chat = Scripted(replies)
    ex = ObservationExtractor(chat, grounding=False)  # invented facts on purpose; grounding has its own test
    st = ingest_conversation(store, conv, "llm", make_manager("static"), extractor=ex)
    assert st.applied == 6 and st.skipped_sessions == 3 and ex.stats["skipped"] == 3
    assert len(store.raw_sessions("conv-t:Bob")) == 3  # nothing Bob said is lost
    assert any(e["op"] == "EXTRACTION_SKIPPED" for e in store.events("conv-t:Bob"))
    n_calls = len(chat.calls)
    chat.replies = ["garbage"] * 10
    again = ingest_conversation(store, conv, "llm", make_manager("static"), extractor=ex)
    assert again.applied == 0 and again.replayed == 6
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


@pytest.mark.slow
def test_smollm2_extraction_under_the_grammar_is_valid(locomo_file):
    """The default model (SmolLM2-135M) on one short session: only valid observations, no retry, no skip."""
    from tsubasa_fast.llm import ChatLM

    (conv,) = load_locomo(locomo_file)
    session = conv.sessions[0]
    ex = ObservationExtractor(ChatLM.load(None), max_items=3, min_items=2)
    out = ex.extract(session, "Ann")
    own = {t.dia_id for t in session.turns if t.speaker == "Ann"}
    assert ex.stats["constrained"] == 1 and ex.stats["skipped"] == ex.stats["retries"] == 0
    # every schema-valid fact is either kept (grounded in its turn) or dropped and counted
    kept = [] if ex.stats["fallback_sessions"] else out
    assert 2 <= len(kept) + ex.stats["duplicates"] + ex.stats["ungrounded"] <= 3
    for e in kept:
        assert re.fullmatch(r"Ann('s)? [^.\"\\\n]+\.", e.text) and len(e.text) <= 140, e.text
        assert e.dia_ids[0] in own
    if ex.stats["fallback_sessions"]:  # nothing grounded: Ann's own turns in the third person, counted
        assert out == utterance_observations(session, "Ann") and ex.stats["fallback_observations"] == len(own)
