"""The SQLite half of the memory store: schema, a checked open, read and write transactions.

SQLite (WAL) is the store's truth. This module owns the connection and every statement:

* opening refuses a file that is not an intact store (0 bytes, a foreign header, a
  truncated or corrupt file that ``PRAGMA integrity_check`` reports) with
  :class:`StoreCorruptError` naming the file, instead of serving it or starting afresh;
* opening takes no write lock unless the schema has to be created, so readers never wait
  behind a writer (WAL readers do not block);
* :meth:`StoreDB.read` is one read transaction (one snapshot for several queries),
  :meth:`StoreDB.write` one ``BEGIN IMMEDIATE`` write transaction; a write lock held by
  another process past the timeout is :class:`StoreLockedError`.

One re-entrant lock serialises all use of the connection across threads.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sqlite3
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import InputError

try:
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

SCHEMA_VERSION = 3
# 1: records.status live | superseded. 2: adds 'deleted' (a soft delete: the version stays
# readable in its history, searches skip it). 3: adds observation_vectors (the embedding of the
# observation a version absorbed, when it differs from the version's text: retrieval scores an
# evolved memory by its observations without re-embedding them). Older stores are migrated on open.
STATUSES = ("live", "superseded", "deleted")
SQLITE_HEADER = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    text TEXT NOT NULL,
    observed_at TEXT,
    created_at TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('live', 'superseded', 'deleted')),
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
CREATE TABLE IF NOT EXISTS observation_vectors (
    record_id INTEGER PRIMARY KEY REFERENCES records(id),
    embedding BLOB NOT NULL
);
"""
_OBSERVATION_VECTORS_DDL = _SCHEMA[_SCHEMA.index("CREATE TABLE IF NOT EXISTS observation_vectors"):].strip().rstrip(";")
_TABLES = {"meta", "records", "events", "raw_sessions", "kv"}  # present in every schema version
_RECORDS_DDL = _SCHEMA[_SCHEMA.index("CREATE TABLE IF NOT EXISTS records"):_SCHEMA.index(");\nCREATE INDEX") + 1]
_RECORD_INDEXES = [ln for ln in _SCHEMA.splitlines() if ln.startswith("CREATE INDEX IF NOT EXISTS records_")]


class MemoryStoreError(RuntimeError):
    """Base class for store errors."""


class EmbedderMismatchError(MemoryStoreError):
    """The store was built with a different embedder (name or dimension)."""


class StoreLockedError(MemoryStoreError):
    """Another process held the write lock for longer than the timeout."""


class StoreCorruptError(MemoryStoreError):
    """The database file is not an intact memory store (empty, foreign, truncated, corrupt)."""


class RecordNotFoundError(MemoryStoreError, KeyError):
    """No record with that id."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "record not found"


class StaleTargetError(MemoryStoreError):
    """A rewrite targeted a superseded version instead of the live one."""


class OpKeyConflictError(MemoryStoreError, ValueError):
    """An op_key already applied is reused for a different operation or text."""


class StoreVersionError(MemoryStoreError):
    """The store was written by a newer tsubasa_fast (a schema this version does not know)."""


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


RECORD_COLS = ("id, user_id, text, observed_at, created_at, version, status, supersedes,"
               " superseded_by, root_id, source, decision_source")
EVENT_COLS = ("seq", "ts", "user_id", "op", "record_id", "target_id", "decision_source", "op_key", "payload")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def row_to_record(row) -> Record:
    (rid, user, text, obs, created, version, status, sup, sup_by, root, source, dec) = row
    return Record(rid, user, text, obs, created, version, status, sup, sup_by, root, json.loads(source), dec)


def row_to_event(row) -> dict:
    return dict(zip(EVENT_COLS, row[:-1] + (json.loads(row[-1]) if row[-1] else {},)))


def check_db_file(db_path: Path) -> None:
    """Refuses, before SQLite touches it, a file that cannot be a store: 0 bytes with no
    write-ahead log to replay, or a header that is not SQLite's."""
    size = db_path.stat().st_size
    wal = db_path.with_name(db_path.name + "-wal")
    if size == 0:
        if wal.is_file() and wal.stat().st_size > 0:
            return  # content still in the log; SQLite and the integrity check decide
        raise StoreCorruptError(
            f"{db_path} is empty (0 bytes): the store's records are gone. Restore the file from a "
            f"backup or an export, or delete it to start an empty store")
    with open(db_path, "rb") as fh:
        head = fh.read(len(SQLITE_HEADER))
    if head != SQLITE_HEADER:
        raise StoreCorruptError(f"{db_path} is not a SQLite database (bad header {head[:16]!r}); "
                                f"refusing to open it as a memory store")


