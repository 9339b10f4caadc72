"""Ranking a user's live memories for a query: dense cosine fused with BM25 (bm25s).

Modes:

* ``dense``: the store's cosine search (exact / HNSW) alone.
* ``hybrid``: cosine fused with BM25 over the users' live records. Fusion ``convex`` (default):
  ``alpha * cosine + (1 - alpha) * s / (s + half)`` where ``s`` is the BM25 score, a saturation
  that keeps scores of different users' stores on one scale; ``rrf``: reciprocal rank fusion.
* ``date`` (default): hybrid plus ``date_boost`` for records whose date falls in a month / year
  the question names ("in May 2023"; a named day adds the other half of the boost).

The lexical text of a record is its text, its date ("8 May 2023"), the utterances it cites (its
``dia_ids``, read from the raw sessions the store keeps) and the turn each of those replies to:
document expansion by provenance, so a question phrased in the speakers' words finds a memory
written in the extractor's, and an answer is found through the question that prompted it. The
dense side is the store's own vectors. Ranking covers all live records of the users searched, so every call
returns exactly min(k, live) results.

An evolved record (UPDATE / RECONCILE merged several observations into one text) is also scored
by its *units*: the observations its version chain absorbed, each with its own date and cited
utterances (:func:`memory_units`; their vectors are read from the store, :func:`unit_vectors`,
not re-embedded). Its BM25 score is the best of the merged text's and its units',
its cosine the mean of the merged text's and its best unit's, so merging does not dilute either side.
Results are diversified by provenance (``diversify``): a record whose cited utterances all appear
in higher-ranked results is moved below the ones that add evidence.

:func:`search_conversation` ranks both speakers' memories in one pool (one BM25 index, one
score scale) with ``speaker_boost`` for the speaker a question names; it is the merge used by
``eval retrieval``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
from typing import Callable, Sequence

import bm25s
import numpy as np
import Stemmer

from ..core import Conversation, Retrieved
from .store import MemoryStore, Record

logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets its own logger to DEBUG on import

MODES = ("dense", "hybrid", "date")
FUSIONS = ("convex", "rrf")
# Defaults: the best configuration measured on locomo_dev.json (benchmarks/README.md, Memory).
DEFAULT_MODE = "date"
DEFAULT_ALPHA = 0.5
DEFAULT_SPEAKER_BOOST = 0.1
DEFAULT_DATE_BOOST = 0.1
LEX_HALF = 5.0  # BM25 score that maps to 0.5 in the convex fusion
RRF_K = 60  # the constant of Cormack et al. (2009)
BM25_K1, BM25_B = 1.2, 0.75

# NLTK's English list (bm25s ships it): drops question words and pronouns, which the
# 33-word Lucene list keeps ("what did she ..." would otherwise match every utterance).
STOPWORDS = sorted(bm25s.stopwords.STOPWORDS_EN_PLUS)
_STEMMER = Stemmer.Stemmer("english")
_MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september",
           "october", "november", "december"]
_DATE_PREFIX = re.compile(r"^\[[^\]]*\]\s*")


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Lower-cased word tokens, English stop words removed, Snowball-stemmed (bm25s + PyStemmer)."""
    return bm25s.tokenize(list(texts), stopwords=STOPWORDS, stemmer=_STEMMER, return_ids=False,
                          show_progress=False)


def human_date(iso: str | None) -> str:
    """``2023-05-08`` -> ``8 May 2023`` (empty for no date)."""
    if not iso:
        return ""
    d = _dt.date.fromisoformat(iso[:10])
    return f"{d.day} {d.strftime('%B %Y')}"


def lexical_text(record: Record, turns: dict[str, tuple[str, str | None]]) -> str:
    """What BM25 indexes for a record: its date, its text, the utterances it cites and the turn
    each of them answers (an answer's words are often in the question it replies to).

    ``turns`` maps dia_id -> (``Speaker: text``, dia_id of the previous turn or None), see
    :func:`session_turns`. An utterance memory is its own cited turn: only the previous one is added.
    """
    return _lexical(record.observed_at, record.text, record.dia_ids,
                    record.source.get("kind") == "utterances", turns)


def _lexical(observed_at: str | None, text: str, dia_ids: Sequence[str], own: bool,
             turns: dict[str, tuple[str, str | None]]) -> str:
    parts = [human_date(observed_at), _DATE_PREFIX.sub("", text)]
    seen: set[str] = set()
    for d in dia_ids:
        if d not in turns:
            continue
        prev = turns[d][1]
        for x in ([prev] if prev else []) + ([] if own else [d]):
            if x not in seen:
                seen.add(x)
                parts.append(turns[x][0])
    return " ".join(p for p in parts if p)


