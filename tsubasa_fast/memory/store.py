"""Durable per-user memory store: SQLite (WAL) is the truth, hnswlib indexes are caches.

Layout of a store directory::

    memory.sqlite          records (every version), append-only event log, raw sessions, kv
    index/<user>.hnsw      hnswlib index of one large user's live records (labels = record ids)
    index/<user>.json      its metadata: sha256 of the .hnsw file, embedder, dim, change seq

Why this shape (see docs/MEMORY.md): the complaints about other memory libraries are lost
history, vector store and history drifting apart after a crash, "database is locked", and
post-filtered global ANN search returning fewer than k hits. So:

* every write (record + event, and the superseded old version) is one SQLite transaction;
  a write is acknowledged only after it commits, and the embedding is stored in the row,
  so any index can be rebuilt from SQLite without re-embedding;
* rewrites (UPDATE / RECONCILE) never destroy: the old version becomes ``superseded`` and
  stays readable; ``history(id)`` returns the chain;
* each user has their own index: exact numpy cosine below ``hnsw_threshold`` live records,
  HNSW above it; search always returns ``min(k, live count)`` live records (an HNSW miss
  falls back to exact search);
* index files are written atomically (temp + fsync + rename) with a checksum; on open a
  missing, corrupt or foreign file is rebuilt from SQLite and a stale one is reconciled
  against SQLite label by label, never trusted blindly;
* one ``RLock`` guards every index read, write and resize, and indexes are initialised
  before the first add (the two hnswlib segfaults cannot happen);
* writers are serialised by SQLite (``BEGIN IMMEDIATE`` with a busy timeout); a writer that
  waits too long gets :class:`StoreLockedError`, never a corrupt store.
* ``op_key`` makes writes idempotent: a key already in the event log is not applied again.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import sqlite3
import tempfile
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..fileio import atomic_write_bytes, fsync_dir, sha256_file

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DECISION_SOURCES = ("llm", "rule", "user", "static", "import")
REWRITE_OPS = ("UPDATE", "RECONCILE")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    text TEXT NOT NULL,
    observed_at TEXT,
    created_at TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('live', 'superseded')),
    supersedes INTEGER REFERENCES records(id),
    superseded_by INTEGER REFERENCES records(id),
    root_id INTEGER NOT NULL,
    source TEXT NOT NULL,
    decision_source TEXT NOT NULL,
    embedding BLOB NOT NULL,
    chg INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS records_user_chg ON records(user_id, chg);
CREATE INDEX IF NOT EXISTS records_user_status ON records(user_id, status);
CREATE INDEX IF NOT EXISTS records_root ON records(root_id);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    user_id TEXT NOT NULL,
    op TEXT NOT NULL,
    record_id INTEGER,
    target_id INTEGER,
    decision_source TEXT,
    op_key TEXT,
    payload TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS events_op_key ON events(op_key) WHERE op_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_user ON events(user_id, seq);
CREATE TABLE IF NOT EXISTS raw_sessions (
    key TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    observed_at TEXT,
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class MemoryStoreError(RuntimeError):
    """Base class for store errors."""


class EmbedderMismatchError(MemoryStoreError):
    """The store was built with a different embedder (name or dimension)."""


class StoreLockedError(MemoryStoreError):
    """Another process held the write lock for longer than the timeout."""


class RecordNotFoundError(MemoryStoreError, KeyError):
    """No record with that id."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "record not found"


class StaleTargetError(MemoryStoreError):
    """A rewrite targeted a superseded version instead of the live one."""


@dataclass(frozen=True)
class Record:
    id: int
    user_id: str
    text: str
    observed_at: str | None
    created_at: str
    version: int
    status: str
    supersedes: int | None
    superseded_by: int | None
    root_id: int
    source: dict = field(default_factory=dict)
    decision_source: str = "user"

    @property
    def dia_ids(self) -> list[str]:
        return list(self.source.get("dia_ids", []))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Hit:
    record: Record
    score: float


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _check_user(user_id: Any) -> str:
    if not isinstance(user_id, str) or not user_id.strip():
        raise ValueError(f"user_id must be a non-empty string, got {user_id!r}")
    return user_id


def _check_text(text: Any) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    return text