@contextlib.contextmanager
def _creation_lock(folder: Path) -> Iterator[None]:
    """Serialises creating a database file between processes (flock on its folder), so no
    process mistakes a file another one is creating (briefly 0 bytes) for an emptied store."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class _Translate:
    """Context manager (a class, not a generator: it wraps every statement) that re-raises
    SQLite's lock and corruption errors as store errors naming the file."""

    def __init__(self, db: "StoreDB"):
        self.db = db

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None or not issubclass(exc_type, sqlite3.DatabaseError):
            return False
        name = getattr(exc, "sqlite_errorname", "") or ""
        msg = str(exc)
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in msg or "busy" in msg:
            raise StoreLockedError(
                f"store {self.db.path.parent} is locked by another writer (waited "
                f"{self.db.lock_timeout:g} s); retry later") from exc
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in msg or "not a database" in msg:
            raise StoreCorruptError(f"{self.db.path} is corrupt ({msg}); refusing to use it. "
                                    f"Restore it from a backup or an export") from exc
        return False


class StoreDB:
    """One SQLite connection to ``db_path`` with checked open and explicit transactions."""

    def __init__(self, db_path: str | Path, *, lock_timeout: float = 30.0, synchronous: str = "NORMAL",
                 integrity: str = "full"):
        if integrity not in ("full", "quick", "off"):
            raise InputError(f"must be 'full', 'quick' or 'off', got {integrity!r}", field="integrity")
        self.path = Path(db_path)
        self.lock_timeout = lock_timeout
        self.lock = threading.RLock()
        self._translate = _Translate(self)
        new = not self.path.exists() or self.path.stat().st_size == 0
        with _creation_lock(self.path.parent) if new else contextlib.nullcontext():
            # under the lock a 0-byte file is not one another process is creating right now
            existed = self.path.exists()
            if existed:
                check_db_file(self.path)
            self.conn = sqlite3.connect(self.path, timeout=lock_timeout, isolation_level=None,
                                        check_same_thread=False)
            try:
                with self.translate():
                    self.conn.execute("PRAGMA journal_mode=WAL")  # writes the header of a new file
                    self.conn.execute(f"PRAGMA synchronous={synchronous}")
                    self.conn.execute("PRAGMA foreign_keys=ON")
            except BaseException:
                self.conn.close()
                raise
        try:
            if existed and integrity != "off":
                with self.translate():
                    self._check_integrity("integrity_check" if integrity == "full" else "quick_check")
        except BaseException:
            self.conn.close()
            raise

    # ------------------------------------------------------------ errors
    def translate(self) -> "_Translate":
        """Turns SQLite's lock and corruption errors into store errors that name the file."""
        return self._translate

    def _check_integrity(self, pragma: str) -> None:
        problems = [r[0] for r in self.conn.execute(f"PRAGMA {pragma}(20)").fetchall()]
        if problems != ["ok"]:
            shown = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
            raise StoreCorruptError(f"{self.path} fails PRAGMA {pragma}: {shown}. Refusing to serve a "
                                    f"corrupt store; restore it from a backup or an export")

    # ------------------------------------------------------ transactions
    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query inside sees the same committed snapshot."""
        with self.lock, self.translate():
            if self.conn.in_transaction:
                yield self.conn
                return
            self.conn.execute("BEGIN")
            try:
                yield self.conn
            finally:
                self.conn.execute("COMMIT")

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``): committed on success, else rolled back."""
        with self.lock, self.translate():
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        with self.lock, self.translate():
            return self.conn.execute(sql, args).fetchall()

    def query_one(self, sql: str, args: Sequence[Any] = ()):
        with self.lock, self.translate():
            return self.conn.execute(sql, args).fetchone()

    def data_version(self) -> int:
        """Changes when another connection commits (not for this connection's own commits)."""
        return self.query_one("PRAGMA data_version")[0]

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    # ------------------------------------------------------------ schema
    def ensure_schema(self, embedder_name: str, dim: int) -> dict:
        """The store's meta rows; creates the schema (the only write an open may do) when missing."""
        with self.read() as db:
            tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
        if _TABLES <= tables and meta:
            version = int(meta.get("schema_version", 1))
            if version > SCHEMA_VERSION:
                raise StoreVersionError(
                    f"{self.path} has schema version {version}, newer than this tsubasa_fast knows "
                    f"({SCHEMA_VERSION}); upgrade tsubasa_fast to open it")
            if version < SCHEMA_VERSION:
                meta = self.migrate(version)
            return meta
        with self.write() as db:
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    db.execute(stmt)
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                db.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [
                    ("schema_version", str(SCHEMA_VERSION)), ("store_id", uuid.uuid4().hex),
                    ("embedder", embedder_name), ("dim", str(dim)), ("created_at", now())])
                meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        return meta

    def migrate(self, version: int) -> dict:
        """Brings a store of an older schema up to :data:`SCHEMA_VERSION` in ONE write
        transaction (a crash leaves the old schema intact); returns the new meta rows.

        2 -> 3: the table observation_vectors is created (empty: retrieval embeds the observations
        of versions written before it, as it did then).

        1 -> 2: the records table gains the status 'deleted'. SQLite cannot alter a CHECK
        constraint, so the table is rebuilt: new table, rows copied with their ids, the old
        one dropped, the new one renamed, its indexes and AUTOINCREMENT counter restored
        (SQLite's own procedure for a schema change, foreign keys off meanwhile: they cannot be
        switched inside a transaction, and the copy's self-references must not point at the
        old table while it is dropped; ``foreign_key_check`` runs before the commit).
        """
        with self.lock:
            with self.translate():
                self.conn.execute("PRAGMA foreign_keys=OFF")
            try:
                return self._migrate()
            finally:
                with self.translate():
                    self.conn.execute("PRAGMA foreign_keys=ON")

    def _migrate(self) -> dict:
        with self.write() as db:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            current = int(meta.get("schema_version", 1))
            if current == 1:  # (another process may have migrated while we waited for the lock)
                seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name='records'").fetchone()
                db.execute(_RECORDS_DDL.replace("CREATE TABLE IF NOT EXISTS records",
                                                "CREATE TABLE records_v2", 1))
                db.execute("INSERT INTO records_v2 SELECT * FROM records")
                db.execute("DROP TABLE records")
                db.execute("ALTER TABLE records_v2 RENAME TO records")
                for stmt in _RECORD_INDEXES:
                    db.execute(stmt)
                if seq is not None:
                    db.execute("UPDATE sqlite_sequence SET seq=MAX(seq, ?) WHERE name='records'", (seq[0],))
                bad = db.execute("PRAGMA foreign_key_check(records)").fetchall()
                if bad:
                    raise StoreCorruptError(f"{self.path}: migrating to schema 2 found {len(bad)} broken "
                                            f"version links (first: {bad[0]}); nothing was changed")
            if current < 3:
                db.execute(_OBSERVATION_VECTORS_DDL)
            if current < SCHEMA_VERSION:
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                           (str(SCHEMA_VERSION),))
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('migrated_at', ?)", (now(),))
            return dict(db.execute("SELECT key, value FROM meta").fetchall())

    # ----------------------------------------------------------- records
    def get_record(self, record_id: int) -> Record | None:
        row = self.query_one(f"SELECT {RECORD_COLS} FROM records WHERE id=?", (record_id,))
        return None if row is None else row_to_record(row)

    def records(self, where: str = "", args: Sequence[Any] = (), order: str = "id") -> list[Record]:
        sql = f"SELECT {RECORD_COLS} FROM records" + (f" WHERE {where}" if where else "") + f" ORDER BY {order}"
        return [row_to_record(r) for r in self.query(sql, args)]

    def events(self, where: str = "", args: Sequence[Any] = ()) -> list[dict]:
        sql = f"SELECT {', '.join(EVENT_COLS)} FROM events" + (f" WHERE {where}" if where else "") + " ORDER BY seq"
        return [row_to_event(r) for r in self.query(sql, args)]

    def event_for_key(self, op_key: str) -> dict | None:
        row = self.query_one(f"SELECT {', '.join(EVENT_COLS)} FROM events WHERE op_key=?", (op_key,))
        return None if row is None else row_to_event(row)

    @staticmethod
    def next_seq(db: sqlite3.Connection) -> int:
        return db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events").fetchone()[0]

    @staticmethod
    def insert_record(db: sqlite3.Connection, *, user_id: str, text: str, observed_at: str | None,
                      created_at: str, version: int, supersedes: int | None, root_id: int | None,
                      source: dict, decision_source: str, embedding: bytes, chg: int) -> int:
        cur = db.execute(
            "INSERT INTO records(user_id, text, observed_at, created_at, version, status,"
            " supersedes, superseded_by, root_id, source, decision_source, embedding, chg)"
            " VALUES (?, ?, ?, ?, ?, 'live', ?, NULL, ?, ?, ?, ?, ?)",
            (user_id, text, observed_at, created_at, version, supersedes, root_id or 0,
             json.dumps(source, ensure_ascii=False), decision_source, embedding, chg))
        rid = cur.lastrowid
        if root_id is None:
            db.execute("UPDATE records SET root_id=? WHERE id=?", (rid, rid))
        if supersedes is not None:
            db.execute("UPDATE records SET status='superseded', superseded_by=?, chg=? WHERE id=?",
                       (rid, chg, supersedes))
        return rid

    @staticmethod
    def insert_observation_vector(db: sqlite3.Connection, record_id: int, embedding: bytes) -> None:
        db.execute("INSERT INTO observation_vectors(record_id, embedding) VALUES (?, ?)", (record_id, embedding))

    def version_vectors(self, ids: Sequence[int]) -> dict[int, tuple[str, bytes, bytes | None]]:
        """Record id -> (its text, its embedding, the embedding of the observation it absorbed or
        None), read in one snapshot."""
        out: dict[int, tuple[str, bytes, bytes | None]] = {}
        ids = list(ids)
        with self.read() as db:
            for i in range(0, len(ids), 500):
                part = ids[i:i + 500]
                out.update({rid: (text, emb, obs) for rid, text, emb, obs in db.execute(
                    "SELECT r.id, r.text, r.embedding, o.embedding FROM records r LEFT JOIN observation_vectors o"
                    f" ON o.record_id = r.id WHERE r.id IN ({','.join('?' * len(part))})", part)})
        return out

    @staticmethod
    def mark_deleted(db: sqlite3.Connection, record_id: int, chg: int) -> None:
        """The live version ``record_id`` becomes ``deleted`` (kept, never searched)."""
        db.execute("UPDATE records SET status='deleted', chg=? WHERE id=? AND status='live'", (chg, record_id))

    @staticmethod
    def insert_event(db: sqlite3.Connection, *, seq: int, user_id: str, op: str, record_id: int | None,
                     target_id: int | None, decision_source: str | None, op_key: str | None,
                     payload: dict | None, ts: str | None = None) -> None:
        db.execute(f"INSERT INTO events({', '.join(EVENT_COLS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (seq, ts or now(), user_id, op, record_id, target_id, decision_source, op_key,
                    json.dumps(payload or {}, ensure_ascii=False)))

    # ----------------------------------------------- snapshots for indexes
    def load_live(self, user_id: str) -> tuple[list[tuple[int, bytes]], int, int]:
        """``(live (id, embedding) rows, MAX(chg), data_version)`` from one snapshot, so a
        commit landing meanwhile is either wholly in it or seen later as a change."""
        with self.read() as db:
            rows = db.execute("SELECT id, embedding FROM records WHERE user_id=? AND status='live'"
                              " ORDER BY id", (user_id,)).fetchall()
            chg = db.execute("SELECT MAX(chg) FROM records WHERE user_id=?", (user_id,)).fetchone()[0]
            version = db.execute("PRAGMA data_version").fetchone()[0]
        return rows, chg or 0, version

    def changes_since(self, user_id: str, chg: int) -> tuple[list[tuple[int, str, bytes, int]], int]:
        """Rows of ``user_id`` changed after ``chg`` and the data_version of that snapshot."""
        with self.read() as db:
            rows = db.execute("SELECT id, status, embedding, chg FROM records WHERE user_id=? AND chg > ?"
                              " ORDER BY chg", (user_id, chg)).fetchall()
            version = db.execute("PRAGMA data_version").fetchone()[0]
        return rows, version
