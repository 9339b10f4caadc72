"""A damaged memory.sqlite is refused with the file named; killed index writes leave no
litter (issue 9, section 3 items 3 and 7)."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tsubasa_fast.memory import HashingEmbedder, MemoryStore
from tsubasa_fast.memory.store import StoreCorruptError, open_store

ROOT = Path(__file__).resolve().parents[2]


def _store(path, n=20):
    s = MemoryStore(path, HashingEmbedder(64))
    for i in range(n):
        s.add("u", f"Ann remembers thing number {i} about the garden")
    s.close()
    return path / "memory.sqlite"


def _refused(path, match):
    with pytest.raises(StoreCorruptError, match=match) as e:
        MemoryStore(path, HashingEmbedder(64))
    assert str(path / "memory.sqlite") in str(e.value)
    with pytest.raises(StoreCorruptError, match=match):
        open_store(path)


def test_zero_byte_database_is_refused(tmp_path):
    path = tmp_path / "s"
    path.mkdir()
    (path / "memory.sqlite").write_bytes(b"")
    _refused(path, r"empty \(0 bytes\)")
    assert (path / "memory.sqlite").stat().st_size == 0  # not turned into a new empty store


def test_garbage_database_is_refused(tmp_path):
    path = tmp_path / "s"
    path.mkdir()
    (path / "memory.sqlite").write_bytes(np.random.default_rng(0).bytes(8192))
    _refused(path, "not a SQLite database")


def test_truncated_database_is_refused(tmp_path):
    path = tmp_path / "s"
    db = _store(path, n=300)
    size = db.stat().st_size
    assert size > 8 * 4096
    with open(db, "r+b") as fh:
        fh.truncate(size // 2)
    _refused(path, "corrupt|integrity_check")


def test_byte_flips_that_integrity_check_reports_are_refused(tmp_path):
    path = tmp_path / "s"
    db = _store(path)
    con = sqlite3.connect(db)
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name='records_user_status'").fetchone()[0]
    con.close()
    data = bytearray(db.read_bytes())
    page = slice((root - 1) * page_size, root * page_size)
    at = data[page].find(b"live")  # an index key: the table rows still read fine
    assert at > 0
    data[page.start + at: page.start + at + 4] = b"lave"
    db.write_bytes(bytes(data))
    # the corruption is real: SQLite itself (a fresh connection) reports it, and plain reads work
    con = sqlite3.connect(db)
    report = con.execute("PRAGMA integrity_check").fetchall()
    assert report != [("ok",)]
    assert con.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 20
    con.close()
    _refused(path, "integrity_check")


def test_intact_database_opens_and_reads(tmp_path):
    path = tmp_path / "s"
    _store(path)
    s = MemoryStore(path, HashingEmbedder(64))
    assert s.count("u") == 20
    s.close()


KILLED_SAVE = textwrap.dedent("""
    import importlib.util, sys, time
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("fileio", sys.argv[2])  # no package import: fast
    fileio = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fileio)
    atomic_output = fileio.atomic_output
    target = Path(sys.argv[1])
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"half an index")
        print("WRITING", tmp.name, flush=True)
        time.sleep(120)
""")


def _writer_in_save(target: Path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(target), str(ROOT / "tsubasa_fast" / "fileio.py")],
                            stdout=subprocess.PIPE, text=True)
    word, name = proc.stdout.readline().split()
    assert word == "WRITING"
    return proc, target.parent / name


def test_temp_index_files_of_a_killed_writer_are_removed_on_open(tmp_path):
    path = tmp_path / "s"
    s = MemoryStore(path, HashingEmbedder(64), hnsw_threshold=30)
    for i in range(40):
        s.add("u", f"memory {i}")
    s.search("u", "memory", k=1)
    s.close()
    index = path / "index"
    (hnsw_file,) = index.glob("*.hnsw")
    killed, killed_tmp = _writer_in_save(hnsw_file)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    legacy_tmp = index / f".{hnsw_file.name}.k2j3h4l5"  # the name the old hand-written writer used
    legacy_tmp.write_bytes(b"left over")
    alive, alive_tmp = _writer_in_save(index / "other.json")  # still writing: must be kept
    try:
        assert killed_tmp.is_file()
        s = MemoryStore(path, HashingEmbedder(64), hnsw_threshold=30)
        assert not killed_tmp.exists() and not legacy_tmp.exists()
        assert alive_tmp.is_file()
        assert s.index_stats["temp_files_removed"] == 2 and s.index_stats["loaded"] == 1
        assert len(s.search("u", "memory 7", k=40)) == 40
        s.close()
    finally:
        alive.kill()
        alive.wait()


def test_open_waits_for_a_database_another_process_is_creating(tmp_path):
    """A 0-byte file that is being created right now (its creator holds the folder's
    creation lock) is waited for, not refused as an emptied store."""
    import fcntl
    import threading
    import time

    path = tmp_path / "s"
    path.mkdir()
    creator = os.open(path, os.O_RDONLY)
    fcntl.flock(creator, fcntl.LOCK_EX)
    (path / "memory.sqlite").write_bytes(b"")
    opened = {}
    t = threading.Thread(target=lambda: opened.setdefault("store", MemoryStore(path, HashingEmbedder(64))))
    t.start()
    time.sleep(0.3)
    assert t.is_alive() and not opened  # waiting for the creator
    con = sqlite3.connect(path / "memory.sqlite")
    con.execute("PRAGMA journal_mode=WAL")  # the creator writes the header, then lets go
    con.close()
    os.close(creator)
    t.join(10)
    s = opened["store"]
    assert s.add("u", "Ann likes tea").id == 1 and s.count() == 1
    s.close()
