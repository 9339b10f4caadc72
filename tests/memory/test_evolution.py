"""Evolution managers: rule decisions, LLM manager validation + fallback, static."""


import pytest

from tsubasa_fast.memory.evolution import (Decision, LLMManager, Observation, RuleManager, StaticManager,
                                           apply_decision, parse_manager_reply)


def _obs(store, text, key, date="2023-05-08", dia=("D1:1",)):
    return Observation("u", text, date, {"dia_ids": list(dia)}, key, store.embedder.embed([text])[0],
                       date_label=date)


def _run(store, manager, text, key, **kw):
    o = _obs(store, text, key, **kw)
    d = manager.decide(store, o)
    return d, apply_decision(store, o, d)


def test_rule_manager_decisions(store):
    m = RuleManager(duplicate=0.95, same_subject=0.55)
    d, a = _run(store, m, "Ann lives in Boston with her cat Tom", "k1", date="2023-01-05")
    assert d.op == "ADD"
    d, _ = _run(store, m, "Ann lives in Boston with her cat Tom", "k2")
    assert d.op == "IGNORE" and d.target_id == a.id
    d, b = _run(store, m, "Ann moved from Boston to Denver with her cat Tom", "k3", date="2023-06-01",
                dia=("D5:2",))
    assert d.op == "RECONCILE" and d.target_id == a.id
    # both states kept, each with its date; the earlier one in the past tense
    assert b.text == ("Ann lived in Boston with her cat Tom (5 January 2023); "
                      "Ann moved from Boston to Denver with her cat Tom (1 June 2023).")
    assert b.dia_ids == ["D1:1", "D5:2"] and store.get(a.id).status == "superseded"
    # adds detail to the one memory naming both Tom and Denver (hashing cosine is only 0.31)
    d, c = _run(store, m, "Ann's cat Tom in Denver is a grey tabby", "k4", date="2023-07-02")
    assert d.op == "UPDATE" and d.target_id == b.id
    assert c.text == b.text[:-1] + "; Ann's cat Tom in Denver is a grey tabby (2 July 2023)."
    d, e = _run(store, m, "Bob collects vintage stamps from Peru", "k5")
    assert d.op == "ADD"
    assert m.stats == {"ADD": 2, "UPDATE": 1, "RECONCILE": 1, "IGNORE": 1}
    ops = [ev["op"] for ev in store.events("u")]
    assert ops == ["ADD", "IGNORE", "RECONCILE", "UPDATE", "ADD"]  # every decision logged, IGNORE included
    assert [r.text for r in store.all("u")] == [c.text, "Bob collects vintage stamps from Peru"]


def test_rule_manager_update_merges(store):
    m = RuleManager(duplicate=0.99, same_subject=0.5)
    _, a = _run(store, m, "Ann plays tennis on weekends", "k1")
    d, b = _run(store, m, "Ann plays tennis on weekends at the club with her sister", "k2", date="2023-06-18")
    assert d.op == "UPDATE" and b.supersedes == a.id
    # the new text covers the old one: it replaces it, and the dates of both stay
    assert b.text == "Ann plays tennis on weekends at the club with her sister (8 May 2023, 18 June 2023)."


def test_rule_manager_rejects_bad_thresholds():
    with pytest.raises(ValueError, match="same_subject"):
        RuleManager(duplicate=0.5, same_subject=0.9)


def test_static_manager_appends_everything(store):
    m = StaticManager()
    for i in range(3):
        _run(store, m, "Ann lives in Boston", f"k{i}")
    assert store.count("u") == 3 and m.stats["ADD"] == 3


class Scripted:
    def __init__(self, replies):
        self.replies, self.calls = list(replies), []

    def __call__(self, messages):
        self.calls.append(messages)
        return self.replies.pop(0)