def session_turns(store: MemoryStore, user_id: str) -> dict[str, tuple[str, str | None]]:
    """dia_id -> (``Speaker: text [shares caption]``, the previous turn's dia_id in its session)
    over the raw sessions stored for a user."""
    out: dict[str, tuple[str, str | None]] = {}
    for raw in store.raw_sessions(user_id):
        prev = None
        for t in raw["payload"].get("turns", []):
            text = t.get("text") or ""
            if t.get("blip_caption"):
                text = f"{text} [shares {t['blip_caption']}]"
            out[t["dia_id"]] = (f"{t.get('speaker', '')}: {text}", prev)
            prev = t["dia_id"]
    return out


def memory_units(store: MemoryStore, user_id: str, records: Sequence[Record]) -> dict[int, list[tuple[str, list[str], str | None]]]:
    """Live record id -> the observations its version chain absorbed, oldest first, each as
    ``(text, the dia_ids it added, its date)``; only for records with more than one version.

    The text is the observation the event log recorded for the write that made the version
    (the version's own text when the log has none, e.g. a user's rewrite).
    """
    return {rid: [u[:3] for u in units] for rid, units in _unit_chains(store, user_id, records).items()}


def _unit_chains(store: MemoryStore, user_id: str, records: Sequence[Record]):
    """:func:`memory_units` with the id of the version each unit comes from as a fourth item."""
    multi = [r for r in records if r.version > 1]
    if not multi:
        return {}
    versions = {r.id: r for r in store.all(user_id, include_superseded=True)}
    observed: dict[int, str] = {}
    for e in store.events(user_id):
        obs = (e.get("payload") or {}).get("observation")
        if e.get("op") in ("ADD", "UPDATE", "RECONCILE") and e.get("record_id") and isinstance(obs, str) and obs.strip():
            observed[e["record_id"]] = obs
    out: dict[int, list[tuple[str, list[str], str | None, int]]] = {}
    for r in multi:
        chain, v = [], r
        while v is not None:
            chain.append(v)
            v = versions.get(v.supersedes) if v.supersedes is not None else None
        units, cited = [], set()
        for v in reversed(chain):
            new = [d for d in v.dia_ids if d not in cited]
            cited.update(v.dia_ids)
            units.append((observed.get(v.id, v.text), new, v.observed_at, v.id))
        out[r.id] = units
    return out


def unit_vectors(store: MemoryStore, units: Sequence[tuple[str, int]]) -> np.ndarray:
    """Vectors of units given as ``(text, version id)``, float64, read from the store: the
    observation's stored vector (observation_vectors), or the version's own when the unit is its
    text. Only units the store has no vector for (versions written before schema 3) are embedded."""
    if not units:
        return np.zeros((0, store.dim))
    stored = store.db.version_vectors(sorted({v for _, v in units}))
    out = np.zeros((len(units), store.dim), dtype=np.float64)
    missing = []
    for i, (text, vid) in enumerate(units):
        vtext, own, obs = stored.get(vid, (None, None, None))
        if obs is not None:
            out[i] = np.frombuffer(obs, dtype=np.float32)
        elif own is not None and text == vtext:
            out[i] = np.frombuffer(own, dtype=np.float32)
        else:
            missing.append(i)
    if missing:
        out[missing] = store.embedder.embed([units[i][0] for i in missing]).astype(np.float64)
    return out


def diversify(cited: Sequence[Sequence[str]], order: Sequence[int]) -> list[int]:
    """``order`` with every item whose cited dia_ids are all cited by items ranked above it moved
    after the others (their relative order kept); items citing nothing are never moved."""
    keep, later, seen = [], [], set()
    for i in order:
        ids = set(cited[i])
        if ids and ids <= seen:
            later.append(i)
        else:
            keep.append(i)
            seen |= ids
    return keep + later


def saturate(bm25: np.ndarray, half: float = LEX_HALF) -> np.ndarray:
    """BM25 -> [0, 1): ``s / (s + half)``; a fixed map, so two stores' scores stay comparable."""
    return bm25 / (bm25 + half)


def convex_fusion(dense: np.ndarray, lex: np.ndarray, alpha: float, half: float = LEX_HALF) -> np.ndarray:
    """``alpha * cosine + (1 - alpha) * saturate(bm25)``."""
    return alpha * dense + (1 - alpha) * saturate(lex, half)


def rrf_fusion(dense: np.ndarray, lex: np.ndarray, alpha: float, k: int = RRF_K) -> np.ndarray:
    """Weighted reciprocal rank fusion: ``alpha / (k + rank_dense) + (1 - alpha) / (k + rank_bm25)``,
    ranks from 1, tied scores sharing the best rank (records no query term matches all tie);
    scaled by ``k`` so a score near 1 is top of both."""
    def ranks(x: np.ndarray) -> np.ndarray:
        return 1 + len(x) - np.searchsorted(np.sort(x), x, side="right")
    return k * (alpha / (k + ranks(dense)) + (1 - alpha) / (k + ranks(lex)))


