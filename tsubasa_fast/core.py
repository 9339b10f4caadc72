"""Core data types shared by every layer: a user's history (turns, dated sessions, QA) and a
retrieved memory. They live here, below the memory and the evaluation, so that no module
has to import a dataset loader to name them.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Callable

# LoCoMo's question categories as the dataset's own code numbers them (some libraries
# number them differently).
CATEGORY_NAMES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}


@dataclass(frozen=True)
class Turn:
    speaker: str
    dia_id: str
    text: str
    blip_caption: str | None = None

    def full_text(self) -> str:
        """Utterance text plus the shared image's caption, if any."""
        if self.blip_caption:
            return f"{self.text} [shares {self.blip_caption}]".strip()
        return self.text


@dataclass(frozen=True)
class Session:
    number: int
    date_time: str
    date: _dt.datetime
    turns: tuple[Turn, ...]

    @property
    def date_str(self) -> str:
        """Human date used in memory texts and prompts, e.g. ``8 May 2023``."""
        return f"{self.date.day} {self.date.strftime('%B %Y')}"


@dataclass(frozen=True)
class QA:
    question: str
    answer: str | None
    evidence: tuple[str, ...]
    category: int
    adversarial_answer: str | None = None


@dataclass
class Conversation:
    sample_id: str
    speaker_a: str
    speaker_b: str
    sessions: list[Session]
    qa: list[QA]
    # observations[session_number][speaker] = [(text, [dia_ids]), ...]
    observations: dict[int, dict[str, list[tuple[str, list[str]]]]] = field(default_factory=dict)
    session_summaries: dict[int, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def speakers(self) -> tuple[str, str]:
        return (self.speaker_a, self.speaker_b)

    def user_id(self, speaker: str) -> str:
        if speaker not in self.speakers:
            raise ValueError(f"speaker {speaker!r} is not in conversation {self.sample_id} {self.speakers}")
        return f"{self.sample_id}:{speaker}"

    @property
    def user_ids(self) -> list[str]:
        return [self.user_id(s) for s in self.speakers]

    def session(self, number: int) -> Session:
        for s in self.sessions:
            if s.number == number:
                return s
        raise KeyError(f"{self.sample_id} has no session {number}")


@dataclass(frozen=True)
class Retrieved:
    """One retrieved memory: its text, source dia_ids and score."""
    text: str
    dia_ids: tuple[str, ...]
    score: float
    user_id: str = ""


SearchFn = Callable[[str, str, int], list[Retrieved]]  # (user_id, question, k) -> ranked
