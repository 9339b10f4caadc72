"""QA pairs on disk and their teacher-forced token sequences.

A QA file is JSONL, one pair per line with at least ``question``, ``answer`` and
``context`` (``tsubasa-fast synth`` writes it, with provenance). Each pair has a stable
``key`` (given, or a hash of its text) that names its rows in the teacher cache.

Teacher and student sequences share the answer tokens (answer + end-of-turn token); the
hidden state at position p predicts token p+1, so the rows that matter are
``[answer_start - 1, answer_start + answer_len - 1)`` of each sequence.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..chat import chat_prompt_ids


@dataclass(frozen=True)
class QAPair:
    key: str
    question: str
    answer: str
    context: str
    meta: dict = field(default_factory=dict, compare=False)


def pair_key(question: str, answer: str, context: str) -> str:
    digest = hashlib.sha256("\x1f".join((question, answer, context)).encode()).hexdigest()
    return f"qa-{digest[:16]}"


def load_qa(path: str | Path) -> list[QAPair]:
    """Reads a QA JSONL file; a malformed line raises ValueError naming the line and field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"QA file {path} does not exist")
    pairs, seen = [], set()
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        for name in ("question", "answer", "context"):
            value = obj.get(name)
            if isinstance(value, list) and name == "context":
                value = "\n".join(map(str, value))
            if not isinstance(value, (str, int, float)) or not str(value).strip():
                raise ValueError(f"{path}:{n}: field {name!r} must be a non-empty string")
            obj[name] = str(value).strip()
        key = str(obj.get("key") or pair_key(obj["question"], obj["answer"], obj["context"]))
        if key in seen:
            raise ValueError(f"{path}:{n}: duplicate key {key!r}")
        seen.add(key)
        meta = {k: v for k, v in obj.items() if k not in ("key", "question", "answer", "context")}
        pairs.append(QAPair(key, obj["question"], obj["answer"], obj["context"], meta))
    if not pairs:
        raise ValueError(f"{path} holds no QA pairs")
    return pairs


@dataclass(frozen=True)
class Encoded:
    """One teacher-forced sequence: prompt + answer tokens + end-of-turn. ``truncated``: prompt
    tokens cut from the front to fit ``max_length`` (counted by the stages, never silent)."""

    input_ids: list[int]
    answer_start: int
    answer_len: int
    truncated: int = 0

    @property
    def target_rows(self) -> slice:
        return slice(self.answer_start - 1, self.answer_start - 1 + self.answer_len)


def answer_ids(tokenizer, answer: str) -> list[int]:
    """The answer's token ids followed by the end-of-turn token (what the model must emit)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token: cannot end an answer")
    return tokenizer.encode(answer.strip(), add_special_tokens=False) + [tokenizer.eos_token_id]


def encode(tokenizer, messages: list[dict], answer: str, max_length: int | None = None) -> Encoded:
    """Chat-template prompt (with the assistant header, thinking off) followed by the answer tokens."""
    prompt = chat_prompt_ids(tokenizer, messages)
    ans = answer_ids(tokenizer, answer)
    cut = 0
    if max_length is not None and len(prompt) + len(ans) > max_length:
        keep = max(1, max_length - len(ans))  # keep the end of the prompt (question + header)
        cut = len(prompt) - keep
        prompt = prompt[-keep:]
    return Encoded(prompt + ans, len(prompt), len(ans), cut)


def collate(seqs: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask, and target_mask marking the rows whose
    hidden state predicts an answer token (in example order, then position order)."""
    width = max(len(s.input_ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros(len(seqs), width, dtype=torch.long)
    target = torch.zeros(len(seqs), width, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s.input_ids)] = torch.tensor(s.input_ids)
        attn[i, : len(s.input_ids)] = 1
        target[i, s.target_rows] = True
    return {"input_ids": ids, "attention_mask": attn, "target_mask": target}
