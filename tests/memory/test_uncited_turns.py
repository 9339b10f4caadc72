"""Turns no observation cites become observations of their own, through the manager: what
the extraction missed is remembered, and a changed state in it is still RECONCILEd."""

import json

import pytest

from tsubasa_fast.memory import MiniLMEmbedder
from tsubasa_fast.memory.evolution import make_manager
from tsubasa_fast.memory.ingest import UNCITED_TURN, ingest_conversation
from tsubasa_fast.memory.locomo import load_locomo
from tsubasa_fast.memory.retrieval import Retriever
from tsubasa_fast.memory.store import MemoryStore


def _locomo(tmp_path):
    """Maya says she lives in Leeds (no observation cites that turn); months later the dataset's
    observation says she moved to Bristol."""
    conv = {"speaker_a": "Maya", "speaker_b": "Sam",
            "session_1_date_time": "1:56 pm on 14 January, 2023",
            "session_1": [{"speaker": "Maya", "dia_id": "D1:1", "text": "I live in Leeds."},
                          {"speaker": "Sam", "dia_id": "D1:2", "text": "Nice, how is your cat?"},
                          {"speaker": "Maya", "dia_id": "D1:3", "text": "My cat Tom is great."}],
            "session_2_date_time": "10:00 am on 3 June, 2023",
            "session_2": [{"speaker": "Maya", "dia_id": "D2:1", "text": "Big news: we moved to Bristol!"},
                          {"speaker": "Sam", "dia_id": "D2:2", "text": "Wow, congratulations."}]}
    obs = {"session_1_observation": {"Maya": [["Maya has a cat named Tom.", "D1:3"]], "Sam": []},
           "session_2_observation": {"Maya": [["Maya moved to Bristol.", "D2:1"]],
                                     "Sam": [["Sam congratulated Maya.", "D2:2"]]}}
    path = tmp_path / "maya.json"
    path.write_text(json.dumps([{"sample_id": "c", "conversation": conv, "qa": [], "observation": obs}]))
    return load_locomo(path)[0]


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEmbedder()


def test_an_uncited_turn_is_remembered_and_reconciled(tmp_path, minilm):
    conv = _locomo(tmp_path)
    store = MemoryStore(tmp_path / "st", minilm)
    try:
        stats = ingest_conversation(store, conv, "observations", make_manager("rule"), date_prefix=False)
        # Maya D1:1 and Sam D1:2 are cited by no observation of their speaker; D2:2 is Sam's own
        assert stats.uncited_turns == 2 and stats.observations == 5
        events = {e["op_key"]: e["op"] for e in store.events() if e["op_key"]}
        assert events["turn:c:D1:1"] == "ADD" and events["turn:c:D1:2"] == "ADD"
        assert "turn:c:D1:3" not in events and "turn:c:D2:1" not in events
        assert events["observations:c:2:Maya:0"] == "RECONCILE"
        maya = store.all("c:Maya")
        live = sorted(r.text for r in maya)
        assert "Maya lives in Leeds." not in live  # the stale turn does not stand alone
        top = Retriever(store).search("c:Maya", "Where does Maya live now?", 1)[0]
        assert "Bristol" in top.text and "Leeds" in top.text and "14 January 2023" in top.text
        assert set(top.dia_ids) == {"D1:1", "D2:1"}
        sam = store.all("c:Sam")
        assert sorted(r.text for r in sam) == ["Nice, how is Maya's cat?", "Sam congratulated Maya."]
        assert [r.source["kind"] for r in sam if r.text.startswith("Nice")] == [UNCITED_TURN]
        again = ingest_conversation(store, conv, "observations", make_manager("rule"), date_prefix=False)    # idempotent
        assert again.applied == 0 and again.replayed == 5
    finally:
        store.close()


def test_off_keeps_only_the_observations(tmp_path, minilm):
    conv = _locomo(tmp_path)
    store = MemoryStore(tmp_path / "st", minilm)
    try:
        stats = ingest_conversation(store, conv, "observations", make_manager("static"), date_prefix=False,
                                     uncited_turns=False)
        assert stats.uncited_turns == 0 and stats.applied == 3
        assert sorted(r.text for r in store.all("c:Maya")) == ["Maya has a cat named Tom.", "Maya moved to Bristol."]
    finally:
        store.close()
