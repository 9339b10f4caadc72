"""The synthesis prompts: the unconstrained writer's (``llm-text``) and the answerability re-ask's.
The versioned teacher / student formats that go into the teacher cache live in :mod:`.prompts`."""

from __future__ import annotations

from typing import Sequence

GEN_SYSTEM = ("You write quiz questions about a person from facts about them. Each question asks "
              "about one detail of the facts; each answer is a short phrase copied from the facts.")
_GEN_EXAMPLE_FACTS = ["Melanie adopted a dog named Luna in March 2023 after she moved to Denver."]
_GEN_EXAMPLE_REPLY = ("Q: What is the name of Melanie's dog?\nA: Luna\n"
                      "Q: Where did Melanie move?\nA: Denver")

ANSWER_SYSTEM = "Answer the question from the facts with a short phrase copied from them. No sentence."
# The worked example's answer is a common noun: with a name ("Luna") SmolLM2-135M copied it into
# most replies; with no example it wrote long, invented sentences.
_ANSWER_EXAMPLE = ("Facts:\n- Tom bakes bread with his daughter every Sunday morning.\n\n"
                   "Question: What does Tom bake?", "bread")


def _facts_block(texts: Sequence[str]) -> str:
    return "Facts:\n" + "\n".join(f"- {t}" for t in texts)


def generation_messages(texts: Sequence[str], n_pairs: int) -> list[dict]:
    """Prompt asking for ``n_pairs`` question-answer pairs about the given observations."""
    ask = f"Write {n_pairs} questions with short answers, as Q: and A: lines."
    return [{"role": "system", "content": GEN_SYSTEM},
            {"role": "user", "content": f"{_facts_block(_GEN_EXAMPLE_FACTS)}\n\n{ask}"},
            {"role": "assistant", "content": _GEN_EXAMPLE_REPLY},
            {"role": "user", "content": f"{_facts_block(texts)}\n\n{ask}"}]


def answer_messages(context: str, question: str) -> list[dict]:
    """Prompt re-asking a question with its source context (the answerability filter)."""
    lines = [ln for ln in context.splitlines() if ln.strip()] or [context]
    return [{"role": "system", "content": ANSWER_SYSTEM},
            {"role": "user", "content": _ANSWER_EXAMPLE[0]},
            {"role": "assistant", "content": _ANSWER_EXAMPLE[1]},
            {"role": "user", "content": f"{_facts_block(lines)}\n\nQuestion: {question}"}]
