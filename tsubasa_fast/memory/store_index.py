"""The memory store's index cache: per-user live embeddings (exact + HNSW) and their files.

Indexes are caches of SQLite and never the truth:

* a user's index is loaded from one SQLite snapshot and caught up with other processes'
  commits (``PRAGMA data_version``) before every use;
* exact numpy cosine below ``hnsw_threshold`` live records, hnswlib above it; the HNSW
  ``ef`` grows with ``k`` and the index size (:func:`hnsw_ef`), and an HNSW miss falls back
  to exact search, so a search always returns ``min(k, live)`` hits;
* index files (``index/<user>.hnsw`` + ``.json``) are written atomically with a checksum and
  the store id; a file is trusted only if it belongs to this database (store id), this
  user and embedder, matches its checksum and is not newer than SQLite; otherwise it is
  rebuilt from SQLite, and a stale one is reconciled label by label;
* temporary files a killed process left in ``index/`` are removed on open.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from pathlib import Path

import numpy as np

from ..fileio import atomic_output, atomic_write_bytes, remove_orphan_temp_files, sha256_file
from .store_db import StoreDB, now

log = logging.getLogger(__name__)


def hnsw_ef(k: int, n: int, ef_min: int) -> int:
    """HNSW search breadth for top-``k`` over ``n`` vectors: ``max(ef_min, 1.5 k log2 n)``.

    A fixed ef loses recall as k and the graph grow (recall@10 0.95 at ef 64 and 20k
    records); 1.5 k log2 n keeps recall@10 >= 0.99 there (benchmarks/README.md).
    """
    return int(min(max(ef_min, k, math.ceil(1.5 * k * math.log2(max(n, 2)))), max(n, k)))


def index_stem(user_id: str) -> str:
    """A file-name stem for a user: readable, collision-free, never a dot file."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", user_id).lstrip(".")[:60]
    return f"{safe}-{hashlib.sha1(user_id.encode()).hexdigest()[:10]}"


class UserIndex:
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
        self.chg = 0            # highest change seq applied
        self.data_version = -1  # SQLite data_version of the snapshot last applied
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

    def fill(self, rows) -> None:
        """Initial load: ``rows`` of (id, embedding bytes)."""
        self._grow(len(rows))
        for i, (rid, blob) in enumerate(rows):
            self.ids[i] = rid
            self.mat[i] = np.frombuffer(blob, dtype=np.float32)
            self.pos[rid] = i
        self.n = len(rows)

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
    def build_hnsw(self, M: int, ef_construction: int) -> None:
        import hnswlib

        index = hnswlib.Index(space="ip", dim=self.dim)
        index.init_index(max_elements=max(1024, 2 * self.n), ef_construction=ef_construction, M=M)
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

    def search(self, q: np.ndarray, k: int, use_hnsw: bool, ef_min: int):
        k = min(k, self.n)
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if use_hnsw and self.hnsw is not None:
            try:
                self.hnsw.set_ef(hnsw_ef(k, self.n, ef_min))
                labels, dist = self.hnsw.knn_query(q[None, :], k=k)
                return labels[0].astype(np.int64), (1.0 - dist[0]).astype(np.float32)
            except RuntimeError:
                pass  # too few reachable live neighbours: exact search is always right
        return self.exact(q, k)


