"""Evolving user memory (TSUBASA wing 1): extraction, evolution, a durable store, LoCoMo eval.

The thin API::

    from tsubasa_fast.memory import MemoryStore, HashingEmbedder, MiniLMEmbedder
    store = MemoryStore("mem/", MiniLMEmbedder())
    store.add("conv-26:Caroline", "Caroline adopted a dog on 2023-05-08.")
    store.search("conv-26:Caroline", "Does Caroline have pets?", k=3)

Modules: store (SQLite + hnswlib), embedders, locomo (loader + retrieval eval),
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
    "EmbedderMismatchError", "HashingEmbedder", "Hit", "MemoryStore", "MemoryStoreError",
    "MiniLMEmbedder", "Record", "RecordNotFoundError", "StaleTargetError", "StoreLockedError",
    "make_embedder",
]
