"""Abstention pairs: another user's question asked about the user, answered "No information
available", kept only when the user's memories cannot answer it, and as many hinted answerable
pairs; the hint stays out of retrieval."""

import re

import pytest

from tsubasa_fast.distill.abstain import add_abstention_pairs
from tsubasa_fast.distill.data import QAPair, pair_key
from tsubasa_fast.distill.prompts import ABSTAIN_ANSWER, ABSTAIN_HINT, with_hint, without_hint
from tsubasa_fast.distill.stages import evidence_stage, synth_stage
from tsubasa_fast.distill.synth import SynthConfig
from tsubasa_fast.distill.train import TrainConfig, build_student_data
from tsubasa_fast.errors import InputError

from .conftest import observation_store

HINT = ' If the memories do not say, answer "No information available".'


def _pair(user, question, answer, context):
    return {"key": pair_key(question, answer, context), "question": question, "answer": answer,
            "context": context, "user": user, "record_ids": ["r1"], "dia_ids": ["D1:1"],
            "observed_at": "2023-06-01", "sessions": [1], "generator": "rule"}


MEMORIES = {"c:Ann": ["Ann adopted a puppy named Rex in May 2023.", "Ann plays the violin in an orchestra."],
            "c:Bob": ["Bob moved to Bristol in June 2023.", "Bob plays the guitar every Sunday."]}
BOB_BRISTOL = _pair("c:Bob", "Where did Bob move in June?", "Bristol", "Bob moved to Bristol in June 2023.")
ANN_PUPPY = _pair("c:Ann", "What is the name of Ann's puppy?", "Rex", "Ann adopted a puppy named Rex in May 2023.")


def test_the_hint_is_the_one_eval_qa_gives_category_5():
    assert ABSTAIN_HINT == HINT and ABSTAIN_ANSWER == "No information available"
    assert with_hint("Q?") == "Q?" + HINT == with_hint(with_hint("Q?"))
    assert without_hint("Q?" + HINT) == "Q?" == without_hint("Q?")


def test_a_question_about_another_user_is_asked_about_the_user_and_abstained():
    pairs, report = add_abstention_pairs([BOB_BRISTOL, ANN_PUPPY], MEMORIES, share=1.0)
    abstain = [p for p in pairs if p["generator"] == "abstain"]
    by_user = {p["user"]: p for p in abstain}
    assert set(by_user) == {"c:Ann", "c:Bob"}
    ann = by_user["c:Ann"]
    assert ann["question"] == "Where did Ann move in June?" + HINT
    assert ann["answer"] == "No information available"
    assert ann["context"] == BOB_BRISTOL["context"]  # the teacher sees whose fact it is
    assert ann["abstain_from"] == {"user": "c:Bob", "key": BOB_BRISTOL["key"]}
    assert ann["key"] == pair_key(ann["question"], ann["answer"], ann["context"])
    assert by_user["c:Bob"]["question"] == "What is the name of Bob's puppy?" + HINT
    # the pairs stay as they were, then hinted copies of as many of them, keeping their answers
    assert pairs[:2] == [BOB_BRISTOL, ANN_PUPPY]
    hinted = [p for p in pairs if p.get("hinted")]
    assert len(hinted) == 2 and report["hinted"] == 2 and report["abstain"] == 2
    assert [(p["question"], p["answer"]) for p in hinted] == [(BOB_BRISTOL["question"] + HINT, "Bristol"),
                                                              (ANN_PUPPY["question"] + HINT, "Rex")]
    assert pairs[2:4] == hinted and len(pairs) == 6
    assert len({p["key"] for p in pairs}) == 6


def test_a_question_the_user_can_answer_is_not_abstained():
    # Bob plays the guitar: "What does Bob play in an orchestra?" (from Ann's violin) keeps "play"
    # and "orchestra", half of its content words, but not the answer: still abstained; "What does
    # Bob play every Sunday" asked of Ann: Ann plays too, yet "every Sunday" is not hers
    violin = _pair("c:Ann", "What does Ann play in an orchestra?", "the violin", MEMORIES["c:Ann"][1])
    guitar = _pair("c:Bob", "What instrument does Bob play?", "the guitar", MEMORIES["c:Bob"][1])
    memories = {**MEMORIES, "c:Ann": MEMORIES["c:Ann"] + ["Ann bought a new instrument she will play."]}
    _, report = add_abstention_pairs([violin, guitar], memories, share=1.0)
    # "What instrument does Ann play?": one memory of Ann holds "instrument" and "play"
    assert report == {"share": 1.0, "candidates": 2, "pronoun": 0, "vague": 0, "answerable": 1, "duplicate": 0,
                      "abstain": 1, "hinted": 1}
    faced = _pair("c:Ann", "When did Ann face challenges?", "June 2023", "Ann faced challenges in June 2023.")
    memories = {**MEMORIES, "c:Bob": MEMORIES["c:Bob"] + ["Bob faced challenges at work."]}
    _, report = add_abstention_pairs([faced], memories, share=1.0)
    assert report["answerable"] == 1 and report["abstain"] == 0  # "face" is found in "faced"
    same = _pair("c:Bob", "What does Bob play in an orchestra?", "the violin", "Bob plays the violin in an orchestra.")
    _, report = add_abstention_pairs([same], MEMORIES, share=1.0)
    assert report["answerable"] == 1 and report["abstain"] == 0