def date_match(query: str, dates: Sequence[str | None]) -> np.ndarray:
    """1 for dates in the month / year the query names (0.5 + 0.5 if it also names the day,
    0.5 if only the day differs), 0 elsewhere or when the query names no month or year."""
    q = query.lower()
    years = {int(y) for y in re.findall(r"\b(19\d\d|20\d\d)\b", q)}
    months = {i + 1 for i, m in enumerate(_MONTHS) if re.search(rf"\b{m}\b", q)}
    days = {int(d) for d in re.findall(r"\b([0-3]?\d)(?:st|nd|rd|th)?\b", q) if 1 <= int(d) <= 31}
    out = np.zeros(len(dates), dtype=np.float64)
    if not years and not months:
        return out
    for i, iso in enumerate(dates):
        if not iso:
            continue
        d = _dt.date.fromisoformat(iso[:10])
        if (years and d.year not in years) or (months and d.month not in months):
            continue
        out[i] = (0.5 + 0.5 * (d.day in days)) if (days and months) else 1.0
    return out


def named_speaker(question: str, speakers: Sequence[str]) -> int | None:
    """Index of the one speaker the question names (whole word, any case), else None."""
    named = [i for i, s in enumerate(speakers) if re.search(rf"\b{re.escape(s)}\b", question, re.I)]
    return named[0] if len(named) == 1 else None


