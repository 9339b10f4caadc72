"""Self-learning QA synthesis: parsing, each filter counted, provenance, rule writer, CLI, SmolLM2."""

import json
import os

import pytest

from tsubasa_fast.cli import main
from tsubasa_fast.distill import rule_writer as R
from tsubasa_fast.distill import synth as S
from tsubasa_fast.distill import synth_filters as F
from tsubasa_fast.distill import synth_parsing as P
from tsubasa_fast.distill import synth_prompts as Q
from tsubasa_fast.text import token_f1
from tsubasa_fast.distill.data import load_qa, pair_key
from tsubasa_fast.memory import HashingEmbedder, MemoryStore

USER = "conv-t:Caroline"
OBS = [
    ("Caroline adopted a dog named Bo in May 2023.", "2023-05-08", ["D1:3"]),
    ("Caroline is currently learning the piano to get creative.", "2023-07-03", ["D5:5"]),
    ("Caroline moved to Denver on 1 September 2023.", "2023-09-02", ["D9:1", "D9:2"]),
    ("Caroline works as a school counselor.", "2023-09-02", ["D9:7"]),
]


@pytest.fixture
def store(tmp_path):
    s = MemoryStore(tmp_path / "store", HashingEmbedder())
    for i, (text, date, dia) in enumerate(OBS):
        s.add(USER, text, observed_at=date, source={"conversation": "conv-t", "session": i + 1, "dia_ids": dia})
    s.add("conv-t:Melanie", "Melanie paints sunsets.", observed_at="2023-05-08", source={"dia_ids": ["D1:2"]})
    yield s
    s.close()


class FakeChat:
    """Scripted chat: generation replies by fact keyword, re-answers by question keyword."""

    def __init__(self, gen: dict, answers: dict):
        self.gen, self.answers, self.calls = gen, answers, []

    def __call__(self, messages, max_new_tokens=None):
        self.calls.append((messages, max_new_tokens))
        system, last = messages[0]["content"], messages[-1]["content"]
        table = self.gen if system == Q.GEN_SYSTEM else self.answers
        for key, reply in table.items():
            if key in last.split("Question:")[-1] or (system == Q.GEN_SYSTEM and key in last):
                if isinstance(reply, Exception):
                    raise reply
                return reply
        return "I do not know."


GEN = {
    "dog named Bo": json.dumps([{"question": "What is the name of Caroline's dog?", "answer": "Bo"},
                                {"question": "When did Caroline and Melanie have this conversation?",
                                 "answer": "8 May 2023"},
                                {"question": "What colour is Bo?", "answer": "brown"}]),
    "piano": "Sure!\nQ: What instrument is Caroline learning?\nA: The piano.\n"
             "Q: what instrument is Caroline learning\nA: piano\n"
             "Q: Why is Caroline learning the piano?\nA: " + " ".join(["to"] * 20) + "\nQ: dangling?",
    "Denver": "this is not a question at all",
    "counselor": RuntimeError("model crashed"),
}
ANSWERS = {"name of Caroline's dog": "The answer is: Bo", "instrument": "the piano", "colour": "black"}


def test_parse_pairs_json_and_lines():
    pairs, bad = P.parse_pairs('Here: [{"question": "Q1?", "answer": "A1"}, {"question": "Q2"}, 3]')
    assert pairs == [("Q1?", "A1")] and bad == 2
    pairs, bad = P.parse_pairs('{"pairs": [{"Q": "Where", "A": "Denver."}]}')
    assert pairs == [("Where?", "Denver")] and bad == 0
    pairs, bad = P.parse_pairs("1. Q: Who? A: Ann\nQuestion: Where?\nAnswer: Paris\nQ: Lost?\n")
    assert pairs == [("Who?", "Ann"), ("Where?", "Paris")] and bad == 1
    assert P.parse_pairs("Question: What? Question: What?") == ([], 1)
    assert P.parse_pairs("") == ([], 0) and P.parse_pairs("{not json") == ([], 0)