def test_vague_and_duplicate_questions_are_not_abstained():
    vague = _pair("c:Bob", "What did Bob buy?", "a car", "Bob bought a car.")
    dup = _pair("c:Bob", "Where did Ann move in June?", "Paris", "Bob said Ann moved to Paris in June.")
    _, report = add_abstention_pairs([vague, BOB_BRISTOL, dup], MEMORIES, share=1.0)
    assert report["vague"] == 1 and report["duplicate"] == 1 and report["abstain"] == 0
    # dup's question does not name its user (Bob): it is no candidate, only a question asked
    assert report["candidates"] == 2


def test_share_bounds_the_count_and_the_seed_decides_which():
    pairs = [_pair("c:Bob", f"What colour is Bob's car number {i}?", "red", f"Bob has car {i}, it is red.")
             for i in range(8)]
    got, report = add_abstention_pairs(pairs, MEMORIES, share=0.25, seed=3)
    assert report["abstain"] == 2 == report["hinted"] and len(got) == 12 and got[:8] == pairs
    again, _ = add_abstention_pairs(pairs, MEMORIES, share=0.25, seed=3)
    assert again == got
    other = [add_abstention_pairs(pairs, MEMORIES, share=0.25, seed=s)[0] for s in range(6)]
    assert any(o != got for o in other)
    assert add_abstention_pairs(pairs, MEMORIES, share=0.0) == (pairs, {**report, "share": 0.0, "candidates": 0,
                                                                      "abstain": 0, "hinted": 0})
    with pytest.raises(ValueError, match="two or more users"):
        add_abstention_pairs(pairs, {"c:Bob": []}, share=0.5)
    with pytest.raises(InputError, match="abstain_share"):
        SynthConfig(abstain_share=1.5)


def test_pronouns_follow_the_user_asked_about_and_the_other_name_is_no_candidate():
    memories = {"c:Jon": ["Jon lost his job as a banker.", "Jon opened his dance studio; he loves it."],
                "c:Gina": ["Gina runs her online store.", "Gina says she loves her customers."],
                "c:Sam": ["Sam moved to Leeds.", "Sam likes tea."]}
    studio = _pair("c:Jon", "Why did Jon open his dance studio in the city?", "to teach", memories["c:Jon"][1])
    store = _pair("c:Gina", "When did Gina start her online store?", "May 2023", memories["c:Gina"][0])
    herself = _pair("c:Gina", "What did Gina make herself in March?", "a dress", "Gina made herself a dress.")
    advice = _pair("c:Gina", "What did Gina advise Jon to try in May?", "dance classes", "Gina advised Jon.")
    pairs, report = add_abstention_pairs([studio, store, herself, advice], memories, share=1.0)
    asked = {(p["user"], p["question"].removesuffix(HINT)) for p in pairs if p["generator"] == "abstain"}
    # Jon -> Gina: his -> her; Gina -> Jon: "her" (his or him?) is not decided, herself -> himself;
    # Sam's gender is unknown: no pronoun question is asked of Sam (or by swapping from Sam)
    assert ("c:Gina", "Why did Gina open her dance studio in the city?") in asked
    assert ("c:Jon", "What did Jon make himself in March?") in asked
    assert not any("Jon advise Jon" in q for _, q in asked)
    assert ("c:Sam", "What did Sam advise Jon to try in May?") in asked
    assert not any(u == "c:Sam" and re.search(r"\b(his|her|himself)\b", q) for u, q in asked)
    # pronoun drops: studio -> Sam; store -> Jon and Sam; herself -> Sam
    assert report["pronoun"] == 4


@pytest.fixture
def store(tmp_path):
    s = observation_store(tmp_path / "st", MEMORIES)
    yield s
    s.close()


def test_synth_stage_adds_them_and_needs_two_users(store):
    cfg = SynthConfig(generator="rule", check_answerable=False, abstain_share=1.0)
    pairs, report = synth_stage(store, list(MEMORIES), None, cfg)
    plain, _ = synth_stage(store, list(MEMORIES), None, SynthConfig(generator="rule", check_answerable=False))
    n = report["abstain"]["abstain"]
    assert n >= 1 and report["kept"] == len(pairs) == len(plain) + 2 * n and pairs[:len(plain)] == plain
    assert [p["answer"] for p in pairs[len(plain) + n:]] == [ABSTAIN_ANSWER] * n
    with pytest.raises(InputError, match="two or more users") as e:
        synth_stage(store, ["c:Ann"], None, cfg)
    assert e.value.field == "abstain_share"


def test_retrieval_searches_the_question_without_the_hint(tmp_path):
    asked = []

    def retrieve(q):
        asked.append(q)
        return ["Bob moved to Bristol in June 2023."]

    q = "Where did Ann move in June?"
    pair = _pair("c:Ann", with_hint(q), ABSTAIN_ANSWER, "Bob moved to Bristol in June 2023.")
    report = {"dropped": {}}
    evidence_stage([pair], report, retrieve, 3, "include")
    rows = build_student_data([QAPair(pair["key"], pair["question"], pair["answer"], pair["context"])], retrieve,
                              tmp_path, TrainConfig())
    assert asked == [q, q]
    assert rows[0]["question"] == q + HINT  # the student's prompt keeps it
    assert report["evidence_in_topk"]["in_topk"] == 1
