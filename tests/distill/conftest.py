"""Engine test data: a handful of facts about one user and a stand-in retriever
(the tiny random Qwen3 fixtures live in tests/conftest.py)."""

import pytest

from tsubasa_fast.distill.data import QAPair, pair_key

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