def test_f1_and_question_filters():
    # the filter scores with the one token F1 that eval reports (tsubasa_fast.text: Mem0's set F1)
    from tsubasa_fast.eval.metrics import token_f1 as eval_f1

    assert token_f1 is eval_f1
    assert token_f1("The Piano!", "piano") == pytest.approx(2 / 3)  # {the, piano} vs {piano}
    assert token_f1("a black dog", "brown dog") == pytest.approx(0.4)  # p 1/3, r 1/2
    assert token_f1("dog dog", "dog") == 1.0  # sets: a repeat is not counted twice
    assert token_f1("", "x") == 0.0
    q = "What is Caroline's favorite hobby?"
    assert F.answer_f1("Caroline's favorite hobby is music.", "music", q) == 1.0
    assert F.answer_f1("Caroline's favorite hobby is music.", "music", q, strip_question_words=False) < 0.5
    assert F.answer_f1("Her favorite hobby is chess", "music", q) == 0.0
    assert F.clean_reply_answer("The answer to the question is: Bo.\nmore") == "Bo."
    assert F.is_conversation_time_question("When did Caroline and Melanie have this conversation?")
    assert F.is_conversation_time_question("What date did they chat with each other?")
    assert F.is_conversation_time_question("When did the session take place?")
    assert not F.is_conversation_time_question("When did Caroline adopt Bo?")
    assert not F.is_conversation_time_question("What did Caroline discuss at the conference?")


def test_synthesize_counts_every_filter_and_keeps_provenance(store):
    chat = FakeChat(GEN, ANSWERS)
    # grounding filter off here: its own test below; this one exercises the re-ask filter
    cfg = S.SynthConfig(generator="llm-text", f1_threshold=0.5, min_context_overlap=0.0, pairs_per_prompt=2,
                        check_answerable=True)
    pairs, rep = S.synthesize(store, USER, chat, cfg, progress=False)
    assert [p["question"] for p in pairs] == ["What is the name of Caroline's dog?",
                                              "What instrument is Caroline learning?"]
    assert rep["prompts"] == rep["observations"] == 4
    assert rep["generated"] == 6  # 3 JSON + 3 complete Q/A lines
    assert rep["malformed_generations"] == 2  # "not a question" and the crash, neither fatal
    assert rep["malformed_items"] == 1  # the dangling question
    # "What colour is Bo? -> brown" names nobody and its answer is not in the memory: malformed
    assert rep["dropped"] == {"too_long": 1, "ungrounded": 0, "conversation_time": 1, "duplicate": 1,
                              "unanswerable": 0, "answer_check_error": 0, "malformed": 1}
    assert rep["malformed_rules"] == {**dict.fromkeys(rep["malformed_rules"], 0), "no_user": 1, "unsupported": 1}
    assert rep["dropped_examples"]["malformed"] == [
        {"question": "What colour is Bo?", "answer": "brown", "problems": ["no_user", "unsupported"]}]
    assert rep["kept"] == 2 and rep["answerability"] == "llm" and rep["answerability_skipped"] == 0
    assert (rep["facts"], rep["phrasings"]) == (2, 0)  # two answers from two memories
    dog, piano = pairs
    assert dog["answer"] == "Bo" and dog["context"] == OBS[0][0]
    assert dog["dia_ids"] == ["D1:3"] and dog["observed_at"] == "2023-05-08" and dog["user"] == USER
    assert dog["record_ids"] == [store.all(USER)[0].id] and dog["sessions"] == [1]
    assert dog["key"] == pair_key(dog["question"], dog["answer"], dog["context"])
    assert dog["answer_check"] == {"reply": "Bo", "f1": 1.0}
    assert piano["answer"] == "The piano"
    # the re-ask is cached per (context, question) and generation limits reach the model
    assert [n for _, n in chat.calls].count(S.SynthConfig().max_new_tokens) == 4


def test_several_phrasings_of_a_fact_are_counted():
    """A fact is one answer (normalised as the filters compare answers) from one context."""
    pairs = [{"context": "c1", "answer": "Bo", "question": "What is the name of Caroline's dog?"},
             {"context": "c1", "answer": "bo.", "question": "What is Caroline's dog called?"},
             {"context": "c1", "answer": "the piano", "question": "What is Caroline learning?"},
             {"context": "c2", "answer": "Bo", "question": "Who did Caroline walk?"}]
    assert S.count_facts(pairs) == (3, 1)
    assert S.count_facts([]) == (0, 0)


