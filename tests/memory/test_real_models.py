"""Real models: MiniLM embeddings in a store, and SmolLM2-135M-Instruct as the extractor."""

import json

import numpy as np
import pytest

from tsubasa_fast.memory import MemoryStore, MiniLMEmbedder
from tsubasa_fast.memory.evolution import make_manager
from tsubasa_fast.memory.extraction import ObservationExtractor
from tsubasa_fast.memory.ingest import ingest_conversation
from tsubasa_fast.memory.locomo import load_locomo

from .conftest import tiny_locomo


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEmbedder()


def test_minilm_embeddings_are_semantic(minilm, tmp_path):
    v = minilm.embed(["I adopted a puppy", "We got a new dog", "My tax return is due", "I adopted a puppy"])
    assert v.shape == (4, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    assert np.allclose(v[0], v[3], atol=1e-5)  # batching and order do not change the result
    single = minilm.embed(["My tax return is due"])[0]
    assert np.allclose(single, v[2], atol=1e-4)
    s = MemoryStore(tmp_path / "s", minilm)
    for text in ["Caroline adopted a rescue dog", "Caroline is studying counseling",
                 "Melanie painted a lake sunrise", "Melanie goes camping with her kids"]:
        s.add("u", text)
    assert s.search("u", "Does Caroline have pets?", k=1)[0].record.text == "Caroline adopted a rescue dog"
    assert s.search("u", "What art does Melanie make?", k=1)[0].record.text == "Melanie painted a lake sunrise"
    s.close()


def test_smollm2_extractor_on_tiny_session(tmp_path):
    from tsubasa_fast.llm import ChatLM

    lm = ChatLM.load(None, max_new_tokens=64)
    replies = []

    def chat(messages):
        replies.append(lm(messages))
        return replies[-1]

    data = tiny_locomo(n_sessions=1, turns=4)
    path = tmp_path / "one.json"
    path.write_text(json.dumps(data))
    (conv,) = load_locomo(path)
    store = MemoryStore(tmp_path / "s", MiniLMEmbedder())
    ex = ObservationExtractor(chat)
    stats = ingest_conversation(store, conv, "llm", make_manager("static"), extractor=ex)
    # whatever the 135M model produced, every session is either extracted or counted as skipped
    assert ex.stats["sessions"] == 2
    assert ex.stats["skipped"] + sum(1 for k in ("Ann", "Bob")
                                     if store.kv_get(f"extract:llm:conv-t:1:{k}") is not None) == 2
    assert stats.applied == ex.stats["observations"] == store.count()
    assert len(store.raw_sessions("conv-t:Ann")) == 1
    assert 2 <= len(replies) <= 4 and all(isinstance(r, str) and r.strip() for r in replies)
    store.close()


def test_stored_unit_vectors_equal_single_minilm_embeddings(minilm, tmp_path):
    """The vectors an UPDATE stores for its observation (embedded in the pipeline's batch) are
    MiniLM's embedding of that observation alone, computed afresh."""
    import sqlite3

    from tsubasa_fast.memory.evolution import Decision, Observation, apply_decision

    texts = ["Caroline adopted a rescue dog.", "Caroline's dog is called Max and loves the beach.",
             "Caroline is studying counseling at night school."]
    vecs = minilm.embed(texts)
    obs = [Observation("u", t, "2023-05-08", {"dia_ids": [f"D1:{i}"]}, f"k{i}", vec=v)
           for i, (t, v) in enumerate(zip(texts, vecs))]
    s = MemoryStore(tmp_path / "s", minilm)
    rec = apply_decision(s, obs[0], Decision("ADD"))
    rec = apply_decision(s, obs[1], Decision("UPDATE", rec.id, "Caroline adopted a rescue dog, Max, who loves the beach."))
    apply_decision(s, obs[2], Decision("ADD"))
    s.close()
    db = sqlite3.connect(tmp_path / "s" / "memory.sqlite")
    rows = db.execute("SELECT record_id, embedding FROM observation_vectors").fetchall()
    db.close()
    assert [r for r, _ in rows] == [rec.id]
    fresh = MiniLMEmbedder().embed([texts[1]])[0]  # a second model instance, the text alone
    np.testing.assert_allclose(np.frombuffer(rows[0][1], np.float32), fresh, atol=1e-4)
