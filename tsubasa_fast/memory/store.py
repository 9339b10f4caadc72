"""Durable per-user memory store: SQLite (WAL) is the truth, hnswlib indexes are caches.

Layout of a store directory::

    memory.sqlite          records (every version), append-only event log, raw sessions, kv
    index/<user>.hnsw      hnswlib index of one large user's live records (labels = record ids)
    index/<user>.json      its metadata: store id, sha256 of the .hnsw file, embedder, change seq

Why this shape (see docs/MEMORY.md): the complaints about other memory libraries are lost
history, vector store and history drifting apart after a crash, "database is locked", and
post-filtered global ANN search returning fewer than k hits. So:

* every write (record + event, and the superseded old version) is one SQLite transaction;
  a write is acknowledged only after it commits, and the embedding is stored in the row,
  so any index can be rebuilt from SQLite without re-embedding;
* rewrites (UPDATE / RECONCILE) never destroy: the old version becomes ``superseded`` and
  stays readable; ``history(id)`` returns the chain; ``delete(id)`` is soft too: the live
  version becomes ``deleted`` (out of every search, still in its history and the event log);
* ``op_key`` makes writes idempotent: a key already in the event log is not applied again,
  and reusing it for another operation or text is an error;
* opening checks the database file and takes no write lock unless it creates the schema.

The pieces: :mod:`.store_db` (schema, checked open, transactions), :mod:`.store_writes`
(validation and the one write path of add / rewrite / import), :mod:`.store_index` (per-user
exact / HNSW indexes and their files), :mod:`.store_transfer` (export / import); this module
is the facade that ties them together.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from .config import DEFAULT_K
from .store_db import (
    SCHEMA_VERSION,
    EmbedderMismatchError,
    MemoryStoreError,
    OpKeyConflictError,
    Record,
    RecordNotFoundError,
    StaleTargetError,
    StoreCorruptError,
    StoreDB,
    StoreLockedError,
    StoreVersionError,
    check_db_file,
    now,
)
from .store_index import IndexCache, UserIndex, hnsw_ef
from .store_writes import (
    DECISION_SOURCES,
    DELETE_OP,
    RECORD_OPS,
    REWRITE_OPS,
    WritePlan,
    apply_delete,
    apply_write,
    check_decision_source,
    check_id,
    check_op_key,
    check_text,
    check_user,
    find_delete_replay,
    find_replay,
    plan_write,
)

__all__ = [
    "DECISION_SOURCES", "DELETE_OP", "EMBEDDER_NAMES", "REWRITE_OPS", "SCHEMA_VERSION", "EmbedderMismatchError", "Hit",
    "MemoryStore", "MemoryStoreError", "OpKeyConflictError", "Record", "RecordNotFoundError",
    "StaleTargetError", "StoreCorruptError", "StoreLockedError", "StoreVersionError", "UserIndex", "hnsw_ef", "open_store",
]

@dataclass(frozen=True)
class Hit:
    record: Record
    score: float


class MemoryStore:
    """Per-user evolving memory on a directory (see the module docstring).

    ``embedder`` is anything with ``name``, ``dim`` and ``embed(list[str]) -> (n, dim)``
    unit-norm float32; it is recorded on first use and checked on every later open.
    ``integrity`` is the check run on opening an existing database: ``full``
    (``PRAGMA integrity_check``, about 0.1 s per 40 MB), ``quick`` or ``off``.
    """

    def __init__(self, path: str | os.PathLike, embedder, *, hnsw_threshold: int = 4096,
                 M: int = 16, ef_construction: int = 100, ef: int = 64,
                 lock_timeout: float = 30.0, synchronous: str = "NORMAL", integrity: str = "full"):
        if embedder is None or not hasattr(embedder, "embed"):
            raise InputError("must provide name, dim and embed(texts)", field="embedder")
        if hnsw_threshold < 1:
            raise InputError(f"must be >= 1, got {hnsw_threshold}", field="hnsw_threshold")
        if not isinstance(synchronous, str) or synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise InputError(f"must be NORMAL, FULL or EXTRA, got {synchronous!r}", field="synchronous")
        if not isinstance(lock_timeout, (int, float)) or lock_timeout < 0:
            raise InputError(f"must be a number of seconds >= 0, got {lock_timeout!r}", field="lock_timeout")
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{self.path} exists and is not a directory", field="path")
        self.path.mkdir(parents=True, exist_ok=True)
        self.embedder = embedder
        self.dim = int(embedder.dim)
        self.hnsw_threshold = hnsw_threshold
        self.M, self.ef_construction, self.ef = M, ef_construction, ef
        self.lock_timeout = lock_timeout
        self._closed = True
        self.db = StoreDB(self.path / "memory.sqlite", lock_timeout=lock_timeout,
                          synchronous=synchronous.upper(), integrity=integrity)
        self._lock = self.db.lock
        try:
            meta = self.db.ensure_schema(embedder.name, self.dim)
            if meta.get("embedder") != embedder.name or int(meta.get("dim", -1)) != self.dim:
                raise EmbedderMismatchError(
                    f"store {self.path} was built with embedder {meta.get('embedder')!r} "
                    f"(dim {meta.get('dim')}); refusing to mix it with {embedder.name!r} (dim {self.dim})")
            self.store_id = meta["store_id"]
            self.index = IndexCache(self.path / "index", self.db, store_id=self.store_id,
                                    embedder_name=embedder.name, dim=self.dim, hnsw_threshold=hnsw_threshold,
                                    M=M, ef_construction=ef_construction, ef=ef)
            self._closed = False
            self._open_large_indexes()
        except BaseException:
            self._closed = True
            self.db.close()
            raise

    # --------------------------------------------------- compatibility views
    @property
    def _db(self):
        """The raw SQLite connection (tests and tools; the store itself goes through ``db``)."""
        return self.db.conn

    @property
    def _indexes(self) -> dict[str, UserIndex]:
        return self.index.indexes

    @property
    def index_stats(self) -> dict:
        return self.index.stats

    def _write(self):
        return self.db.write()

    @staticmethod
    def read_meta(path: str | os.PathLike) -> dict:
        """The store's metadata (embedder name, dim, ...) read-only, without a write lock."""
        import sqlite3

        db_path = Path(path) / "memory.sqlite"
        if not db_path.is_file():
            raise FileNotFoundError(f"no memory store at {path} (missing {db_path.name})")
        check_db_file(db_path)
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
        try:
            return dict(db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as e:
            raise StoreCorruptError(f"{db_path} is corrupt or not a memory store ({e}); refusing to use "
                                    f"it. Restore it from a backup or an export") from e
        finally:
            db.close()

    def _open_large_indexes(self) -> None:
        rows = self.db.query("SELECT user_id FROM records WHERE status='live' GROUP BY user_id"
                             " HAVING COUNT(*) >= ?", (self.hnsw_threshold,))
        with self._lock:
            for (user_id,) in rows:
                self.index.get(user_id)

    def flush(self) -> None:
        """Write every changed HNSW index file (atomically). SQLite is always up to date."""
        with self._lock:
            self.index.flush()

    # ----------------------------------------------------------------- writes
    def _embed_one(self, text: str, embedding: np.ndarray | None) -> np.ndarray:
        vec = self.embedder.embed([text])[0] if embedding is None else np.asarray(embedding, np.float32)
        if vec.shape != (self.dim,):
            raise InputError(f"must have shape ({self.dim},), got {vec.shape}", field="embedding")
        if not np.all(np.isfinite(vec)):
            raise InputError("must be finite (it has NaN or inf)", field="embedding")
        return np.ascontiguousarray(vec, dtype=np.float32)

    def op_result(self, op_key: str) -> tuple[str, int | None] | None:
        """``(op, record_id)`` of an already-applied op_key, or None."""
        ev = self.db.event_for_key(op_key)
        return None if ev is None else (ev["op"], ev["record_id"])

    def _plan(self, op: str, **kwargs) -> WritePlan:
        """The one validation path of :meth:`add`, :meth:`rewrite` and import."""
        return plan_write(op, self._embed_one, **kwargs)

    def _commit(self, plan: WritePlan) -> Record:
        with self._lock:
            with self.db.write() as db:
                prev = find_replay(self.db, plan)
                if prev is not None:
                    return prev
                seq = self.db.next_seq(db)
                rid, user, removed = apply_write(self.db, db, plan, seq)
            self.index.apply(user, seq, add=[(rid, plan.vec)], remove=[removed] if removed else [])
            return self._get(rid)

    def add(self, user_id: str, text: str, *, observed_at: str | None = None,
            source: dict | None = None, decision_source: str = "user", op_key: str | None = None,
            embedding: np.ndarray | None = None, payload: dict | None = None,
            observation_embedding: np.ndarray | None = None) -> Record:
        """Append a new live record (decision ADD). Idempotent when ``op_key`` is given.

        A ``payload['observation']`` that differs from ``text`` has its vector stored with the
        record (``observation_embedding``, else embedded here) for retrieval by units."""
        return self._commit(self._plan("ADD", user_id=user_id, text=text, observed_at=observed_at,
                                       source=source, decision_source=decision_source, op_key=op_key,
                                       embedding=embedding, payload=payload,
                                       observation_embedding=observation_embedding))

    def rewrite(self, target_id: int, text: str, *, op: str = "UPDATE", observed_at: str | None = None,
                source: dict | None = None, decision_source: str = "user", op_key: str | None = None,
                embedding: np.ndarray | None = None, payload: dict | None = None,
                observation_embedding: np.ndarray | None = None) -> Record:
        """UPDATE or RECONCILE: write a new version of ``target_id``; the old one is superseded.

        The new version's source dia_ids are the union of the old and the new ones, so the
        evidence trail survives the rewrite. The observation it absorbed
        (``payload['observation']``, when it differs from ``text``) has its vector stored in the
        same transaction (``observation_embedding``, else embedded here).
        """
        if op not in REWRITE_OPS:
            raise InputError(f"must be one of {REWRITE_OPS}, got {op!r}", field="op")
        return self._commit(self._plan(op, target_id=target_id, text=text, observed_at=observed_at,
                                       source=source, decision_source=decision_source, op_key=op_key,
                                       embedding=embedding, payload=payload,
                                       observation_embedding=observation_embedding))

    def delete(self, record_id: int, *, decision_source: str = "user", op_key: str | None = None,
               payload: dict | None = None) -> Record:
        """Soft delete: the live version ``record_id`` becomes ``deleted``. Nothing is destroyed:
        it stays readable (``get``, ``history``, export), only searches and ``all`` skip it; the
        DELETE event records it. Idempotent when ``op_key`` is given. Returns the deleted record."""
        record_id = check_id(record_id)
        check_decision_source(decision_source)
        check_op_key(op_key)
        if payload is not None and not isinstance(payload, dict):
            raise InputError(f"must be a dict or None, got {type(payload).__name__}", field="payload")
        with self._lock:
            with self.db.write() as db:
                prev = find_delete_replay(self.db, record_id, op_key)
                if prev is not None:
                    return prev
                seq = self.db.next_seq(db)
                rec = apply_delete(self.db, db, record_id, seq, decision_source=decision_source,
                                   op_key=op_key, payload=payload)
            self.index.apply(rec.user_id, seq, remove=[rec.id])
            return self._get(rec.id)

    def log_decision(self, user_id: str, op: str, *, target_id: int | None = None,
                     decision_source: str = "rule", op_key: str | None = None,
                     payload: dict | None = None) -> bool:
        """Log a decision that writes no record (IGNORE, skips, warnings). False if op_key seen."""
        check_user(user_id)
        check_text(op, "op")
        if op in RECORD_OPS:
            raise InputError(f"{op!r} changes a record; use add(), rewrite() or delete()", field="op")
        if target_id is not None:
            target_id = check_id(target_id, "target_id")
        check_op_key(op_key)
        with self._lock, self.db.write() as db:
            if op_key is not None:
                ev = self.db.event_for_key(op_key)
                if ev is not None:
                    if ev["op"] != op or ev["user_id"] != user_id:
                        raise OpKeyConflictError(f"op_key {op_key!r} was already used for {ev['op']} of "
                                                 f"user {ev['user_id']!r}; refusing to reuse it for {op}")
                    return False
            self.db.insert_event(db, seq=self.db.next_seq(db), user_id=user_id, op=op, record_id=None,
                                 target_id=target_id, decision_source=decision_source, op_key=op_key,
                                 payload=payload)
            return True

    # ------------------------------------------------------------ raw + kv
    def put_raw_session(self, key: str, user_id: str, payload: Any, observed_at: str | None = None) -> bool:
        """Store a raw session (what the user said) once; False if the key is already there."""
        check_user(user_id)
        check_text(key, "key")
        with self._lock, self.db.write() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO raw_sessions(key, user_id, observed_at, payload, created_at)"
                " VALUES (?, ?, ?, ?, ?)", (key, user_id, observed_at,
                                            json.dumps(payload, ensure_ascii=False), now()))
            return cur.rowcount == 1

    def raw_sessions(self, user_id: str) -> list[dict]:
        rows = self.db.query("SELECT key, observed_at, payload FROM raw_sessions WHERE user_id=?"
                             " ORDER BY rowid", (user_id,))
        return [{"key": k, "observed_at": d, "payload": json.loads(p)} for k, d, p in rows]

    def kv_get(self, key: str) -> Any:
        row = self.db.query_one("SELECT value FROM kv WHERE key=?", (key,))
        return None if row is None else json.loads(row[0])

    def kv_put(self, key: str, value: Any) -> None:
        check_text(key, "key")
        with self._lock, self.db.write() as db:
            db.execute("INSERT OR REPLACE INTO kv(key, value) VALUES (?, ?)",
                       (key, json.dumps(value, ensure_ascii=False)))

    # ------------------------------------------------------------------ reads
    def _get(self, record_id: int) -> Record:
        rec = self.db.get_record(record_id)
        if rec is None:
            raise RecordNotFoundError(f"no memory record with id {record_id} in {self.path}")
        return rec

    def get(self, record_id: int) -> Record:
        """The record with this id (live, superseded or deleted)."""
        return self._get(check_id(record_id))

    def get_many(self, ids: Sequence[int]) -> dict[int, Record]:
        ids = [check_id(i, "ids[]") for i in ids]
        if not ids:
            return {}
        return {r.id: r for r in self.db.records(f"id IN ({','.join('?' * len(ids))})", ids)}

    def history(self, record_id: int) -> list[Record]:
        """Every version in this record's chain, oldest first (the live or deleted one last)."""
        with self.db.read():
            rec = self.get(record_id)
            return self.db.records("root_id=?", (rec.root_id,), order="version, id")

    def all(self, user_id: str, include_superseded: bool = False) -> list[Record]:
        """The user's live records (or every version, deleted ones too), in insertion order."""
        return self.db.records("user_id=?" + ("" if include_superseded else " AND status='live'"), (user_id,))

    def users(self) -> list[str]:
        return [u for (u,) in self.db.query("SELECT DISTINCT user_id FROM records ORDER BY user_id")]

    def count(self, user_id: str | None = None, live_only: bool = True) -> int:
        where, args = [], []
        if user_id is not None:
            where.append("user_id=?")
            args.append(user_id)
        if live_only:
            where.append("status='live'")
        sql = "SELECT COUNT(*) FROM records" + (" WHERE " + " AND ".join(where) if where else "")
        return self.db.query_one(sql, args)[0]

    def last_change(self, user_id: str) -> int:
        """The user's highest change seq: it moves on every write (add, rewrite, delete), in any
        process, so caches derived from the user's records are stamped with it."""
        return self.db.query_one("SELECT MAX(chg) FROM records WHERE user_id=?", (user_id,))[0] or 0

    def events(self, user_id: str | None = None) -> list[dict]:
        """The event log (every decision), oldest first."""
        return self.db.events("user_id=?", (user_id,)) if user_id is not None else self.db.events()

    def embed_query(self, query: str) -> np.ndarray:
        return self._embed_one(check_text(query, "query"), None)

    def _query_vec(self, query: Any) -> np.ndarray:
        if isinstance(query, str):
            return self.embed_query(query)
        if isinstance(query, np.ndarray):
            return self._embed_one("", query)
        raise InputError(f"must be a non-empty string or an embedding vector, got {type(query).__name__}",
                         field="query")

    def search(self, user_id: str, query: str | np.ndarray, k: int = DEFAULT_K) -> list[Hit]:
        """Top-k live records of one user by cosine similarity: always min(k, live) hits."""
        check_user(user_id)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"must be a positive integer, got {k!r}", field="k")
        q = self._query_vec(query)
        with self._lock:
            ids, scores = self.index.search(user_id, q, int(k))
            recs = self.get_many(ids.tolist())
        return [Hit(recs[int(i)], float(s)) for i, s in zip(ids, scores) if int(i) in recs]

    def search_ids(self, user_id: str, qvec: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids and scores only (no SQLite read): the hot path for benchmarks and rerankers."""
        with self._lock:
            return self.index.search(user_id, np.asarray(qvec, np.float32), int(k))

    def check_consistency(self, user_id: str) -> None:
        """Raise AssertionError unless the in-memory index equals the live records in SQLite."""
        with self._lock:
            idx = self.index.get(user_id)
            live = {r for (r,) in self.db.query(
                "SELECT id FROM records WHERE user_id=? AND status='live'", (user_id,))}
            if set(idx.pos) != live:
                raise AssertionError(f"index for {user_id} has {len(idx.pos)} ids, SQLite {len(live)} live")
            if idx.hnsw is not None and idx.hnsw_labels != live:
                raise AssertionError(f"HNSW labels for {user_id} disagree with SQLite")

    # ---------------------------------------------------------- export/import
    def export_jsonl(self, path: str | os.PathLike, user_id: str | None = None) -> int:
        """Write every record version (no embeddings) and every decision that wrote no record
        as JSON lines (see :mod:`.store_transfer`); returns the number of records."""
        from .store_transfer import export_jsonl

        return export_jsonl(self, path, user_id)

    def import_file(self, path: str | os.PathLike):
        """Import an export all-or-nothing and idempotently; returns counts (ImportResult)."""
        from .store_transfer import import_jsonl

        return import_jsonl(self, path)

    def import_jsonl(self, path: str | os.PathLike) -> int:
        """Import records exported by :meth:`export_jsonl`; returns the records written.

        Idempotent (a record already here, also one this store exported itself, is not
        written again) and all-or-nothing (one transaction; a bad line names its number).
        """
        return self.import_file(path).records

    export = export_jsonl
    import_ = import_jsonl

    # --------------------------------------------------------------- closing
    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        with self._lock:
            self._closed = True
            try:
                self.flush()
            finally:
                self.db.close()

    def __enter__(self) -> "MemoryStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            if not getattr(self, "_closed", True):
                self.db.close()
        except Exception:
            pass


EMBEDDER_NAMES = {"minilm": "all-MiniLM-L6-v2", "hashing": "hashing-v1-384"}


def open_store(path: str | os.PathLike, embedder: str | None = None, must_exist: bool = False,
               **kwargs) -> MemoryStore:
    """Opens a store with the embedder it was built with (or ``embedder`` for a new store).

    ``embedder`` is a short name (minilm, hashing) or a full embedder name; a store built
    with another embedder is refused with a clear error. ``kwargs`` go to :class:`MemoryStore`.
    """
    from .embedders import make_embedder

    path = Path(path)
    if (path / "memory.sqlite").is_file():
        name = MemoryStore.read_meta(path)["embedder"]
        if embedder is not None and EMBEDDER_NAMES.get(embedder, embedder) != name:
            raise InputError(f"{embedder}: store {path} was built with {name!r}", field="embedder")
        return MemoryStore(path, make_embedder(name), **kwargs)
    if must_exist:
        raise FileNotFoundError(f"no memory store at {path}")
    return MemoryStore(path, make_embedder(embedder or "minilm"), **kwargs)