def test_llm_manager_valid_update(store):
    store.add("u", "Ann has a dog", op_key="seed1")
    store.add("u", "Ann works in a bakery", op_key="seed2")
    chat = Scripted(['Sure: {"op": "UPDATE", "index": 2, "text": "Ann works in a bakery in Denver as head baker"}'])
    m = LLMManager(chat)
    d, rec = _run(store, m, "Ann became head baker", "k1")
    assert d.op == "UPDATE" and d.decision_source == "llm" and m.stats["fallback"] == 0
    assert rec.supersedes == 2 and rec.decision_source == "llm"
    prompt = chat.calls[0][1]["content"]
    assert "1. [undated] Ann has a dog" in prompt and "Ann became head baker" in prompt


@pytest.mark.parametrize("reply", ['{"op": "UPDATE", "index": 7, "text": "x"}', "I think we should add it",
                                   '{"op": "MERGE"}', '{"op": "RECONCILE", "index": 1}'])
def test_llm_manager_invalid_falls_back_to_rule(store, reply):
    store.add("u", "Ann has a dog", op_key="seed")
    m = LLMManager(Scripted([reply]), fallback=RuleManager(duplicate=0.95, same_subject=0.6))
    d, _ = _run(store, m, "Bob collects stamps", "k1")
    assert m.stats["fallback"] == 1 and d.decision_source == "rule" and d.op == "ADD"
    assert "llm output invalid" in d.reason


def test_parse_manager_reply_ignore_without_index(store):
    assert parse_manager_reply('{"op": "ignore"}', [], None).op == "IGNORE"
    with pytest.raises(ValueError, match="needs a target_id"):
        Decision("UPDATE")


def test_ingest_reports_each_decision_as_it_happens(tmp_path):
    import json

    from tsubasa_fast.memory import HashingEmbedder, MemoryStore
    from tsubasa_fast.memory.evolution import make_manager
    from tsubasa_fast.memory.ingest import ingest_conversation
    from tsubasa_fast.memory.locomo import load_locomo

    from .conftest import tiny_locomo

    path = tmp_path / "c.json"
    path.write_text(json.dumps(tiny_locomo(n_sessions=2, turns=4)))
    (conv,) = load_locomo(path)
    store = MemoryStore(tmp_path / "s", HashingEmbedder())
    seen = []
    stats = ingest_conversation(store, conv, "utterances", make_manager("static"),
                                on_decision=lambda o, d: seen.append((o.key, d.op)))
    assert len(seen) == stats.applied > 0 and all(op == "ADD" for _, op in seen)
    assert len({k for k, _ in seen}) == len(seen)
    store.close()


def test_rule_manager_reconciles_the_clause_that_held_the_state(store):
    """A detail appended by an UPDATE does not hide the residence clause before it."""
    m = RuleManager(duplicate=0.95, same_subject=0.55)
    _run(store, m, "Ann lives in Boston with her cat Tom", "k1", date="2023-01-05")
    d, _ = _run(store, m, "Ann's cat Tom in Boston is a grey tabby", "k2", date="2023-02-10")
    assert d.op == "UPDATE"
    d, rec = _run(store, m, "Ann moved to Denver.", "k3", date="2023-06-01")
    assert d.op == "RECONCILE" and m.stats == {"ADD": 1, "UPDATE": 1, "RECONCILE": 1, "IGNORE": 0}
    assert rec.text == ("Ann lived in Boston with her cat Tom (5 January 2023); "
                        "Ann's cat Tom in Boston is a grey tabby (10 February 2023); "
                        "Ann moved to Denver (1 June 2023).")
    assert [r.text for r in store.all("u")] == [rec.text] and rec.version == 3


def test_rule_manager_undated_texts(store):
    m = RuleManager(duplicate=0.95, same_subject=0.55, dated=False)
    _run(store, m, "Ann has 2 cats.", "k1", date="2023-01-05")
    d, rec = _run(store, m, "Ann has 3 cats.", "k2", date="2023-06-01")
    assert d.op == "RECONCILE" and rec.text == "Ann had 2 cats; Ann has 3 cats."
