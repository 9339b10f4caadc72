"""One truth across processes: index loads from one snapshot, indexes belong to their
database, readers take no write lock (issue 9, section 3 items 1, 2, 4)."""

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tsubasa_fast.memory import HashingEmbedder, MemoryStore

ROOT = Path(__file__).resolve().parents[2]


def _unit(rng, n, dim):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_index_load_sees_commits_landing_between_its_queries(tmp_path):
    """Another process's commit landing between any two statements of an index load is
    either in the loaded snapshot or caught up later, never lost for good."""
    path = tmp_path / "s"
    writer = MemoryStore(path, HashingEmbedder(64))
    for i in range(5):
        writer.add("u", f"first memory {i}")
    reader = MemoryStore(path, HashingEmbedder(64))
    landed = []

    def commit_meanwhile(sql):  # runs as each of the reader's statements starts
        if len(landed) < 6:
            landed.append(writer.add("u", f"landed during the load {len(landed)}").id)

    reader._db.set_trace_callback(commit_meanwhile)
    reader.search("u", "first memory", k=1)  # loads the user's index
    reader._db.set_trace_callback(None)
    assert len(landed) >= 3  # commits landed between the load's statements
    reader.check_consistency("u")
    got = {h.record.id for h in reader.search("u", "landed during the load", k=50)}
    assert set(landed) <= got and len(got) == 5 + len(landed)
    reader.close()
    writer.close()


WRITER = textwrap.dedent("""
    import sys
    from tsubasa_fast.memory import HashingEmbedder, MemoryStore
    store = MemoryStore(sys.argv[1], HashingEmbedder(64))
    print("READY", flush=True)
    for i in range(int(sys.argv[2])):
        store.add("shared", f"writer memory number {i}", op_key=f"w:{i}")
    store.close()
    print("DONE", flush=True)
""")


def test_reader_stores_opened_during_writes_converge(tmp_path):
    """1 writer process, 40 reader stores that load the index while it commits: after the
    writer is done every reader sees exactly the committed records."""
    path = tmp_path / "s"
    MemoryStore(path, HashingEmbedder(64)).close()
    n = 400
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(n)], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout.readline().strip() == "READY"
    readers = []
    deadline = time.monotonic() + 60
    while proc.poll() is None and len(readers) < 40 and time.monotonic() < deadline:
        r = MemoryStore(path, HashingEmbedder(64))
        r.search("shared", "writer memory", k=1)
        readers.append(r)
    assert proc.stdout.read().strip() == "DONE" and proc.wait(timeout=60) == 0
    assert len(readers) >= 5  # the loads really overlapped the writes
    for r in readers:
        hits = r.search("shared", "writer memory number 7", k=n + 10)
        assert len(hits) == n
        r.check_consistency("shared")
        r.close()


def _fill(store, vecs, user="u"):
    return [store.add(user, f"memory {i}", embedding=v).id for i, v in enumerate(vecs)]


def test_index_of_another_database_is_rebuilt_not_trusted(tmp_path):
    path = tmp_path / "s"
    rng = np.random.default_rng(0)
    old = MemoryStore(path, HashingEmbedder(64), hnsw_threshold=50)
    _fill(old, _unit(rng, 200, 64))
    old.search("u", "memory", k=1)
    old.close()
    assert len(list((path / "index").glob("*.hnsw"))) == 1
    for f in path.glob("memory.sqlite*"):
        f.unlink()  # a new database; the old index/ folder stays
    new = MemoryStore(path, HashingEmbedder(64), hnsw_threshold=50)
    vecs = _unit(rng, 200, 64)
    ids = _fill(new, vecs)  # the same ids 1..200, other vectors
    got = [new.search("u", vecs[i], k=1)[0].record.id for i in range(100)]
    want = [ids[int(np.argmax(vecs.astype(np.float64) @ vecs[i]))] for i in range(100)]  # exact reference
    assert got == want == ids[:100]
    assert new.index_stats["rebuilt"] == 1 and new.index_stats["loaded"] == 0
    new.close()
    again = MemoryStore(path, HashingEmbedder(64), hnsw_threshold=50)  # its own file is trusted
    assert again.index_stats["loaded"] == 1 and again.index_stats["rebuilt"] == 0
    assert again.search("u", vecs[3], k=1)[0].record.id == ids[3]
    again.close()


@pytest.fixture
def held_write_lock(tmp_path):
    """A store with one record, and another connection holding its write lock."""
    path = tmp_path / "s"
    s = MemoryStore(path, HashingEmbedder(64))
    s.add("u", "Ann drinks green tea every morning")
    s.close()
    holder = sqlite3.connect(path / "memory.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO kv(key, value) VALUES ('busy', '1')")
    yield path
    holder.execute("ROLLBACK")
    holder.close()


def test_opening_for_reading_takes_no_write_lock(held_write_lock):
    t = time.monotonic()
    r = MemoryStore(held_write_lock, HashingEmbedder(64), lock_timeout=5)
    hits = r.search("u", "green tea", k=1)
    r.close()
    assert time.monotonic() - t < 4  # did not wait for the lock
    assert [h.record.text for h in hits] == ["Ann drinks green tea every morning"]


def test_cli_search_behind_a_writer_and_one_line_lock_error(held_write_lock, tmp_path, capsys):
    from tsubasa_fast.cli import main

    assert main(["memory", "search", "--store", str(held_write_lock), "--user", "u", "--json", "-k", "1",
                 "tea"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "green tea" in out[0]
    export = tmp_path / "e.jsonl"
    other = MemoryStore(tmp_path / "other", HashingEmbedder(64))
    other.add("v", "Bob cycles to work")
    other.export_jsonl(export)
    other.close()
    rc = main(["memory", "import", "--store", str(held_write_lock), "--lock-timeout", "0.2", str(export)])
    err = capsys.readouterr().err
    assert rc != 0
    assert err.count("\n") == 1 and "locked by another writer" in err and "Traceback" not in err
