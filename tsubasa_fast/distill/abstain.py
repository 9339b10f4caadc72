"""Abstention pairs: questions about a user that the user's memories cannot answer.

LoCoMo's adversarial questions ask about one speaker what the other one said or did ("What did
Caroline paint?" when Melanie painted) and expect "No information available". A student
distilled on answerable pairs alone forgets to abstain (benchmarks/README.md: 5.0 against the
base's 46.8 on category 5). :func:`add_abstention_pairs` writes such questions from the kept
pairs of two or more users: another user's question with the name swapped, kept only when no
memory of the user asked about supports the answer; its answer is ``ABSTAIN_ANSWER`` and its
question carries the abstention hint, as eval qa's category-5 questions do. As many answerable
pairs are copied with the same hint and keep their answer, so the hint alone never means
"abstain". The teacher's evidence is the fact's source, the other person's memory: it shows
whose fact it is.
"""

from __future__ import annotations

import random
import re
from typing import Mapping, Sequence

from .data import pair_key
from .pair_check import first_name
from .prompts import ABSTAIN_ANSWER, with_hint
from .synth_filters import FUNCTION_WORDS, context_overlap, normalize_question


_QUESTION_WORDS = frozenset("what when where who whom whose why how which did does do has have had is are was "
                            "were name kind type".split())


def _topic(question: str, name: str) -> str:
    """The question's content words: without the name, question and function words."""
    words = normalize_question(question).split()
    drop = _QUESTION_WORDS | FUNCTION_WORDS | {name.lower(), name.lower() + "s"}
    return " ".join(w for w in words if w not in drop)


_MALE = {"he": "she", "his": "her", "him": "her", "himself": "herself"}
_FEMALE = {"she": "he", "hers": "his", "herself": "himself"}  # "her": his or him, not decided here
_PRONOUN = re.compile(r"\b(he|his|him|himself|she|her|hers|herself)\b", re.I)


def _gender(texts: Sequence[str]) -> str | None:
    """"m" or "f" when one set of third-person pronouns is at least twice the other in a user's
    memories (observations are written in the third person), else None."""
    words = [w.lower() for t in texts for w in _PRONOUN.findall(t)]
    male = sum(w in _MALE for w in words)
    female = len(words) - male
    return "m" if male >= 2 * max(female, 1) else "f" if female >= 2 * max(male, 1) else None


def _repronoun(question: str, source: str | None, target: str | None) -> str | None:
    """``question`` with its pronouns for the user asked about (gender ``target``), or None
    when that cannot be decided (a gender unknown, or "her" to turn into "his" or "him")."""
    found = [w.lower() for w in _PRONOUN.findall(question)]
    if not found or (source is not None and source == target):
        return question
    if source is None or target is None or (source == "f" and "her" in found):
        return None
    table = _MALE if source == "m" else _FEMALE
    return _PRONOUN.sub(lambda m: _case(table.get(m.group(0).lower(), m.group(0)), m.group(0)), question)


def _case(word: str, like: str) -> str:
    return word.capitalize() if like[:1].isupper() else word


def _supports(answer: str, topic: str, memory: str, min_overlap: float) -> bool:
    """Whether ``memory`` may answer the question: it holds every content word of the question
    (maybe with another answer), or half of them and ``min_overlap`` of the answer's."""
    covered = context_overlap(topic, memory, extend_short=True)  # "face" is found in "faced"
    return covered == 1.0 or (covered >= 0.5 and context_overlap(answer, memory) >= min_overlap)


def add_abstention_pairs(pairs: list[dict], memories: Mapping[str, Sequence[str]], share: float,
                         seed: int = 0, min_overlap: float = 0.5) -> tuple[list[dict], dict]:
    """``pairs`` followed by hinted copies of as many of them as there are abstention pairs, then
    about ``share * len(pairs)`` abstention pairs; returns ``(pairs, report)``. The copies keep
    their answer; the originals stay, so every fact is still learnt from its plain question, the
    form eval qa asks outside category 5.

    ``memories``: each user's memory texts (the users the questions may be asked about). A
    swapped question is dropped as ``vague`` when fewer than two content words are left besides
    the name ("What did Melanie join?": she may have joined something; one is enough after a
    possessive: "What is the name of Melanie's dog?"), as ``answerable`` when
    one of the asked user's memories holds every content word of the question ("What does
    Caroline play the guitar for?" beside "Caroline plays the guitar to relax"), or half of them
    and at least ``min_overlap`` of the answer's (they did the same), as ``duplicate`` when
    already asked.
    A question naming the other user too is no candidate, and a question's pronouns follow the
    user asked about (their gender read from their memories' pronouns; dropped as ``pronoun``
    when that cannot be decided). Deterministic in ``seed``.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    report = {"share": share, "candidates": 0, "pronoun": 0, "vague": 0, "answerable": 0, "duplicate": 0,
              "abstain": 0, "hinted": 0}
    if share == 0.0 or not pairs:
        return pairs, report
    users = sorted(memories)
    if len(users) < 2:
        raise ValueError(f"abstention pairs need the memories of two or more users, got {users}")
    rng = random.Random(seed)
    genders = {u: _gender(memories[u]) for u in users}
    candidates = []
    for p in pairs:
        pattern = re.compile(rf"\b{re.escape(first_name(p['user']))}\b")
        if not pattern.search(p["question"]):
            continue
        for other in users:
            if first_name(other) == first_name(p["user"]):
                continue
            if re.search(rf"\b{re.escape(first_name(other))}\b", p["question"]):
                continue  # "What did Gina advise Jon to do?" asked of Jon would read "Jon advise Jon"
            question = _repronoun(pattern.sub(first_name(other), p["question"]), genders.get(p["user"]),
                                  genders[other])
            if question is None:
                report["pronoun"] += 1
                continue
            candidates.append((p, other, question))
    report["candidates"] = len(candidates)
    rng.shuffle(candidates)
    want = round(share * len(pairs))
    asked = {normalize_question(p["question"]) for p in pairs}
    abstain: list[dict] = []
    for p, other, question in candidates:
        if len(abstain) >= want:
            break
        if normalize_question(question) in asked:
            report["duplicate"] += 1
            continue
        topic = _topic(question, first_name(other))
        possessive = re.search(rf"\b{re.escape(first_name(other))}'s\b", question)
        if len(topic.split()) < (1 if possessive else 2):  # "What did Melanie join?": she may well have
            # joined something; "What is the name of Melanie's dog?" asks for one thing
            report["vague"] += 1
            continue
        if any(_supports(p["answer"], topic, m, min_overlap) for m in memories[other]):
            report["answerable"] += 1
            continue
        asked.add(normalize_question(question))
        question = with_hint(question)
        abstain.append({"key": pair_key(question, ABSTAIN_ANSWER, p["context"]), "question": question,
                        "answer": ABSTAIN_ANSWER, "context": p["context"], "user": other,
                        "record_ids": p.get("record_ids", []), "dia_ids": p.get("dia_ids", []),
                        "observed_at": p.get("observed_at"), "sessions": p.get("sessions", []),
                        "generator": "abstain", "abstain_from": {"user": p["user"], "key": p["key"]}})
    hinted = []
    for i in sorted(rng.sample(range(len(pairs)), len(abstain))):  # len(abstain) <= share * len(pairs)
        p = pairs[i]
        question = with_hint(p["question"])
        hinted.append({**p, "key": pair_key(question, p["answer"], p["context"]), "question": question,
                       "hinted": True})
    report.update(abstain=len(abstain), hinted=len(hinted))
    return list(pairs) + hinted + abstain, report
