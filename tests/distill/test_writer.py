"""The LLM question writer: candidate spans, its grammar (answers copied from the observation,
questions naming the user), validation of unconstrained replies, and synthesis with it."""

import json
import re

import pytest

from tsubasa_fast.distill import synth as S
from tsubasa_fast.distill.prompts import PICK_SYSTEM, WRITER_SYSTEM
from tsubasa_fast.distill.writer import (STEMS, answer_spans, candidate_spans, pick_schema, question_schema, span_kind,
                                         strip_date, write_pairs)
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


def test_answers_are_names_numbers_and_dates_with_their_kind():
    # "Miso" only opens its sentence (no proper-noun evidence) and single common words are not asked
    assert [(s, span_kind(s, CAT)) for s in candidate_spans(CAT, USER)] == [
        ("5 March 2023", "date"), ("Miso", "thing"), ("ginger cat", "thing"), ("fine", "thing"),
        ("sister Lena", "name"), ("visiting", "thing"), ("Edinburgh", "name")]
    # the prefix date (when it was said) is never asked
    assert answer_spans(CAT, USER, 2) == [("sister Lena", "name"), ("Edinburgh", "name")]
    assert answer_spans(CAT, USER, 5) == [("sister Lena", "name"), ("Edinburgh", "name"), ("ginger cat", "thing")]
    # a date written in the text is asked; weekdays are dates
    text = "[17 March 2024] Maya has two cats and a run on Sunday, then moves to Bath on 2 May 2024."
    assert answer_spans(text, USER, 9) == [("Bath", "name"), ("two cats", "number"), ("2 May 2024", "date"),
                                           ("Sunday", "date")]


def test_question_schema_fits_the_answer_kind_and_names_the_user():
    from tsubasa_fast.structured import grammar_for

    date_q = re.compile(question_schema("date", USER)["properties"]["question"]["pattern"])
    name_q = re.compile(question_schema("name", USER)["properties"]["question"]["pattern"])
    assert date_q.search("When did Maya move to Bristol?") and not date_q.search("Where did Maya move?")
    assert name_q.search("Where did Maya move to?") and name_q.search("Who is Maya's sister?")
    for bad in ("What is the name of her cat?", "What is Maya's cat", "Is Maya fine?", "what is Maya's cat?",
                "When did Maya move?"):
        assert not name_q.search(bad), bad
    g = grammar_for(pick_schema(["Bristol", "Leeds"]))  # llguidance accepts both schemas
    assert g.validate('{"answer": "Leeds"}') == {"answer": "Leeds"}
    with pytest.raises(ValueError):
        g.validate('{"answer": "Paris"}')
    grammar_for(question_schema("number", USER))
    with pytest.raises(ValueError, match="spans"):
        pick_schema([])
    with pytest.raises(ValueError, match="kind"):
        question_schema("colour", USER)


class Writer:
    """Scripted writer chat: question prompts answered by their "Answer:" line, round-trip
    prompts by their "Question:" line; counts calls."""

    def __init__(self, questions, picks):
        self.questions, self.picks, self.calls = questions, picks, []

    def __call__(self, messages, max_new_tokens=None):
        self.calls.append(messages)
        system, last = messages[0]["content"], messages[-1]["content"]
        if system == WRITER_SYSTEM:
            answer = last.split("Answer: ")[1].split("\n")[0]
            return json.dumps({"question": self.questions[answer]}) if answer in self.questions else "no idea"
        assert system == PICK_SYSTEM
        question = last.split("Question: ")[1].split("\n")[0]
        return json.dumps({"answer": self.picks[question]})


QUESTIONS = {"sister Lena": "Who is Maya's visitor next month?", "Edinburgh": "Where is Maya's sister visiting from?",
             "UX researcher job": "What job did Maya apply for?", "Harbour Health": "Where did I apply?",
             "Bristol": "Where is the job Maya applied for?"}
PICKS = {"Who is Maya's visitor next month?": "sister Lena", "Where is Maya's sister visiting from?": "Edinburgh",
         "What job did Maya apply for?": "Harbour Health", "Where is the job Maya applied for?": "Bristol"}


