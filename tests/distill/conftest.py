"""Engine test data: a handful of facts about one user, a stand-in retriever and a store of
observations (the tiny random Qwen3 fixtures live in tests/conftest.py)."""

import pytest

from tsubasa_fast.distill.data import QAPair, pair_key
from tsubasa_fast.memory import HashingEmbedder, MemoryStore

FACTS = [
    ("Caroline moved to Denver on 2023-09-01.", "Where did Caroline move in September 2023?", "Denver"),
    ("Caroline adopted a dog named Bo in May 2023.", "What is the name of Caroline's dog?", "Bo"),
    ("Caroline works as a school counselor.", "What is Caroline's job?", "a school counselor"),
    ("Caroline goes hiking every Saturday.", "What does Caroline do on Saturdays?", "hiking"),
    ("Caroline stopped eating meat in 2022.", "Does Caroline eat meat?", "no, she stopped in 2022"),
    ("Caroline's sister Ana lives in Lisbon.", "Where does Caroline's sister live?", "Lisbon"),
]


@pytest.fixture
def pairs():
    return [QAPair(pair_key(q, a, c), q, a, c) for c, q, a in FACTS]


def memories_for(question):
    """A deterministic stand-in retriever: the facts sharing the most words with the question."""
    words = set(question.lower().split())
    ranked = sorted(FACTS, key=lambda f: -len(words & set(f[0].lower().split())))
    return [f[0] for f in ranked[:3]]


def observation_store(path, facts: dict) -> MemoryStore:
    """A store holding ``{user: [observation, ...]}`` as dated observations (hashing embedder)."""
    s = MemoryStore(path, HashingEmbedder(dim=32))
    for user, texts in facts.items():
        for i, t in enumerate(texts):
            s.add(user, t, observed_at="2023-06-01", op_key=f"{user}:{i}", source={"kind": "observations"})
    return s
