"""The LLM memory manager under its grammar: every decision of a ChatLM is valid (no fallback)."""

import json

import jsonschema
import pytest

from tsubasa_fast.memory.evolution import LLMManager, Observation, apply_decision, manager_schema


def test_manager_schema_allows_exactly_the_valid_decisions():
    s = manager_schema(3)
    ok = [{"op": "ADD", "target": None, "text": ""}, {"op": "IGNORE", "target": None, "text": ""},
          {"op": "IGNORE", "target": 3, "text": ""},
          {"op": "RECONCILE", "target": 1, "text": "On 3 May Ann lived in Leeds; now in Bristol."}]
    bad = [{"op": "UPDATE", "target": 4, "text": "Ann works in a bakery."},  # no candidate 4
           {"op": "UPDATE", "target": None, "text": "Ann works in a bakery."},
           {"op": "RECONCILE", "target": 1, "text": ""}, {"op": "ADD", "target": 2, "text": ""},
           {"op": "MERGE", "target": 1, "text": "Ann works."}, {"op": "ADD", "target": None}]
    for obj in ok:
        jsonschema.validate(obj, s)
    for obj in bad:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(obj, s)
    with pytest.raises(ValueError, match="n_memories must be >= 1"):
        manager_schema(0)


def test_llm_manager_with_a_random_model_always_decides_validly(store, tiny_qwen3):
    from tsubasa_fast.llm import ChatLM

    lm = ChatLM.load(tiny_qwen3)
    m = LLMManager(lm, max_text_chars=60)
    texts = ["Ann has a dog", "Ann works in a bakery", "Ann moved to Bristol", "Ann has two dogs"]
    for i, text in enumerate(texts):
        obs = Observation("u", text, "2023-05-0%d" % (i + 1), {"kind": "test"}, f"k{i}")
        d = m.decide(store, obs)
        assert d.decision_source == "llm", d.reason  # never the rule fallback
        apply_decision(store, obs, d)
    assert m.stats["fallback"] == 0 and m.stats["constrained"] == len(texts) - 1  # the first is ADD, no call
    assert sum(m.stats[op] for op in ("ADD", "UPDATE", "RECONCILE", "IGNORE")) == len(texts)
    events = [e for e in store.events("u")]
    assert len(events) == len(texts)
    assert json.dumps(events, default=str)  # the decisions landed in the log
