"""The LLM question writer: candidate spans, its grammar (answers copied from the observation,
questions naming the user), validation of unconstrained replies, and synthesis with it."""

import json
import re

import pytest

from tsubasa_fast.distill import synth as S
from tsubasa_fast.distill.prompts import WRITER_SYSTEM
from tsubasa_fast.distill.writer import candidate_spans, strip_date, write_pairs, writer_schema
from tsubasa_fast.memory import HashingEmbedder, MemoryStore

USER = "sample-maya:Maya"
CAT = "[5 March 2023] Miso, Maya's ginger cat, is fine. Oh, and Maya's sister Lena is visiting from Edinburgh next month."
JOB = "[14 May 2023] Maya already applied for a UX researcher job at Harbour Health in Bristol."


def test_candidate_spans_are_dates_names_and_noun_runs_of_the_text():
    assert strip_date(CAT) == ("5 March 2023", CAT[len("[5 March 2023] "):])
    assert candidate_spans(CAT, USER) == ["5 March 2023", "Miso", "ginger cat", "fine", "sister Lena",
                                          "visiting", "Edinburgh"]
    assert candidate_spans(JOB, USER) == ["14 May 2023", "UX researcher job", "Harbour Health", "Bristol"]
    # dates inside the text are one span; the user's name never is one; a possessive stays inside
    assert candidate_spans("Caroline attended an LGBTQ support group on 7 May 2023.", "c:Caroline") == [
        "7 May 2023", "LGBTQ support group"]
    assert candidate_spans("Maya played Chopin's Nocturne at the recital.", USER) == ["Chopin's Nocturne", "recital"]
    assert candidate_spans("Maya is.", USER) == []


def test_writer_schema_copies_answers_and_names_the_user():
    from tsubasa_fast.structured import grammar_for

    spans = candidate_spans(CAT, USER)
    schema = writer_schema(spans, USER, 2)
    g = grammar_for(schema)  # llguidance accepts it
    ok = [{"answer": "Miso", "question": "What is the name of Maya's cat?"}]
    assert g.validate(json.dumps(ok)) == ok
    q = re.compile(schema["items"]["properties"]["question"]["pattern"])
    for bad in ("What is the name of her cat?", "What is Maya's cat", "Is Maya fine?", "what is Maya's cat?"):
        assert not q.search(bad), bad
    for bad_reply in ([{"answer": "a dog", "question": "What does Maya have?"}],  # not copied from the text
                      [], ok * 3):                                                # 1..2 items
        with pytest.raises(ValueError):
            g.validate(json.dumps(bad_reply))
    with pytest.raises(ValueError, match="spans"):
        writer_schema([], USER, 2)


class Writer:
    """Scripted writer chat: replies by a keyword of the fact; counts calls."""

    def __init__(self, replies):
        self.replies, self.calls = replies, []

    def __call__(self, messages, max_new_tokens=None):
        self.calls.append(messages)
        assert messages[0]["content"] == WRITER_SYSTEM
        last = messages[-1]["content"]
        for key, reply in self.replies.items():
            if key in last:
                return reply
        return "no idea"


def test_write_pairs_validates_unconstrained_replies_and_counts():
    chat = Writer({"Miso": json.dumps([{"answer": "Miso", "question": "What is the name of Maya's cat?"},
                                       {"answer": "Miso", "question": "Who is Maya's cat?"}]),
                   "Harbour": json.dumps([{"answer": "Paris", "question": "Where does Maya work?"}])})
    stats = {}
    out = write_pairs(chat, [CAT, JOB, "Maya is."], USER, 2, stats=stats)
    # the repeated answer is written once; "Paris" is not in the job fact: the reply is invalid
    assert out == [[("What is the name of Maya's cat?", "Miso")], [], []]
    assert stats == {"prompts": 2, "no_spans": 1, "malformed_generations": 1, "errors": 0}
    prompt = chat.calls[0][-1]["content"]
    assert "Person: Maya" in prompt and "Candidate answers: 5 March 2023; Miso; ginger cat" in prompt


def test_synthesize_with_the_llm_writer(tmp_path):
    store = MemoryStore(tmp_path / "s", HashingEmbedder())
    store.add(USER, CAT, observed_at="2023-03-05", source={"session": 1, "dia_ids": ["D1:12"]})
    store.add(USER, JOB, observed_at="2023-05-14", source={"session": 2, "dia_ids": ["D2:3"]})
    chat = Writer({"Miso": json.dumps([{"answer": "Miso", "question": "What is the name of Maya's cat?"},
                                       {"answer": "Edinburgh", "question": "Where is Maya's sister Lena visiting from?"}]),
                   "Harbour": json.dumps([{"answer": "Harbour Health", "question": "Where did I apply?"}])})
    pairs, rep = S.synthesize(store, USER, chat, S.SynthConfig(check_answerable=False), progress=False)
    assert [(p["question"], p["answer"]) for p in pairs] == [
        ("What is the name of Maya's cat?", "Miso"), ("Where is Maya's sister Lena visiting from?", "Edinburgh")]
    # "Where did I apply?" fails the grammar's pattern (no user): an invalid reply, counted
    assert rep["writer"]["malformed_generations"] == 1 and rep["malformed_generations"] == 1
    assert rep["writer_version"] == "tsubasa-writer-1" and all(p["generator"] == "llm" for p in pairs)
    store.close()


def test_the_writer_under_the_grammar_with_a_random_model(tiny_qwen3):
    """A random model writes nonsense, but every pair's answer is a span of the fact and its
    question names the user."""
    from tsubasa_fast.llm import ChatLM

    lm = ChatLM.load(tiny_qwen3)
    stats = {}
    out = write_pairs(lm, [CAT, JOB], USER, 2, stats=stats)
    spans = [candidate_spans(CAT, USER), candidate_spans(JOB, USER)]
    assert stats["prompts"] == 2
    written = 0
    for pairs, allowed in zip(out, spans):
        for q, a in pairs:
            written += 1
            assert a in allowed and "Maya" in q and q.endswith("?"), (q, a)
    assert written + stats["malformed_generations"] >= 1


def test_the_rule_writer_refuses_raw_utterances(tmp_path):
    store = MemoryStore(tmp_path / "s", HashingEmbedder())
    store.add(USER, "[5 March 2023] Maya: I have a cat called Miso.", source={"kind": "utterances"})
    with pytest.raises(ValueError, match="rule question writer needs parsed observations") as e:
        S.synthesize(store, USER, None, S.SynthConfig(generator="rule"), progress=False)
    assert e.value.field == "generator"
    store.close()
