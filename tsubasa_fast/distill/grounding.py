"""How the student is grounded: the top-k memories retrieved from the user's evolved store.

Training (the student prompts) and answering use this one function, so the student is
trained on exactly the inference format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import InputError
from ..memory.config import DEFAULT_K
from ..memory.retrieval import DEFAULT_MODE, Retriever
from ..memory.store import open_store


def memory_retriever(store_dir: str | Path, user: str, k: int = DEFAULT_K,
                     mode: str = DEFAULT_MODE) -> Callable[[str], list[str]]:
    """``retrieve(question) -> [memory text, ...]`` (at most k) over one user's live memories."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    store = open_store(Path(store_dir), must_exist=True)
    if store.count(user) == 0:
        users = ", ".join(store.users()[:10]) or "none"
        store.close()
        raise InputError(f"no memories for user {user!r} in {store_dir} (users: {users})", field="user")
    retriever = Retriever(store, mode)

    def retrieve(question: str) -> list[str]:
        return [r.text for r in retriever.search(user, question, k)]

    retrieve.store = store  # keeps the store open as long as the function lives
    return retrieve
