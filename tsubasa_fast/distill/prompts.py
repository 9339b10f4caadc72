"""Prompt formats of the distillation engine, in one place and versioned.

The teacher sees the gold evidence; the student sees what it will see at inference (the
top-k memories retrieved from the user's evolved store, or nothing in the ungrounded
ablation). Both are teacher-forced on the same answer tokens, so their per-token
distributions line up row for row. TEMPLATE_VERSION goes into the teacher cache's
manifest: changing a prompt below must bump it, which invalidates old caches.
"""

from __future__ import annotations

TEMPLATE_VERSION = "tsubasa-prompts-2"  # 2: thinking off in chat templates (Qwen3)

SYSTEM = ("You answer questions about the user from what you know of them. "
          "Answer with a short phrase, no explanation.")


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
WRITER_VERSION = "tsubasa-writer-1"  # bump when the writer's prompt below changes

WRITER_SYSTEM = ("You write quiz questions about a person from one fact about them. Write a short question "
                 "about the person that the fact answers, then pick its answer from the candidate answers. "
                 "Name the person in the question; never say I, you or my. Answer with JSON.")
# One worked example (invented, not from any dataset).
_WRITER_EXAMPLE = ("[3 March 2022] Priya adopted a cat named Miso after she moved to Leeds.", "Priya",
                   ["3 March 2022", "cat", "Miso", "Leeds"],
                   '[{"question": "What is the name of Priya\'s cat?", "answer": "Miso"}, '
                   '{"question": "Where did Priya move?", "answer": "Leeds"}]')


def _writer_turn(text: str, name: str, spans: list[str], n_pairs: int) -> str:
    return (f"Fact: {text}\nPerson: {name}\nCandidate answers: {'; '.join(spans)}\n\n"
            f"Write up to {n_pairs} questions about {name} as JSON.")


def writer_messages(text: str, name: str, spans: list[str], n_pairs: int) -> list[dict]:
    """Chat messages for the question writer: one observation, the user's name, its candidate answers."""
    ex_text, ex_name, ex_spans, ex_reply = _WRITER_EXAMPLE
    return [{"role": "system", "content": WRITER_SYSTEM},
            {"role": "user", "content": _writer_turn(ex_text, ex_name, ex_spans, 2)},
            {"role": "assistant", "content": ex_reply},
            {"role": "user", "content": _writer_turn(text, name, list(spans), n_pairs)}]
