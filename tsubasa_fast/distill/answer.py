"""Answering with the personalised student: retrieve the top-k memories, prompt, generate.

The adapter is loaded per user from its folder; its base-model fingerprint and tokenizer
are checked against the model it is loaded onto (``student.check_adapter``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..llm import ChatLM
from .configs import AnswerConfig  # noqa: F401  (re-exported)
from .grounding import memory_retriever
from .prompts import student_messages
from .student import AdapterMismatchError, Student, StudentConfig, adapter_meta


@dataclass
class Answer:
    text: str
    memories: list[str] | None


class Answerer:
    """Answers one user's questions with base + that user's adapter (or the base alone)."""

    def __init__(self, store_dir: str | Path, user: str, adapter: str | Path | None = None,
                 model: str | None = None, config: AnswerConfig | None = None,
                 student_config: StudentConfig | None = None, student: Student | None = None):
        self.config = config or AnswerConfig()
        self.user = user
        if adapter is not None:
            owner = adapter_meta(adapter).get("user")
            if owner is not None and owner != user:
                raise AdapterMismatchError(f"{adapter} was trained for user {owner!r}, not {user!r}", field="adapter")
        if student is None:
            cfg = student_config or StudentConfig()  # the caller's config is never modified
            if model is not None:
                cfg = replace(cfg, model=model)
            elif adapter is not None and cfg.model is None:
                cfg = replace(cfg, model=adapter_meta(adapter).get("base_model"))
            student = Student(cfg, adapter=adapter, trainable=False)
        self.student = student
        self.student.model.eval()
        self.retrieve = (memory_retriever(store_dir, user, self.config.k, self.config.retrieval)
                         if self.config.grounding else None)
        self.chat = ChatLM(self.student.model, self.student.tokenizer,
                           max_new_tokens=self.config.max_new_tokens)

    def __call__(self, question: str) -> Answer:
        return self.answer(question)

    def answer(self, question: str, adapter: bool = True) -> Answer:
        """The answer and the memories it saw; ``adapter=False`` asks the base model."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
        memories = self.retrieve(question) if self.retrieve is not None else None
        return Answer(self.chat(student_messages(memories, question), adapter=adapter), memories)