class IndexCache:
    """Every loaded user's :class:`UserIndex`, kept in step with SQLite, and their files.

    Not thread-safe by itself: the store calls it under the database lock.
    """

    def __init__(self, folder: Path, db: StoreDB, *, store_id: str, embedder_name: str, dim: int,
                 hnsw_threshold: int, M: int, ef_construction: int, ef: int):
        self.folder, self.db = folder, db
        self.store_id, self.embedder_name, self.dim = store_id, embedder_name, dim
        self.hnsw_threshold, self.M, self.ef_construction, self.ef = hnsw_threshold, M, ef_construction, ef
        self.indexes: dict[str, UserIndex] = {}
        self.stats = {"loaded": 0, "built": 0, "rebuilt": 0, "reconciled": 0, "temp_files_removed": 0}
        folder.mkdir(exist_ok=True)
        removed = remove_orphan_temp_files(folder, (".hnsw", ".json"))
        if removed:
            self.stats["temp_files_removed"] = len(removed)
            log.warning("removed %d temporary index file(s) left by a killed process in %s: %s",
                        len(removed), folder, ", ".join(p.name for p in removed))

    def paths(self, user_id: str) -> tuple[Path, Path]:
        stem = index_stem(user_id)
        return self.folder / f"{stem}.hnsw", self.folder / f"{stem}.json"

    # ------------------------------------------------------------ access
    def get(self, user_id: str) -> UserIndex:
        """The user's index, loaded lazily and caught up with other connections' commits."""
        idx = self.indexes.get(user_id)
        if idx is None:
            idx = UserIndex(self.dim)
            rows, idx.chg, idx.data_version = self.db.load_live(user_id)
            idx.fill(rows)
            self.indexes[user_id] = idx
            self._maybe_promote(user_id, idx)
            return idx
        if self.db.data_version() != idx.data_version:
            self._catch_up(user_id, idx)
        return idx

    def _catch_up(self, user_id: str, idx: UserIndex) -> None:
        rows, idx.data_version = self.db.changes_since(user_id, idx.chg)
        for rid, status, blob, chg in rows:
            if status == "live":
                idx.add(rid, np.frombuffer(blob, dtype=np.float32))
            else:
                idx.remove(rid)
            idx.chg = max(idx.chg, chg)
        self._maybe_promote(user_id, idx)

    def apply(self, user_id: str, seq: int, add=(), remove=()) -> None:
        """This connection's own committed write (data_version does not show those)."""
        idx = self.indexes.get(user_id)
        if idx is None:
            return  # loaded lazily from SQLite on first search
        self.get(user_id)  # catch up with other writers first
        for rid in remove:
            idx.remove(rid)
        for rid, vec in add:
            idx.add(rid, vec)
        idx.chg = max(idx.chg, seq)
        self._maybe_promote(user_id, idx)

    def search(self, user_id: str, q: np.ndarray, k: int):
        idx = self.get(user_id)
        return idx.search(q, k, idx.n >= self.hnsw_threshold, self.ef)

    def _maybe_promote(self, user_id: str, idx: UserIndex) -> None:
        if idx.hnsw is None and idx.n >= self.hnsw_threshold:
            self._attach_hnsw(user_id, idx)

    # ------------------------------------------------------------- files
    def _trust_problem(self, meta: dict, user_id: str, bin_path: Path, idx: UserIndex) -> str | None:
        if meta.get("store_id") != self.store_id:
            return "built for another database (store id differs)"
        if meta.get("user_id") != user_id or meta.get("embedder") != self.embedder_name \
                or meta.get("dim") != self.dim:
            return "built for another user or embedder"
        if not isinstance(meta.get("chg"), int) or meta["chg"] > idx.chg:
            return "newer than the database"
        if meta.get("sha256") != sha256_file(bin_path):
            return "corrupt (checksum mismatch)"
        return None

    def _attach_hnsw(self, user_id: str, idx: UserIndex) -> None:
        """Load the user's index file if it is trustworthy and reconcile it; otherwise rebuild."""
        import hnswlib

        bin_path, meta_path = self.paths(user_id)
        reason = None
        if not bin_path.is_file() or not meta_path.is_file():
            reason = "missing"
        else:
            try:
                meta = json.loads(meta_path.read_text())
                reason = self._trust_problem(meta, user_id, bin_path, idx)
                if reason is None:
                    index = hnswlib.Index(space="ip", dim=self.dim)
                    index.load_index(str(bin_path), max_elements=max(meta.get("max_elements", 0), 1024))
                    index.set_num_threads(1)
                    labels = set(int(x) for x in index.get_ids_list())
                    deleted = set(meta.get("deleted", []))
                    idx.hnsw, idx.hnsw_labels, idx.hnsw_deleted = index, labels - deleted, len(deleted)
                    fixes = idx.reconcile_hnsw()
                    if fixes:
                        self.stats["reconciled"] += 1
                        log.info("index for %s was stale (%d fixes); reconciled with SQLite", user_id, fixes)
                    self.stats["loaded"] += 1
                    idx.dirty = bool(fixes)
            except (OSError, ValueError, RuntimeError, MemoryError, AttributeError) as e:
                reason = f"unreadable ({e})"
        if reason is not None:
            (log.info if reason == "missing" else log.warning)(
                "building HNSW index for user %r from SQLite: index file %s", user_id, reason)
            idx.build_hnsw(self.M, self.ef_construction)
            self.stats["built" if reason == "missing" else "rebuilt"] += 1
        # compact when tombstones pile up
        if idx.hnsw_deleted > max(1024, idx.n // 2):
            idx.build_hnsw(self.M, self.ef_construction)

    def save(self, user_id: str, idx: UserIndex) -> None:
        if idx.hnsw is None or not idx.dirty:
            return
        bin_path, meta_path = self.paths(user_id)
        with atomic_output(bin_path) as tmp:
            idx.hnsw.save_index(str(tmp))
            digest = sha256_file(tmp)
        all_labels = set(int(x) for x in idx.hnsw.get_ids_list())
        meta = {"store_id": self.store_id, "user_id": user_id, "embedder": self.embedder_name,
                "dim": self.dim, "sha256": digest, "chg": idx.chg, "live": idx.n,
                "max_elements": idx.hnsw.get_max_elements(),
                "deleted": sorted(all_labels - idx.hnsw_labels), "saved_at": now()}
        atomic_write_bytes(meta_path, json.dumps(meta).encode())
        idx.dirty = False

    def flush(self) -> None:
        for user_id, idx in self.indexes.items():
            self.save(user_id, idx)