def _check_source(source: Any) -> dict:
    if source is None:
        return {}
    if not isinstance(source, dict):
        raise ValueError(f"source must be a dict (conversation, session, dia_ids), got {type(source).__name__}")
    dia = source.get("dia_ids", [])
    if not isinstance(dia, (list, tuple)) or not all(isinstance(d, str) for d in dia):
        raise ValueError(f"source['dia_ids'] must be a list of strings, got {dia!r}")
    return dict(source, dia_ids=list(dia)) if "dia_ids" in source else dict(source)


def _index_stem(user_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", user_id)[:60]
    return f"{safe}-{hashlib.sha1(user_id.encode()).hexdigest()[:10]}"


class _UserIndex:
    """Live embeddings of one user: an exact matrix, plus HNSW when the user is large."""

    def __init__(self, dim: int):
        self.dim = dim
        self.ids = np.zeros(0, dtype=np.int64)
        self.mat = np.zeros((0, dim), dtype=np.float32)
        self.n = 0
        self.pos: dict[int, int] = {}
        self.hnsw = None
        self.hnsw_labels: set[int] = set()   # labels present and not deleted in self.hnsw
        self.hnsw_deleted = 0
        self.chg = 0
        self.dirty = False

    # exact part
    def _grow(self, need: int) -> None:
        cap = len(self.ids)
        if need <= cap:
            return
        new_cap = max(need, 2 * cap, 64)
        ids = np.zeros(new_cap, dtype=np.int64)
        mat = np.zeros((new_cap, self.dim), dtype=np.float32)
        ids[:self.n] = self.ids[:self.n]
        mat[:self.n] = self.mat[:self.n]
        self.ids, self.mat = ids, mat

    def add(self, rid: int, vec: np.ndarray) -> None:
        if rid in self.pos:
            return
        self._grow(self.n + 1)
        self.ids[self.n] = rid
        self.mat[self.n] = vec
        self.pos[rid] = self.n
        self.n += 1
        if self.hnsw is not None and rid not in self.hnsw_labels:
            self._hnsw_add(np.asarray([rid]), vec[None, :])
            self.dirty = True

    def remove(self, rid: int) -> None:
        row = self.pos.pop(rid, None)
        if row is not None:
            last = self.n - 1
            if row != last:
                moved = int(self.ids[last])
                self.ids[row] = self.ids[last]
                self.mat[row] = self.mat[last]
                self.pos[moved] = row
            self.n = last
        if self.hnsw is not None and rid in self.hnsw_labels:
            self.hnsw.mark_deleted(rid)
            self.hnsw_labels.discard(rid)
            self.hnsw_deleted += 1
            self.dirty = True

    def exact(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = self.mat[:self.n] @ q
        if k < self.n:
            top = np.argpartition(-scores, k - 1)[:k]
        else:
            top = np.arange(self.n)
        top = top[np.argsort(-scores[top], kind="stable")]
        return self.ids[top], scores[top]

    # hnsw part
    def build_hnsw(self, M: int, ef_construction: int, ef: int) -> None:
        import hnswlib

        index = hnswlib.Index(space="ip", dim=self.dim)
        index.init_index(max_elements=max(1024, 2 * self.n), ef_construction=ef_construction, M=M)
        index.set_ef(ef)
        index.set_num_threads(1)
        self.hnsw, self.hnsw_labels, self.hnsw_deleted = index, set(), 0
        if self.n:
            self._hnsw_add(self.ids[:self.n].copy(), self.mat[:self.n])
        self.dirty = True

    def _hnsw_add(self, labels: np.ndarray, vecs: np.ndarray) -> None:
        index = self.hnsw
        need = index.element_count + len(labels)
        if need > index.get_max_elements():
            index.resize_index(max(need, 2 * index.get_max_elements()))
        index.add_items(np.ascontiguousarray(vecs, dtype=np.float32), labels.astype(np.int64))
        self.hnsw_labels.update(int(x) for x in labels)

    def reconcile_hnsw(self) -> int:
        """Make the HNSW label set equal the live id set; returns the number of fixes."""
        live = set(self.pos)
        fixes = 0
        for rid in list(self.hnsw_labels - live):
            self.hnsw.mark_deleted(rid)
            self.hnsw_labels.discard(rid)
            self.hnsw_deleted += 1
            fixes += 1
        missing = sorted(live - self.hnsw_labels)
        if missing:
            rows = [self.pos[r] for r in missing]
            self._hnsw_add(np.asarray(missing, dtype=np.int64), self.mat[rows])
            fixes += len(missing)
        if fixes:
            self.dirty = True
        return fixes

    def search(self, q: np.ndarray, k: int, use_hnsw: bool, ef: int):
        k = min(k, self.n)
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if use_hnsw and self.hnsw is not None:
            try:
                self.hnsw.set_ef(max(ef, k))
                labels, dist = self.hnsw.knn_query(q[None, :], k=k)
                return labels[0].astype(np.int64), (1.0 - dist[0]).astype(np.float32)
            except RuntimeError:
                pass  # too few reachable live neighbours: exact search is always right
        return self.exact(q, k)


class MemoryStore:
    """Per-user evolving memory on a directory (see the module docstring).

    ``embedder`` is anything with ``name``, ``dim`` and ``embed(list[str]) -> (n, dim)``
    unit-norm float32; it is recorded on first use and checked on every later open.
    """

    def __init__(self, path: str | os.PathLike, embedder, *, hnsw_threshold: int = 4096,
                 M: int = 16, ef_construction: int = 100, ef: int = 64,
                 lock_timeout: float = 30.0, synchronous: str = "NORMAL"):
        if embedder is None or not hasattr(embedder, "embed"):
            raise ValueError("embedder must provide name, dim and embed(texts)")
        if hnsw_threshold < 1:
            raise ValueError(f"hnsw_threshold must be >= 1, got {hnsw_threshold}")
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, got {synchronous!r}")
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"store path {self.path} exists and is not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "index").mkdir(exist_ok=True)
        self.embedder = embedder
        self.dim = int(embedder.dim)
        self.hnsw_threshold = hnsw_threshold
        self.M, self.ef_construction, self.ef = M, ef_construction, ef
        self.lock_timeout = lock_timeout
        self._lock = threading.RLock()
        self._indexes: dict[str, _UserIndex] = {}
        self.index_stats = {"loaded": 0, "built": 0, "rebuilt": 0, "reconciled": 0}
        self._db = sqlite3.connect(self.path / "memory.sqlite", timeout=lock_timeout,
                                   isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._init_schema()
        self._data_version = self._pragma_data_version()
        self._closed = False
        self._open_large_indexes()

    # ------------------------------------------------------------------ setup
    def _init_schema(self) -> None:
        with self._write() as db:
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    db.execute(stmt)
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                db.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [
                    ("schema_version", str(SCHEMA_VERSION)), ("store_id", uuid.uuid4().hex),
                    ("embedder", self.embedder.name), ("dim", str(self.dim)),
                    ("created_at", _now())])
                meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("embedder") != self.embedder.name or int(meta.get("dim", -1)) != self.dim:
            self._db.close()
            raise EmbedderMismatchError(
                f"store {self.path} was built with embedder {meta.get('embedder')!r} "
                f"(dim {meta.get('dim')}); refusing to mix it with {self.embedder.name!r} (dim {self.dim})")
        self.store_id = meta["store_id"]

    @staticmethod
    def read_meta(path: str | os.PathLike) -> dict:
        """The store's metadata (embedder name, dim, ...) without opening it for writing."""
        db_path = Path(path) / "memory.sqlite"
        if not db_path.is_file():
            raise FileNotFoundError(f"no memory store at {path} (missing {db_path.name})")
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
        try:
            return dict(db.execute("SELECT key, value FROM meta").fetchall())
        finally:
            db.close()

    def _pragma_data_version(self) -> int:
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    class _Tx:
        def __init__(self, store: "MemoryStore"):
            self.store = store

        def __enter__(self):
            db = self.store._db
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                if "locked" in str(e) or "busy" in str(e):
                    raise StoreLockedError(
                        f"store {self.store.path} is locked by another writer (waited "
                        f"{self.store.lock_timeout:.0f} s); retry later") from e
                raise
            return db

        def __exit__(self, exc_type, exc, tb):
            db = self.store._db
            if exc_type is None:
                db.execute("COMMIT")
            else:
                db.execute("ROLLBACK")
            return False

    def _write(self) -> "_Tx":
        return MemoryStore._Tx(self)

    # ------------------------------------------------------------ index files
    def _index_paths(self, user_id: str) -> tuple[Path, Path]:
        stem = _index_stem(user_id)
        return self.path / "index" / f"{stem}.hnsw", self.path / "index" / f"{stem}.json"

    def _open_large_indexes(self) -> None:
        rows = self._db.execute(
            "SELECT user_id FROM records WHERE status='live' GROUP BY user_id HAVING COUNT(*) >= ?",
            (self.hnsw_threshold,)).fetchall()
        with self._lock:
            for (user_id,) in rows:
                self._index(user_id)

    def _load_user(self, user_id: str) -> _UserIndex:
        idx = _UserIndex(self.dim)
        rows = self._db.execute(
            "SELECT id, embedding, chg FROM records WHERE user_id=? AND status='live' ORDER BY id",
            (user_id,)).fetchall()
        chg_row = self._db.execute("SELECT MAX(chg) FROM records WHERE user_id=?", (user_id,)).fetchone()
        if rows:
            idx._grow(len(rows))
            for i, (rid, blob, _) in enumerate(rows):
                idx.ids[i] = rid
                idx.mat[i] = np.frombuffer(blob, dtype=np.float32)
                idx.pos[rid] = i
            idx.n = len(rows)
        idx.chg = chg_row[0] or 0
        if idx.n >= self.hnsw_threshold:
            self._attach_hnsw(user_id, idx)
        return idx

    def _attach_hnsw(self, user_id: str, idx: _UserIndex) -> None:
        """Load the user's index file if it is intact, reconcile it; otherwise rebuild."""
        import hnswlib

        bin_path, meta_path = self._index_paths(user_id)
        reason = None
        if not bin_path.is_file() or not meta_path.is_file():
            reason = "missing"
        else:
            try:
                meta = json.loads(meta_path.read_text())
                if meta.get("user_id") != user_id or meta.get("embedder") != self.embedder.name \
                        or meta.get("dim") != self.dim:
                    reason = "built for another user or embedder"
                elif meta.get("sha256") != sha256_file(bin_path):
                    reason = "corrupt (checksum mismatch)"
                else:
                    index = hnswlib.Index(space="ip", dim=self.dim)
                    index.load_index(str(bin_path), max_elements=max(meta.get("max_elements", 0), 1024))
                    index.set_num_threads(1)
                    index.set_ef(self.ef)
                    labels = set(int(x) for x in index.get_ids_list())
                    deleted = set(meta.get("deleted", []))
                    idx.hnsw, idx.hnsw_labels, idx.hnsw_deleted = index, labels - deleted, len(deleted)
                    fixes = idx.reconcile_hnsw()
                    if fixes:
                        self.index_stats["reconciled"] += 1
                        log.info("index for %s was stale (%d fixes); reconciled with SQLite", user_id, fixes)
                    self.index_stats["loaded"] += 1
                    idx.dirty = bool(fixes)
            except (OSError, ValueError, RuntimeError, MemoryError) as e:
                reason = f"unreadable ({e})"
        if reason is not None:
            (log.info if reason == "missing" else log.warning)(
                "building HNSW index for user %r from SQLite: index file %s", user_id, reason)
            idx.build_hnsw(self.M, self.ef_construction, self.ef)
            self.index_stats["built" if reason == "missing" else "rebuilt"] += 1
        # compact when tombstones pile up
        if idx.hnsw_deleted > max(1024, idx.n // 2):
            idx.build_hnsw(self.M, self.ef_construction, self.ef)

    def _save_index(self, user_id: str, idx: _UserIndex) -> None:
        if idx.hnsw is None or not idx.dirty:
            return
        bin_path, meta_path = self._index_paths(user_id)
        fd, tmp = tempfile.mkstemp(prefix=f".{bin_path.name}.", dir=bin_path.parent)
        os.close(fd)
        try:
            idx.hnsw.save_index(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            digest = sha256_file(Path(tmp))
            all_labels = set(int(x) for x in idx.hnsw.get_ids_list())
            meta = {"user_id": user_id, "embedder": self.embedder.name, "dim": self.dim,
                    "sha256": digest, "chg": idx.chg, "live": idx.n,
                    "max_elements": idx.hnsw.get_max_elements(),
                    "deleted": sorted(all_labels - idx.hnsw_labels), "saved_at": _now()}
            os.replace(tmp, bin_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        atomic_write_bytes(meta_path, json.dumps(meta).encode())
        fsync_dir(bin_path.parent)
        idx.dirty = False

    def flush(self) -> None:
        """Write every changed HNSW index file (atomically). SQLite is always up to date."""
        with self._lock:
            for user_id, idx in self._indexes.items():
                self._save_index(user_id, idx)

    # --------------------------------------------------------- index access
    def _index(self, user_id: str) -> _UserIndex:
        """The user's index, loaded lazily and caught up with other processes' commits."""
        idx = self._indexes.get(user_id)
        if idx is None:
            idx = self._load_user(user_id)
            self._indexes[user_id] = idx
            self._data_version = self._pragma_data_version()
            return idx
        version = self._pragma_data_version()
        if version != self._data_version:
            self._data_version = version
            for other in self._indexes.values():
                other.stale = True
        if getattr(idx, "stale", False):
            self._catch_up(user_id, idx)
            idx.stale = False
        return idx

    def _catch_up(self, user_id: str, idx: _UserIndex) -> None:
        rows = self._db.execute(
            "SELECT id, status, embedding, chg FROM records WHERE user_id=? AND chg > ? ORDER BY chg",
            (user_id, idx.chg)).fetchall()
        for rid, status, blob, chg in rows:
            if status == "live":
                idx.add(rid, np.frombuffer(blob, dtype=np.float32))
            else:
                idx.remove(rid)
            idx.chg = max(idx.chg, chg)
        self._maybe_promote(user_id, idx)

    def _maybe_promote(self, user_id: str, idx: _UserIndex) -> None:
        if idx.hnsw is None and idx.n >= self.hnsw_threshold:
            self._attach_hnsw(user_id, idx)

    # ----------------------------------------------------------------- writes
    def _embed_one(self, text: str, embedding: np.ndarray | None) -> np.ndarray:
        vec = self.embedder.embed([text])[0] if embedding is None else np.asarray(embedding, np.float32)
        if vec.shape != (self.dim,):
            raise ValueError(f"embedding must have shape ({self.dim},), got {vec.shape}")
        return np.ascontiguousarray(vec, dtype=np.float32)

    def op_result(self, op_key: str) -> tuple[str, int | None] | None:
        """``(op, record_id)`` of an already-applied op_key, or None."""
        row = self._db.execute("SELECT op, record_id FROM events WHERE op_key=?", (op_key,)).fetchone()
        return None if row is None else (row[0], row[1])

    def _insert_event(self, db, seq, user_id, op, record_id, target_id, decision_source, op_key, payload):
        db.execute(
            "INSERT INTO events(seq, ts, user_id, op, record_id, target_id, decision_source, op_key, payload)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, _now(), user_id, op, record_id, target_id, decision_source, op_key,
             json.dumps(payload or {}, ensure_ascii=False)))

    @staticmethod
    def _next_seq(db) -> int:
        return db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events").fetchone()[0]

    def add(self, user_id: str, text: str, *, observed_at: str | None = None,
            source: dict | None = None, decision_source: str = "user", op_key: str | None = None,
            embedding: np.ndarray | None = None, payload: dict | None = None) -> Record:
        """Append a new live record (decision ADD). Idempotent when ``op_key`` is given."""
        _check_user(user_id)
        _check_text(text)
        source = _check_source(source)
        if decision_source not in DECISION_SOURCES:
            raise ValueError(f"decision_source must be one of {DECISION_SOURCES}, got {decision_source!r}")
        vec = self._embed_one(text, embedding)
        with self._lock:
            with self._write() as db:
                if op_key is not None:
                    prev = self.op_result(op_key)
                    if prev is not None:
                        return self.get(prev[1]) if prev[1] is not None else None
                seq = self._next_seq(db)
                cur = db.execute(
                    "INSERT INTO records(user_id, text, observed_at, created_at, version, status,"
                    " supersedes, superseded_by, root_id, source, decision_source, embedding, chg)"
                    " VALUES (?, ?, ?, ?, 1, 'live', NULL, NULL, 0, ?, ?, ?, ?)",
                    (user_id, text, observed_at, _now(), json.dumps(source, ensure_ascii=False),
                     decision_source, vec.tobytes(), seq))
                rid = cur.lastrowid
                db.execute("UPDATE records SET root_id=? WHERE id=?", (rid, rid))
                self._insert_event(db, seq, user_id, "ADD", rid, None, decision_source, op_key,
                                   dict(payload or {}, text=text))
            self._apply_to_index(user_id, seq, add=[(rid, vec)])
            return self.get(rid)

    def rewrite(self, target_id: int, text: str, *, op: str = "UPDATE", observed_at: str | None = None,
                source: dict | None = None, decision_source: str = "user", op_key: str | None = None,
                embedding: np.ndarray | None = None, payload: dict | None = None) -> Record:
        """UPDATE or RECONCILE: write a new version of ``target_id``; the old one is superseded.

        The new version's source dia_ids are the union of the old and the new ones, so the
        evidence trail survives the rewrite.
        """
        if op not in REWRITE_OPS:
            raise ValueError(f"op must be one of {REWRITE_OPS}, got {op!r}")
        _check_text(text)
        source = _check_source(source)
        if decision_source not in DECISION_SOURCES:
            raise ValueError(f"decision_source must be one of {DECISION_SOURCES}, got {decision_source!r}")
        vec = self._embed_one(text, embedding)
        with self._lock:
            with self._write() as db:
                if op_key is not None:
                    prev = self.op_result(op_key)
                    if prev is not None:
                        return self.get(prev[1]) if prev[1] is not None else None
                old = self._get(int(target_id))
                if old.status != "live":
                    raise StaleTargetError(
                        f"record {old.id} is superseded by {old.superseded_by}; rewrite the live version")
                merged_src = dict(old.source)
                merged_src.update({k: v for k, v in source.items() if k != "dia_ids"})
                merged_src["dia_ids"] = list(dict.fromkeys(old.dia_ids + source.get("dia_ids", [])))
                seq = self._next_seq(db)
                cur = db.execute(
                    "INSERT INTO records(user_id, text, observed_at, created_at, version, status,"
                    " supersedes, superseded_by, root_id, source, decision_source, embedding, chg)"
                    " VALUES (?, ?, ?, ?, ?, 'live', ?, NULL, ?, ?, ?, ?, ?)",
                    (old.user_id, text, observed_at or old.observed_at, _now(), old.version + 1, old.id,
                     old.root_id, json.dumps(merged_src, ensure_ascii=False), decision_source,
                     vec.tobytes(), seq))
                rid = cur.lastrowid
                db.execute("UPDATE records SET status='superseded', superseded_by=?, chg=? WHERE id=?",
                           (rid, seq, old.id))
                self._insert_event(db, seq, old.user_id, op, rid, old.id, decision_source, op_key,
                                   dict(payload or {}, text=text, previous=old.text))
            self._apply_to_index(old.user_id, seq, add=[(rid, vec)], remove=[old.id])
            return self.get(rid)

    def log_decision(self, user_id: str, op: str, *, target_id: int | None = None,
                     decision_source: str = "rule", op_key: str | None = None,
                     payload: dict | None = None) -> bool:
        """Log a decision that writes no record (IGNORE, skips, warnings). False if op_key seen."""
        _check_user(user_id)
        with self._lock, self._write() as db:
            if op_key is not None and self.op_result(op_key) is not None:
                return False
            self._insert_event(db, self._next_seq(db), user_id, op, None, target_id,
                               decision_source, op_key, payload)
            return True

    def _apply_to_index(self, user_id: str, seq: int, add=(), remove=()) -> None:
        idx = self._indexes.get(user_id)
        if idx is None:
            return  # loaded lazily from SQLite on first search
        self._index(user_id)  # catch up with other writers first
        for rid in remove:
            idx.remove(rid)
        for rid, vec in add:
            idx.add(rid, vec)
        idx.chg = max(idx.chg, seq)
        self._maybe_promote(user_id, idx)

    # ------------------------------------------------------------ raw + kv
    def put_raw_session(self, key: str, user_id: str, payload: Any, observed_at: str | None = None) -> bool:
        """Store a raw session (what the user said) once; False if the key is already there."""
        _check_user(user_id)
        with self._lock, self._write() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO raw_sessions(key, user_id, observed_at, payload, created_at)"
                " VALUES (?, ?, ?, ?, ?)", (key, user_id, observed_at,
                                            json.dumps(payload, ensure_ascii=False), _now()))
            return cur.rowcount == 1

    def raw_sessions(self, user_id: str) -> list[dict]:
        rows = self._db.execute("SELECT key, observed_at, payload FROM raw_sessions WHERE user_id=?"
                                " ORDER BY rowid", (user_id,)).fetchall()
        return [{"key": k, "observed_at": d, "payload": json.loads(p)} for k, d, p in rows]

    def kv_get(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def kv_put(self, key: str, value: Any) -> None:
        with self._lock, self._write() as db:
            db.execute("INSERT OR REPLACE INTO kv(key, value) VALUES (?, ?)",
                       (key, json.dumps(value, ensure_ascii=False)))

    # ------------------------------------------------------------------ reads
    _COLS = ("id, user_id, text, observed_at, created_at, version, status, supersedes,"
             " superseded_by, root_id, source, decision_source")

    @staticmethod
    def _row(row) -> Record:
        (rid, user, text, obs, created, version, status, sup, sup_by, root, source, dec) = row
        return Record(rid, user, text, obs, created, version, status, sup, sup_by, root,
                      json.loads(source), dec)

    def _get(self, record_id: int) -> Record:
        row = self._db.execute(f"SELECT {self._COLS} FROM records WHERE id=?", (int(record_id),)).fetchone()
        if row is None:
            raise RecordNotFoundError(f"no memory record with id {record_id} in {self.path}")
        return self._row(row)

    def get(self, record_id: int) -> Record:
        """The record with this id (live or superseded)."""
        with self._lock:
            return self._get(record_id)

    def get_many(self, ids: Sequence[int]) -> dict[int, Record]:
        if not len(ids):
            return {}
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._db.execute(f"SELECT {self._COLS} FROM records WHERE id IN ({marks})",
                                    [int(i) for i in ids]).fetchall()
        return {r[0]: self._row(r) for r in rows}

    def history(self, record_id: int) -> list[Record]:
        """Every version in this record's chain, oldest first (the live one last)."""
        with self._lock:
            rec = self._get(record_id)
            rows = self._db.execute(f"SELECT {self._COLS} FROM records WHERE root_id=? ORDER BY version, id",
                                    (rec.root_id,)).fetchall()
        return [self._row(r) for r in rows]

    def all(self, user_id: str, include_superseded: bool = False) -> list[Record]:
        """The user's live records (or every version), in insertion order."""
        cond = "" if include_superseded else " AND status='live'"
        with self._lock:
            rows = self._db.execute(f"SELECT {self._COLS} FROM records WHERE user_id=?{cond} ORDER BY id",
                                    (user_id,)).fetchall()
        return [self._row(r) for r in rows]

    def users(self) -> list[str]:
        with self._lock:
            return [u for (u,) in self._db.execute("SELECT DISTINCT user_id FROM records ORDER BY user_id")]

    def count(self, user_id: str | None = None, live_only: bool = True) -> int:
        where, args = [], []
        if user_id is not None:
            where.append("user_id=?")
            args.append(user_id)
        if live_only:
            where.append("status='live'")
        sql = "SELECT COUNT(*) FROM records" + (" WHERE " + " AND ".join(where) if where else "")
        with self._lock:
            return self._db.execute(sql, args).fetchone()[0]

    def events(self, user_id: str | None = None) -> list[dict]:
        """The event log (every decision), oldest first."""
        sql = "SELECT seq, ts, user_id, op, record_id, target_id, decision_source, op_key, payload FROM events"
        args: tuple = ()
        if user_id is not None:
            sql += " WHERE user_id=?"
            args = (user_id,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY seq", args).fetchall()
        keys = ("seq", "ts", "user_id", "op", "record_id", "target_id", "decision_source", "op_key", "payload")
        return [dict(zip(keys, r[:-1] + (json.loads(r[-1]) if r[-1] else {},))) for r in rows]

    def embed_query(self, query: str) -> np.ndarray:
        return self._embed_one(_check_text(query), None)

    def search(self, user_id: str, query: str | np.ndarray, k: int = 3) -> list[Hit]:
        """Top-k live records of one user by cosine similarity: always min(k, live) hits."""
        _check_user(user_id)
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        q = self.embed_query(query) if isinstance(query, str) else self._embed_one("-", query)
        with self._lock:
            idx = self._index(user_id)
            ids, scores = idx.search(q, int(k), idx.n >= self.hnsw_threshold, self.ef)
            recs = self.get_many(ids.tolist())
        return [Hit(recs[int(i)], float(s)) for i, s in zip(ids, scores) if int(i) in recs]

    def search_ids(self, user_id: str, qvec: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids and scores only (no SQLite read): the hot path for benchmarks and rerankers."""
        with self._lock:
            idx = self._index(user_id)
            return idx.search(np.asarray(qvec, np.float32), int(k), idx.n >= self.hnsw_threshold, self.ef)

    def check_consistency(self, user_id: str) -> None:
        """Raise AssertionError unless the in-memory index equals the live records in SQLite."""
        with self._lock:
            idx = self._index(user_id)
            live = {r for (r,) in self._db.execute(
                "SELECT id FROM records WHERE user_id=? AND status='live'", (user_id,))}
            if set(idx.pos) != live:
                raise AssertionError(f"index for {user_id} has {len(idx.pos)} ids, SQLite {len(live)} live")
            if idx.hnsw is not None and idx.hnsw_labels != live:
                raise AssertionError(f"HNSW labels for {user_id} disagree with SQLite")

    # ---------------------------------------------------------- export/import
    def export_jsonl(self, path: str | os.PathLike, user_id: str | None = None) -> int:
        """Write every record version (no embeddings) as JSON lines; returns the count."""
        sql = f"SELECT {self._COLS} FROM records" + (" WHERE user_id=?" if user_id else "") + " ORDER BY id"
        with self._lock:
            rows = self._db.execute(sql, (user_id,) if user_id else ()).fetchall()
        data = "".join(json.dumps(dict(self._row(r).to_dict(), store_id=self.store_id),
                                  ensure_ascii=False) + "\n" for r in rows)
        atomic_write_bytes(Path(path), data.encode())
        return len(rows)

    def import_jsonl(self, path: str | os.PathLike) -> int:
        """Import records exported by :meth:`export_jsonl` (re-embedded, ids remapped).

        Idempotent: importing the same file twice adds nothing. Returns records written.
        """
        lines = Path(path).read_text().splitlines()
        items = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e})") from e
            for key in ("id", "user_id", "text", "status", "supersedes"):
                if key not in item:
                    raise ValueError(f"{path}:{n}: missing field {key!r}")
            items.append(item)
        mapping: dict[int, int] = {}
        written = 0
        vecs = self.embedder.embed([it["text"] for it in items]) if items else []
        for it, vec in zip(items, vecs):
            key = f"import:{it.get('store_id', 'unknown')}:{it['id']}"
            prev = self.op_result(key)
            if prev is not None:
                mapping[it["id"]] = prev[1]
                continue
            kw = dict(observed_at=it.get("observed_at"), source=it.get("source") or {},
                      decision_source="import", op_key=key, embedding=vec,
                      payload={"imported_from": it.get("store_id"), "original_id": it["id"]})
            if it["supersedes"] is not None and it["supersedes"] in mapping:
                rec = self.rewrite(mapping[it["supersedes"]], it["text"], op="UPDATE", **kw)
            else:
                rec = self.add(it["user_id"], it["text"], **kw)
            mapping[it["id"]] = rec.id
            written += 1
        self.flush()
        return written

    export = export_jsonl
    import_ = import_jsonl

    # --------------------------------------------------------------- closing
    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        with self._lock:
            self.flush()
            self._db.close()
            self._closed = True

    def __enter__(self) -> "MemoryStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            if not getattr(self, "_closed", True):
                self._db.close()
        except Exception:
            pass


EMBEDDER_NAMES = {"minilm": "all-MiniLM-L6-v2", "hashing": "hashing-v1-384"}


def open_store(path: str | os.PathLike, embedder: str | None = None, must_exist: bool = False) -> MemoryStore:
    """Opens a store with the embedder it was built with (or ``embedder`` for a new store).

    ``embedder`` is a short name (minilm, hashing) or a full embedder name; a store built
    with another embedder is refused with a clear error.
    """
    from .embedders import make_embedder

    path = Path(path)
    if (path / "memory.sqlite").is_file():
        name = MemoryStore.read_meta(path)["embedder"]
        if embedder is not None and EMBEDDER_NAMES.get(embedder, embedder) != name:
            raise ValueError(f"--embedder {embedder}: store {path} was built with {name!r}")
        return MemoryStore(path, make_embedder(name))
    if must_exist:
        raise FileNotFoundError(f"--store: no memory store at {path}")
    return MemoryStore(path, make_embedder(embedder or "minilm"))