def test_a_failed_re_ask_is_an_error_not_unanswerable(store):
    answers = {**ANSWERS, "instrument": RuntimeError("re-ask crashed")}
    cfg = S.SynthConfig(generator="llm-text", f1_threshold=0.5, min_context_overlap=0.0, pairs_per_prompt=2,
                        check_answerable=True)
    pairs, rep = S.synthesize(store, USER, FakeChat(GEN, answers), cfg, progress=False)
    assert [p["question"] for p in pairs] == ["What is the name of Caroline's dog?"]
    # both phrasings of the piano question hit the failing re-ask (the cached failure is not a
    # kept pair, so the second is no duplicate): two errors, no "unanswerable" verdict
    assert rep["dropped"]["answer_check_error"] == 2 and rep["dropped"]["unanswerable"] == 0
    assert [e["question"] for e in rep["dropped_examples"]["answer_check_error"]] == [
        "What instrument is Caroline learning?", "what instrument is Caroline learning?"]


def test_groups_limit_and_output_roundtrip(store, tmp_path):
    chat = FakeChat(GEN, ANSWERS)
    cfg = S.SynthConfig(generator="llm-text", group_size=2, limit=1, check_answerable=False)
    pairs, rep = S.synthesize(store, USER, chat, cfg, progress=False)
    assert rep["prompts"] == 1 and rep["observations"] == 2 and rep["answerability"] == "skipped"
    assert rep["answerability_skipped"] == rep["kept"] == len(pairs) > 0
    assert all(p["context"] == OBS[0][0] + "\n" + OBS[1][0] for p in pairs)
    assert pairs[0]["dia_ids"] == ["D1:3", "D5:5"] and pairs[0]["observed_at"] == "2023-07-03"
    out = tmp_path / "qa.jsonl"
    assert S.write_qa_jsonl(out, pairs) == len(pairs)
    loaded = load_qa(out)
    assert [q.key for q in loaded] == [p["key"] for p in pairs]
    assert loaded[0].meta["record_ids"] == pairs[0]["record_ids"]