class Retriever:
    """Dense, hybrid or date-aware ranking over one store (see the module docstring)."""

    def __init__(self, store: MemoryStore, mode: str = DEFAULT_MODE, alpha: float = DEFAULT_ALPHA,
                 date_boost: float = DEFAULT_DATE_BOOST, fusion: str = "convex", units: bool = True,
                 diversify: bool = True):
        if mode not in MODES:
            raise ValueError(f"mode: unknown retrieval mode {mode!r}; expected one of {MODES}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion: unknown fusion {fusion!r}; expected one of {FUSIONS}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if date_boost < 0:
            raise ValueError(f"date_boost must be >= 0, got {date_boost}")
        self.store, self.mode, self.alpha, self.date_boost, self.fusion = store, mode, alpha, date_boost, fusion
        # dense stays the store's plain cosine ranking (the baseline); units and diversity are hybrid's
        self.units, self.diversify = units and mode != "dense", diversify and mode != "dense"
        self._cache: dict[tuple[str, ...], tuple] = {}

    def _pool(self, user_ids: tuple[str, ...]):
        """Live records of the users, their positions, a BM25 index over the records and one over
        their units (with the units' vectors); rebuilt on any write (a delete too)."""
        stamp = tuple(self.store.last_change(u) for u in user_ids)
        hit = self._cache.get(user_ids)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        recs, owner, units = [], [], []  # units: (record position, lexical text, text or None)
        for n, u in enumerate(user_ids):
            turns = session_turns(self.store, u) if self.mode != "dense" else {}
            got = self.store.all(u)
            chains = _unit_chains(self.store, u, got) if self.units else {}
            for r in got:
                lex = lexical_text(r, turns)
                if r.id in chains:
                    own = r.source.get("kind") == "utterances"
                    units += [(len(recs), _lexical(d, t, ids, own, turns), (t, vid))
                              for t, ids, d, vid in chains[r.id]]
                else:
                    units.append((len(recs), lex, None))  # a single-version record is its own unit
                recs.append((r, lex))
                owner.append(n)
        bm25 = unit_bm25 = None
        if recs and self.mode != "dense":
            bm25 = bm25s.BM25(k1=BM25_K1, b=BM25_B)
            bm25.index(tokenize([t for _, t in recs]), show_progress=False)
        unit_of = np.array([i for i, _, _ in units], dtype=np.int64)
        merged = [(i, t) for i, _, t in units if t is not None]
        if self.units and recs:
            unit_bm25 = bm25s.BM25(k1=BM25_K1, b=BM25_B)
            unit_bm25.index(tokenize([t for _, t, _ in units]), show_progress=False)
        unit_vecs = unit_vectors(self.store, [t for _, t in merged]) if merged else np.zeros((0, 1))
        data = ([r for r, _ in recs], np.array(owner, dtype=np.int64), bm25,
                (unit_bm25, unit_of, np.array([i for i, _ in merged], dtype=np.int64), unit_vecs))
        self._cache[user_ids] = (stamp, data)
        return data

    def __call__(self, user_id: str, query: str, k: int) -> list[Retrieved]:
        return self.search(user_id, query, k)

    def search(self, user_id: str, query: str, k: int) -> list[Retrieved]:
        """Top-k live memories of one user."""
        return self.search_users([user_id], query, k)

    def search_users(self, user_ids: Sequence[str], query: str, k: int,
                     boosts: Sequence[float] | None = None) -> list[Retrieved]:
        """Top-k over the union of several users' live memories, ranked in one pool;
        ``boosts[i]`` is added to the scores of ``user_ids[i]``'s records."""
        return [Retrieved(r.text, tuple(r.dia_ids), s, r.user_id)
                for r, s in self.search_records(user_ids, query, k, boosts)]

    def search_records(self, user_ids: Sequence[str], query: str, k: int,
                       boosts: Sequence[float] | None = None) -> list[tuple[Record, float]]:
        """:meth:`search_users` as ``(record, score)`` pairs (the CLI prints whole records)."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"query must be a non-empty string, got {query!r}")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        users = tuple(user_ids)
        if boosts is not None and len(boosts) != len(users):
            raise ValueError(f"boosts: {len(boosts)} values for {len(users)} users")
        recs, owner, bm25, units = self._pool(users)
        if not recs:
            return []
        score = self.scores(users, recs, bm25, query, units)
        if boosts is not None:
            score = score + np.asarray(boosts, dtype=np.float64)[owner]
        top = np.argsort(-score, kind="stable").tolist()
        if self.diversify:
            top = diversify([r.dia_ids for r in recs], top)
        return [(recs[i], float(score[i])) for i in top[:k]]

    def scores(self, users: tuple[str, ...], recs: list[Record], bm25, query: str, units=None) -> np.ndarray:
        """The fused score of every pooled record for the query (float64)."""
        pos = {r.id: i for i, r in enumerate(recs)}
        qvec = self.store.embed_query(query)
        dense = np.zeros(len(recs), dtype=np.float64)
        for u in users:
            ids, cos = self.store.search_ids(u, qvec, max(1, self.store.count(u)))
            for rid, s in zip(ids.tolist(), cos.tolist()):
                if rid in pos:
                    dense[pos[rid]] = s
        if self.mode == "dense":
            return dense
        q = tokenize([query])[0]
        lex = np.asarray(bm25.get_scores(q), dtype=np.float64) if q else np.zeros(len(recs))
        if units is not None and units[0] is not None:
            unit_bm25, unit_of, merged_of, unit_vecs = units
            if q:  # a record's BM25: the best of its merged text and its units
                np.maximum.at(lex, unit_of, np.asarray(unit_bm25.get_scores(q), dtype=np.float64))
            if len(merged_of):  # a merged record's cosine: mean of its text's and its best unit's
                best = np.full(len(recs), -np.inf)
                np.maximum.at(best, merged_of, unit_vecs @ qvec.astype(np.float64))
                has = np.isfinite(best)
                dense[has] = 0.5 * (dense[has] + best[has])
        if self.fusion == "rrf":
            score = rrf_fusion(dense, lex, self.alpha)
        else:
            score = convex_fusion(dense, lex, self.alpha)
        if self.mode == "date" and self.date_boost:
            score = score + self.date_boost * date_match(query, [r.observed_at for r in recs])
        return score


def search_conversation(retriever: Retriever, conv: Conversation, question: str, k: int,
                        speaker_boost: float = DEFAULT_SPEAKER_BOOST) -> list[Retrieved]:
    """Top-k over both speakers' memories in one pool; ``speaker_boost`` to the one speaker the
    question names. The ``merge`` for :func:`tsubasa_fast.memory.locomo.evaluate_retrieval`."""
    who = named_speaker(question, conv.speakers)
    boosts = [speaker_boost if i == who else 0.0 for i in range(len(conv.speakers))]
    return retriever.search_users(conv.user_ids, question, k, boosts)


def conversation_merge(speaker_boost: float = DEFAULT_SPEAKER_BOOST) -> Callable:
    """A ``merge(search, conv, question, k)`` for evaluate_retrieval that ranks in one pool
    (``search`` must be a :class:`Retriever`)."""
    def merge(search, conv: Conversation, question: str, k: int) -> list[Retrieved]:
        if not isinstance(search, Retriever):
            raise TypeError(f"conversation_merge needs a Retriever, got {type(search).__name__}")
        return search_conversation(search, conv, question, k, speaker_boost)
    return merge


def make_search(store: MemoryStore, mode: str = DEFAULT_MODE, **kwargs) -> Callable[[str, str, int], list[Retrieved]]:
    return Retriever(store, mode, **kwargs)
