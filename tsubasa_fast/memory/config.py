"""The memory-writing stage config: where observations come from, how they evolve, how they
are embedded (light: no model import, so the CLI reads its defaults from here)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

SOURCES = ("utterances", "observations", "llm")
HISTORY_SOURCES = ("llm", "utterances")  # what a user's own history offers (no dataset observations)
MANAGERS = ("llm", "rule", "static")
EMBEDDERS = ("minilm", "hashing")
DEFAULT_K = 3  # memories retrieved per question: search, the student's prompt and its training


@dataclass
class MemoryConfig:
    """``source``: raw utterances, the dataset's observations, or LLM extraction (grounded, with
    a counted fallback to the user's own words); ``manager``: the evolution manager (ADD /
    UPDATE / RECONCILE / IGNORE); ``uncited_turns``: also remember the user's turns that none
    of their observations of the session cites (observations and llm sources)."""

    source: str = "llm"
    manager: str = "rule"
    embedder: str = "minilm"
    uncited_turns: bool = True

    def __post_init__(self):
        for name, allowed in (("source", SOURCES), ("manager", MANAGERS), ("embedder", EMBEDDERS)):
            if getattr(self, name) not in allowed:
                raise InputError(f"must be one of {allowed}, got {getattr(self, name)!r}", field=name)
        if self.uncited_turns not in (True, False):
            raise InputError(f"must be True or False, got {self.uncited_turns!r}", field="uncited_turns")


def default_manager(source: str) -> str:
    """The evolution manager of a store written from ``source`` when none is named: raw utterances
    stay as they were said (static: the RAG baseline), observations evolve (rule)."""
    if source not in SOURCES:
        raise InputError(f"must be one of {SOURCES}, got {source!r}", field="source")
    return "static" if source == "utterances" else "rule"