def test_write_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "qa.jsonl"
    out.write_text("old\n")

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(S.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        S.write_qa_jsonl(out, [{"question": "q", "answer": "a", "context": "c"}])
    assert out.read_text() == "old\n" and os.listdir(tmp_path) == ["qa.jsonl"]  # no temp left
    monkeypatch.undo()
    S.write_qa_jsonl(out, [{"question": "q", "answer": "a", "context": "c"}])
    assert json.loads(out.read_text())["answer"] == "a" and os.listdir(tmp_path) == ["qa.jsonl"]


def test_errors(store):
    with pytest.raises(ValueError, match="no live memories for user 'nobody'"):
        S.synthesize(store, "nobody", None, S.SynthConfig(generator="rule"),
                               progress=False)
    with pytest.raises(ValueError, match="needs a chat model"):
        S.synthesize(store, USER, None, S.SynthConfig(), progress=False)
    for bad in (dict(generator="gpt"), dict(f1_threshold=1.5), dict(group_size=0), dict(limit=0)):
        with pytest.raises(ValueError):
            S.SynthConfig(**bad)


def test_rule_pairs_templates():
    got = dict(R.rule_pairs("Caroline adopted a dog named Bo in May 2023.", max_pairs=3))
    assert got == {"What did Caroline adopt?": "a dog", "When did Caroline adopt a dog?": "May 2023",
                   "What is the name of Caroline's dog?": "Bo"}
    assert R.rule_pairs("Caroline is currently learning the piano to get creative.") == [
        ("What is Caroline learning?", "the piano"), ("Why is Caroline learning the piano?", "to get creative")]
    assert R.rule_pairs("Caroline moved to Denver on 1 September 2023.") == [
        ("Where did Caroline move?", "Denver"), ("When did Caroline move to Denver?", "1 September 2023")]
    assert R.rule_pairs("Caroline's favorite book is 'Becoming Nicole' by Amy Ellis Nutt.") == [
        ("What is Caroline's favorite book?", "'Becoming Nicole'")]
    assert R.rule_pairs("Melanie believes that loved ones give strength, always.") == [
        ("What does Melanie believe?", "loved ones give strength")]
    assert R.rule_pairs("Caroline attended a council meeting last Friday; Caroline plans to open a shop.") == [
        ("What did Caroline attend?", "a council meeting"), ("What does Caroline plan to do?", "open a shop")]
    assert R.rule_pairs("On 8 May 2023, Caroline lived in Boston.") == [
        ("Where did Caroline live?", "Boston"), ("When did Caroline live in Boston?", "8 May 2023")]
    assert R.rule_pairs("Caroline went hiking in the week before 25 August 2023.") == [
        ("When did Caroline go hiking?", "the week before 25 August 2023")]
    assert R.rule_pairs("Caroline works as a school counselor.") == [
        ("What does Caroline work as?", "a school counselor")]
    assert R.rule_pairs("The weather was nice.") == [] and R.rule_pairs("ok") == []


def test_rule_generator_on_a_store(store):
    store.rewrite(store.all(USER)[3].id, "Caroline works as a school counselor; Caroline paints sunsets.",
                  op="UPDATE", source={"dia_ids": ["D10:1"]}, decision_source="rule")
    pairs, rep = S.synthesize(store, USER, None, S.SynthConfig(generator="rule", max_answer_words=3, pairs_per_prompt=2),
                              progress=False)
    assert rep["answerability"] == "skipped" and rep["answerability_skipped"] == rep["kept"] == len(pairs)
    assert rep["observations"] == 4 and rep["generated"] >= 7 and rep["malformed_generations"] == 0
    qa = {p["question"]: p for p in pairs}
    assert qa["What is the name of Caroline's dog?"]["answer"] == "Bo"
    assert qa["Where did Caroline move?"]["answer"] == "Denver"
    assert qa["What does Caroline paint?"]["dia_ids"] == ["D9:7", "D10:1"]
    assert all(len(p["answer"].split()) <= 3 for p in pairs)
    assert rep["dropped"] == dict.fromkeys(rep["dropped"], 0) and rep["generated"] == rep["kept"]
    assert all(p["generator"] == "rule" for p in pairs)
    # a 2-word cap loses exactly the pairs whose answer has 3 words: each one is either not written
    # (the rule writer's span limit) or written and counted as too long
    short, rep_short = S.synthesize(store, USER, None, S.SynthConfig(generator="rule", max_answer_words=2, pairs_per_prompt=2),
                                    progress=False)
    three = [p for p in pairs if len(p["answer"].split()) == 3]
    assert three and rep_short["kept"] == len(pairs) - len(three)
    assert rep_short["dropped"]["too_long"] + rep["generated"] - rep_short["generated"] == len(three)
    assert [p["question"] for p in short] == [p["question"] for p in pairs if p not in three]
    # the same store twice gives the same pairs (deterministic)
    again, _ = S.synthesize(store, USER, None, S.SynthConfig(generator="rule", max_answer_words=3, pairs_per_prompt=2),
                            progress=False)
    assert again == pairs
    # with an LLM the rule pairs go through the answerability filter
    chat = FakeChat({}, {"dog": "Bo", "move": "Denver"})
    checked, rep2 = S.synthesize(store, USER, chat, S.SynthConfig(generator="rule", pairs_per_prompt=2,
                                                                  check_answerable=True), progress=False)
    assert rep2["answerability"] == "llm" and rep2["dropped"]["unanswerable"] > 0
    assert {p["answer"] for p in checked} == {"Bo", "Denver"}


def test_cli_rule_writes_qa_and_report(tmp_path, store, capsys):
    store.flush()
    out = tmp_path / "out" / "qa.jsonl"
    argv = ["synth", "--store", str(store.path), "--user", USER, "--out", str(out), "--generator", "rule",
            "--no-llm", "--max-answer-words", "4"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed.splitlines()[0])
    report = json.loads((tmp_path / "out" / "qa.report.json").read_text())
    assert summary["kept"] == report["kept"] == len(load_qa(out)) > 0
    assert report["config"]["max_answer_words"] == 4 and report["model"] is None
    assert main(["synth", "--store", str(store.path), "--user", "nobody", "--out", str(out),
                 "--generator", "rule", "--no-llm"]) == 2
    assert "no live memories for user 'nobody'" in capsys.readouterr().err
    assert main(["synth", "--store", str(store.path), "--user", USER, "--out", str(out), "--no-llm"]) == 2
    assert "--no-llm needs --generator rule" in capsys.readouterr().err
    assert main(["synth", "--store", str(tmp_path / "none"), "--user", USER, "--out", str(out)]) == 2
    assert "no memory store" in capsys.readouterr().err
    # the options are SynthConfig's: its validation names the field, shown as the flag
    assert main(["synth", "--store", str(store.path), "--user", USER, "--out", str(out), "--f1-threshold", "2"]) == 2
    assert "--f1-threshold: must be in [0, 1], got 2.0" in capsys.readouterr().err
    assert main(["synth", "--store", str(store.path), "--user", USER, "--out", str(out), "--generator", "rule",
                 "--no-llm", "--pairs-per-prompt", "1", "--limit", "2", "--seed", "3"]) == 0
    capsys.readouterr()
    config = json.loads((tmp_path / "out" / "qa.report.json").read_text())["config"]
    assert {k: config[k] for k in ("pairs_per_prompt", "limit", "seed", "max_answer_words", "generator")} == {
        "pairs_per_prompt": 1, "limit": 2, "seed": 3, "max_answer_words": 15, "generator": "rule"}


@pytest.mark.slow
def test_real_smollm2_on_two_observations(store):
    from tsubasa_fast.llm import ChatLM

    chat = ChatLM.load(None)
    cfg = S.SynthConfig(limit=2, max_new_tokens=48, answer_max_new_tokens=12, f1_threshold=0.0, pairs_per_prompt=2,
                        check_answerable=True)
    pairs, rep = S.synthesize(store, USER, chat, cfg, progress=False)  # speed lives in benchmarks
    assert rep["prompts"] == 2
    assert rep["generated"] + rep["malformed_generations"] >= 1
    kept_or_dropped = rep["kept"] + sum(rep["dropped"].values())
    assert kept_or_dropped == rep["generated"]
    for p in pairs:
        assert p["question"] and p["answer"] and p["context"] in (OBS[0][0], OBS[1][0])
        assert "answer_check" in p


def test_ungrounded_answers_are_dropped_and_counted(tmp_path):
    """An answer whose words are not in the context is an invention, even if the same small
    model "confirms" it when re-asked (seen with SmolLM2: favorite color -> Blue)."""
    from tsubasa_fast.distill.synth import SynthConfig, synthesize
    from tsubasa_fast.distill.synth_filters import context_overlap
    from tsubasa_fast.memory import HashingEmbedder, MemoryStore

    assert context_overlap("Blue", "Caroline started transitioning three years ago.") == 0.0
    assert context_overlap("painting sunsets", "Melanie paints a sunset.") == 1.0
    assert context_overlap("the", "anything") == 1.0
    store = MemoryStore(tmp_path / "s", HashingEmbedder())
    store.add("conv-t:Caroline", "Caroline started transitioning three years ago.")

    def chat(messages):
        if "Q:" in messages[-1]["content"] or "question" in messages[0]["content"].lower():
            return "Blue"
        return "Blue"

    def writer(messages):
        return 'Q: What is her favorite color? A: Blue\nQ: When did Caroline start transitioning? A: three years ago'

    def fake(messages):
        text = " ".join(m["content"] for m in messages)
        return writer(messages) if "Q:" in text or "pairs" in text.lower() else chat(messages)

    pairs, report = synthesize(store, "conv-t:Caroline", fake, SynthConfig(generator="llm-text", check_answerable=False), progress=False)
    assert report["dropped"]["ungrounded"] == 1
    assert [p["answer"] for p in pairs] == ["three years ago"]
    store.close()
