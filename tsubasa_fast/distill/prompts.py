"""Prompt formats of the distillation engine, in one place and versioned.

The teacher sees the gold evidence; the student sees what it will see at inference (the
top-k memories retrieved from the user's evolved store, or nothing in the ungrounded
ablation). Both are teacher-forced on the same answer tokens, so their per-token
distributions line up row for row. TEMPLATE_VERSION goes into the teacher cache's
manifest: changing a prompt below must bump it, which invalidates old caches.
"""

from __future__ import annotations

import json

TEMPLATE_VERSION = "tsubasa-prompts-2"  # 2: thinking off in chat templates (Qwen3)

SYSTEM = ("You answer questions about the user from what you know of them. "
          "Answer with a short phrase, no explanation.")


# The abstention hint: eval qa appends it to LoCoMo's category-5 (adversarial) questions, and
# abstention training (.abstain) to the questions it writes and to as many answerable ones.
ABSTAIN_ANSWER = "No information available"
ABSTAIN_HINT = f' If the memories do not say, answer "{ABSTAIN_ANSWER}".'


def with_hint(question: str) -> str:
    """``question`` followed by the abstention hint (once)."""
    return question if question.endswith(ABSTAIN_HINT) else question + ABSTAIN_HINT


def without_hint(question: str) -> str:
    """``question`` without the abstention hint: what retrieval searches for."""
    return question[: -len(ABSTAIN_HINT)] if question.endswith(ABSTAIN_HINT) else question


def _user_turn(question: str, block_title: str | None, lines: list[str]) -> str:
    if block_title is None:
        return f"Question: {question}"
    listed = "\n".join(f"- {line}" for line in lines) if lines else "- (none)"
    return f"{block_title}:\n{listed}\n\nQuestion: {question}"


def teacher_messages(context: str | list[str], question: str) -> list[dict]:
    """Chat messages for the teacher: the evidence the QA pair was written from + question."""
    lines = [context] if isinstance(context, str) else list(context)
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": _user_turn(question, "Evidence", lines)}]


def student_messages(memories: list[str] | None, question: str) -> list[dict]:
    """Chat messages for the student and for answering: retrieved memories + question.

    ``memories=None`` is the paper's "no grounding" ablation (the question alone).
    """
    title = None if memories is None else "Memories"
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": _user_turn(question, title, memories or [])}]


# ------------------------------------------------------------------ the LLM question writer
WRITER_VERSION = "tsubasa-writer-2"  # bump when the writer's prompts below change
# 2: answer first (the program picks the span, the model writes its question), round-trip check

WRITER_SYSTEM = ("You write one quiz question about a person. The given answer, taken from the fact, must "
                 "answer your question. Name the person in the question; never say I, you or my. "
                 "Answer with JSON.")
# Worked examples (invented, not from any dataset): one per kind of answer.
_WRITER_EXAMPLES = (
    ("[3 March 2022] Priya adopted a cat named Miso after she moved to Leeds.", "Priya", "Miso",
     "What is the name of Priya's cat?"),
    ("[3 March 2022] Priya adopted a cat named Miso after she moved to Leeds.", "Priya", "Leeds",
     "Where did Priya move?"),
    ("[9 May 2021] Tom starts his new job at Acme Bank on 2 June 2021.", "Tom", "2 June 2021",
     "When does Tom start his new job?"),
    ("[9 May 2021] Tom has run three marathons with his brother Ben.", "Tom", "three marathons",
     "How many marathons has Tom run?"),
    ("[9 May 2021] Tom has run three marathons with his brother Ben.", "Tom", "Ben",
     "Who has Tom run marathons with?"),
)


def _writer_turn(text: str, name: str, answer: str) -> str:
    return f"Fact: {text}\nPerson: {name}\nAnswer: {answer}\n\nWrite the question about {name} as JSON."


def question_messages(text: str, name: str, answer: str) -> list[dict]:
    """Chat messages for the question writer: one observation, the user's name, the answer to ask for."""
    messages = [{"role": "system", "content": WRITER_SYSTEM}]
    for ex_text, ex_name, ex_answer, ex_question in _WRITER_EXAMPLES:
        messages += [{"role": "user", "content": _writer_turn(ex_text, ex_name, ex_answer)},
                     {"role": "assistant", "content": json.dumps({"question": ex_question})}]
    return messages + [{"role": "user", "content": _writer_turn(text, name, answer)}]


PICK_SYSTEM = "Answer the question from the fact: pick the answer among the candidates. Answer with JSON."
_PICK_EXAMPLE = ("[9 May 2021] Tom has run three marathons with his brother Ben.", "Who has Tom run marathons with?",
                 ["9 May 2021", "three marathons", "brother Ben"], "brother Ben")


def _pick_turn(text: str, question: str, spans: list[str]) -> str:
    return f"Fact: {text}\nQuestion: {question}\nCandidates: {'; '.join(spans)}"


def pick_messages(text: str, question: str, spans: list[str]) -> list[dict]:
    """Chat messages for the writer's round-trip check: the question answered from its observation."""
    ex_text, ex_q, ex_spans, ex_answer = _PICK_EXAMPLE
    return [{"role": "system", "content": PICK_SYSTEM},
            {"role": "user", "content": _pick_turn(ex_text, ex_q, ex_spans)},
            {"role": "assistant", "content": json.dumps({"answer": ex_answer})},
            {"role": "user", "content": _pick_turn(text, question, list(spans))}]
