"""Evolving user memory (TSUBASA wing 1): extraction, evolution, a durable store, LoCoMo eval.

The thin API::

    from tsubasa_fast.memory import MemoryStore, HashingEmbedder, MiniLMEmbedder
    store = MemoryStore("mem/", MiniLMEmbedder())
    store.add("conv-26:Caroline", "Caroline adopted a dog on 2023-05-08.")
    store.search("conv-26:Caroline", "Does Caroline have pets?", k=3)

``Memory`` (:mod:`.api`) is the same memory with Mem0's calls (``add(messages, user_id=...)``,
``search``, ``get_all``, ``history``, ``update``, ``delete``); it is loaded on first use.

Modules: api (the Mem0-shaped Memory), store (SQLite + hnswlib), embedders, locomo (loader + retrieval eval),
retrieval (dense / hybrid / date-aware rankers), extraction (LLM observation extractor),
evolution (llm / rule / static managers), ingest (pipelines).
This package never imports the loss / distillation code.
"""

from .embedders import HashingEmbedder, MiniLMEmbedder, make_embedder
from .store import (
    EmbedderMismatchError,
    Hit,
    MemoryStore,
    MemoryStoreError,
    Record,
    RecordNotFoundError,
    StaleTargetError,
    StoreLockedError,
)

__all__ = [
    "EmbedderMismatchError", "Memory", "HashingEmbedder", "Hit", "MemoryStore", "MemoryStoreError",
    "MiniLMEmbedder", "Record", "RecordNotFoundError", "StaleTargetError", "StoreLockedError",
    "make_embedder",
]


def __getattr__(name: str):
    if name == "Memory":  # loaded on first use: the api pulls in retrieval and evolution
        from .api import Memory

        return Memory
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
