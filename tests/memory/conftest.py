"""Fixtures for memory tests: a hashing-embedder store and a tiny synthetic LoCoMo file."""

import json

import pytest

from tsubasa_fast.memory import HashingEmbedder, MemoryStore

def tiny_locomo(n_sessions: int = 3, turns: int = 4) -> list:
    conv = {"speaker_a": "Ann", "speaker_b": "Bob"}
    obs = {}
    topics = ["pottery class", "hiking trip", "new puppy", "guitar lessons", "job interview", "garden beans"]
    for s in range(1, n_sessions + 1):
        month = ["May", "June", "July", "August"][(s - 1) // 28 % 4]
        conv[f"session_{s}_date_time"] = f"1:56 pm on {(s - 1) % 28 + 1} {month}, 2023"
        conv[f"session_{s}"] = [
            {"speaker": "Ann" if t % 2 == 0 else "Bob", "dia_id": f"D{s}:{t + 1}",
             "text": f"In session {s}, turn {t}, I talked about my {topics[(s + t) % len(topics)]}."}
            for t in range(turns)]
        obs[f"session_{s}_observation"] = {
            "Ann": [[f"Ann went to a {topics[s % len(topics)]} in session {s}.", f"D{s}:1"]],
            "Bob": [[f"Bob enjoys {topics[(s + 1) % len(topics)]}.", [f"D{s}:2"]]]}
    conv["session_1"][0]["blip_caption"] = "a photo of a clay bowl"
    conv[f"session_{n_sessions + 1}_date_time"] = "2:00 pm on 9 June, 2023"  # date without session
    qa = [
        {"question": "What did Ann do about pottery?", "answer": 2022, "evidence": ["D1:1"], "category": 2},
        {"question": "What does Bob enjoy?", "answer": "hiking", "evidence": ["D1:2; D2:2"], "category": 4},
        {"question": "Anything else?", "answer": "no", "evidence": [], "category": 1},
        {"question": "What did Bob realise?", "evidence": ["D2:2"], "category": 5,
         "adversarial_answer": "nothing"},
    ]
    return [{"sample_id": "conv-t", "conversation": conv, "qa": qa, "observation": obs,
             "session_summary": {"session_1_summary": "Ann and Bob talked."}, "event_summary": {}}]

@pytest.fixture
def locomo_file(tmp_path):
    path = tmp_path / "locomo_tiny.json"
    path.write_text(json.dumps(tiny_locomo()))
    return path

@pytest.fixture
def embedder():
    return HashingEmbedder(dim=64)

@pytest.fixture
def store(tmp_path, embedder):
    s = MemoryStore(tmp_path / "store", embedder)
    yield s
    s.close()