def test_write_pairs_asks_for_each_answer_and_checks_the_round_trip():
    chat = Writer(QUESTIONS, PICKS)
    stats = {}
    out = write_pairs(chat, [CAT, JOB, "Maya is."], USER, 3, stats=stats)
    # CAT: the ginger cat's question was not written (invalid reply); JOB: "Where did I apply?" fails the
    # pattern (no user), and the job question's round trip picks another span
    assert out == [[("Who is Maya's visitor next month?", "sister Lena"), ("Where is Maya's sister visiting from?", "Edinburgh")],
                   [("Where is the job Maya applied for?", "Bristol")], []]
    assert stats == {"prompts": 6, "no_spans": 1, "malformed_generations": 2, "errors": 0,
                     "round_trip_checked": 4, "round_trip_failed": 1, "duplicate_questions": 0}
    prompt = chat.calls[0][-1]["content"]
    assert prompt.startswith("Fact: " + CAT) and "Person: Maya\nAnswer: sister Lena" in prompt
    assert not any("Answer: 5 March 2023" in c[-1]["content"] for c in chat.calls)
    pick = [c for c in chat.calls if c[0]["content"] == PICK_SYSTEM][0][-1]["content"]
    assert "Candidates: 5 March 2023; Miso; ginger cat; fine; sister Lena; visiting; Edinburgh" in pick
    assert write_pairs(chat, [JOB], USER, 3, round_trip=False) == [
        [("What job did Maya apply for?", "UX researcher job"), ("Where is the job Maya applied for?", "Bristol")]]


def test_synthesize_with_the_llm_writer(tmp_path):
    store = MemoryStore(tmp_path / "s", HashingEmbedder())
    store.add(USER, CAT, observed_at="2023-03-05", source={"session": 1, "dia_ids": ["D1:12"]})
    store.add(USER, JOB, observed_at="2023-05-14", source={"session": 2, "dia_ids": ["D2:3"]})
    pairs, rep = S.synthesize(store, USER, Writer(QUESTIONS, PICKS), S.SynthConfig(check_answerable=False,
                                                                                   pairs_per_prompt=3),
                              progress=False)
    assert [(p["question"], p["answer"]) for p in pairs] == [
        ("Who is Maya's visitor next month?", "sister Lena"), ("Where is Maya's sister visiting from?", "Edinburgh"),
        ("Where is the job Maya applied for?", "Bristol")]
    assert rep["writer"]["round_trip_failed"] == 1 and rep["writer"]["malformed_generations"] == 2
    assert rep["writer_version"] == "tsubasa-writer-2" and all(p["generator"] == "llm" for p in pairs)
    assert [p["record_ids"] for p in pairs] == [[1], [1], [2]]
    store.close()


def test_the_writer_under_the_grammar_with_a_random_model(tiny_qwen3):
    """A random model writes nonsense, but every pair's answer is one of the picked spans and its
    question names the user and opens with a wh-word of the answer's kind."""
    from tsubasa_fast.llm import ChatLM

    lm = ChatLM.load(tiny_qwen3)
    stats = {}
    out = write_pairs(lm, [CAT, JOB], USER, 2, stats=stats, round_trip=False)
    assert stats["prompts"] == 4
    written = 0
    for pairs, text in zip(out, [CAT, JOB]):
        allowed = dict(answer_spans(text, USER, 2))
        for q, a in pairs:
            written += 1
            assert a in allowed and "Maya" in q and q.endswith("?"), (q, a)
            assert q.startswith(STEMS[allowed[a]]), (q, a)
    assert written + stats["malformed_generations"] + stats["duplicate_questions"] == 4


def test_the_rule_writer_refuses_raw_utterances(tmp_path):
    store = MemoryStore(tmp_path / "s", HashingEmbedder())
    store.add(USER, "[5 March 2023] Maya: I have a cat called Miso.", source={"kind": "utterances"})
    with pytest.raises(ValueError, match="rule question writer needs parsed observations") as e:
        S.synthesize(store, USER, None, S.SynthConfig(generator="rule"), progress=False)
    assert e.value.field == "generator"
    store.close()
