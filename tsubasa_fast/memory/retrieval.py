"""Retrieval variants over a MemoryStore, as ``search(user_id, query, k) -> [Retrieved]``.

* ``dense``: the store's cosine search (exact / HNSW).
* ``hybrid``: dense cosine fused with BM25 over the user's live records
  (score = alpha * cosine + (1 - alpha) * bm25 / max bm25).
* ``date``: hybrid plus a boost for records whose date matches a month / year named in the
  question ("in May 2023", "in 2022").

The lexical index is rebuilt per user when the store's live set changes (cheap: LoCoMo users
have hundreds of records). Ranking is done on all live records of the user, so every
variant returns exactly min(k, live) results.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Callable

import numpy as np

from .locomo import Retrieved
from .store import MemoryStore

_WORD = re.compile(r"[a-z0-9]+")
_STOP = set("""a an the and or but of to in on at for with from by as is are was were be been it its this that
these those he she they them his her their i you we my our your has have had do does did what when where
which who whom how why would could should will can may might""".split())
_MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september",
           "october", "november", "december"]


def _stem(w: str) -> str:
    for suf in ("ing", "ed", "es", "s"):
        if len(w) > len(suf) + 3 and w.endswith(suf):
            return w[: -len(suf)]
    return w


def terms(text: str) -> list[str]:
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP]


class _BM25:
    def __init__(self, docs: list[list[str]], k1: float = 1.2, b: float = 0.75):
        self.k1, self.b = k1, b
        self.tf = [Counter(d) for d in docs]
        self.len = np.array([len(d) for d in docs], dtype=np.float32)
        self.avg = float(self.len.mean()) if len(docs) else 1.0
        df = Counter(t for d in self.tf for t in d)
        n = len(docs)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}

    def scores(self, query: list[str]) -> np.ndarray:
        out = np.zeros(len(self.tf), dtype=np.float32)
        norm = self.k1 * (1 - self.b + self.b * self.len / max(self.avg, 1e-9))
        for t in set(query):
            idf = self.idf.get(t)
            if idf is None:
                continue
            f = np.array([tf.get(t, 0) for tf in self.tf], dtype=np.float32)
            out += idf * f * (self.k1 + 1) / (f + norm)
        return out


class Retriever:
    """Dense, hybrid or date-aware ranking over one store."""

    def __init__(self, store: MemoryStore, mode: str = "dense", alpha: float = 0.5, date_boost: float = 0.1):
        if mode not in ("dense", "hybrid", "date"):
            raise ValueError(f"--retrieval: unknown mode {mode!r}; expected dense, hybrid or date")
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.store, self.mode, self.alpha, self.date_boost = store, mode, alpha, date_boost
        self._cache: dict[str, tuple] = {}

    def _user(self, user_id: str):
        count = self.store.count(user_id, live_only=False)
        hit = self._cache.get(user_id)
        if hit is not None and hit[0] == count:
            return hit[1]
        recs = self.store.all(user_id)
        data = (recs, {r.id: i for i, r in enumerate(recs)}, _BM25([terms(r.text) for r in recs]))
        self._cache[user_id] = (count, data)
        return data

    def __call__(self, user_id: str, query: str, k: int) -> list[Retrieved]:
        return self.search(user_id, query, k)

    def search(self, user_id: str, query: str, k: int) -> list[Retrieved]:
        if self.mode == "dense":
            return [Retrieved(h.record.text, tuple(h.record.dia_ids), h.score, user_id)
                    for h in self.store.search(user_id, query, k)]
        recs, pos, bm25 = self._user(user_id)
        if not recs:
            return []
        ids, cos = self.store.search_ids(user_id, self.store.embed_query(query), len(recs))
        dense = np.zeros(len(recs), dtype=np.float32)
        for rid, s in zip(ids.tolist(), cos.tolist()):
            if rid in pos:
                dense[pos[rid]] = s
        lex = bm25.scores(terms(query))
        # normalise BM25 by a per-query constant shared by both speakers' stores
        lex = lex / (lex + 5.0)
        score = self.alpha * dense + (1 - self.alpha) * lex
        if self.mode == "date":
            score = score + self.date_boost * self._date_match(query, recs)
        top = np.argsort(-score, kind="stable")[:k]
        return [Retrieved(recs[i].text, tuple(recs[i].dia_ids), float(score[i]), user_id) for i in top]

    @staticmethod
    def _date_match(query: str, recs) -> np.ndarray:
        q = query.lower()
        years = set(re.findall(r"\b(19\d\d|20\d\d)\b", q))
        months = {i + 1 for i, m in enumerate(_MONTHS) if re.search(rf"\b{m}\b", q)}
        out = np.zeros(len(recs), dtype=np.float32)
        if not years and not months:
            return out
        for i, r in enumerate(recs):
            if not r.observed_at:
                continue
            y, m = int(r.observed_at[:4]), int(r.observed_at[5:7])
            ok = (not years or str(y) in years) and (not months or m in months)
            out[i] = 1.0 if ok else 0.0
        return out


def make_search(store: MemoryStore, mode: str = "dense", **kwargs) -> Callable[[str, str, int], list[Retrieved]]:
    return Retriever(store, mode, **kwargs)
