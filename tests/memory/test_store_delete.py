"""Soft delete (status 'deleted') and the migration of schema-1 store files (1 -> 2 -> 3).

``data/store_v1`` is a store written by the schema-1 code (commit 476a248, the last before
'deleted' existed) with HashingEmbedder(64) and hnsw_threshold=3::

    a = s.add("ann", "Ann adopted a dog named Rex.", observed_at="2023-05-08", source={"dia_ids": ["D1:1"]})
    b = s.add("ann", "Ann works as a nurse in Boston.", observed_at="2023-05-08")
    s.add("ann", "Ann plays tennis on Sundays.", observed_at="2023-06-01")
    s.rewrite(b.id, "Ann works as a nurse in Leeds since June 2023; before that in Boston.",
              op="RECONCILE", observed_at="2023-06-01")
    s.log_decision("ann", "IGNORE", target_id=a.id, payload={"observation": "Ann has a dog."})
    s.add("bob", "Bob plays the guitar.")
    s.put_raw_session("raw:1", "ann", {...}); s.search("ann", "dog", k=1)   # writes ann's HNSW file

so records 1..5 (2 superseded by 4), events 1..6, and an index file for ann at chg 4.
"""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tsubasa_fast.errors import InputError
from tsubasa_fast.memory import HashingEmbedder, MemoryStore, StaleTargetError
from tsubasa_fast.memory import store_db
from tsubasa_fast.memory.store import OpKeyConflictError, StoreVersionError
from tsubasa_fast.memory.store_transfer import ImportFormatError

from ..helpers import kill9_after_acks
from ..helpers import raw_sql as _raw

ROOT = Path(__file__).resolve().parents[2]
V1 = Path(__file__).parent / "data" / "store_v1"
V1_RECORDS = [  # (id, user, text, version, status, supersedes, superseded_by, root, chg), read off the fixture
    (1, "ann", "Ann adopted a dog named Rex.", 1, "live", None, None, 1, 1),
    (2, "ann", "Ann works as a nurse in Boston.", 1, "superseded", None, 4, 2, 4),
    (3, "ann", "Ann plays tennis on Sundays.", 1, "live", None, None, 3, 3),
    (4, "ann", "Ann works as a nurse in Leeds since June 2023; before that in Boston.", 2, "live", 2, None, 2, 4),
    (5, "bob", "Bob plays the guitar.", 1, "live", None, None, 5, 6),
]




def _records_sql(path: Path) -> str:
    return _raw(path, "SELECT sql FROM sqlite_master WHERE name='records'")[0][0]


def _v1_copy(tmp_path) -> Path:
    path = tmp_path / "v1"
    shutil.copytree(V1, path)
    return path


# ---------------------------------------------------------------- soft delete
def test_delete_is_soft_and_leaves_every_search(store):
    a = store.add("u", "Ann adopted a dog named Rex", observed_at="2023-05-08")
    b = store.add("u", "Ann works as a nurse")
    c = store.add("u", "Ann plays tennis")
    b2 = store.rewrite(b.id, "Ann works as a nurse in Leeds", op="UPDATE")
    gone = store.delete(b2.id, payload={"why": "test"})
    assert gone.id == b2.id and gone.status == "deleted" and gone.superseded_by is None
    assert store.get(b2.id).text == "Ann works as a nurse in Leeds"  # still readable
    assert [r.id for r in store.all("u")] == [a.id, c.id]
    assert store.count("u") == 2 and store.count("u", live_only=False) == 4
    assert {h.record.id for h in store.search("u", "nurse Leeds", k=10)} == {a.id, c.id}
    assert [(r.id, r.status) for r in store.history(b.id)] == [(b.id, "superseded"), (b2.id, "deleted")]
    ev = store.events("u")[-1]
    assert (ev["op"], ev["record_id"], ev["target_id"]) == ("DELETE", b2.id, b2.id)
    assert ev["payload"] == {"why": "test", "text": "Ann works as a nurse in Leeds"}
    store.check_consistency("u")
    for call in (lambda: store.delete(b2.id), lambda: store.delete(b.id),
                 lambda: store.rewrite(b2.id, "Ann is a doctor", op="UPDATE")):
        with pytest.raises(StaleTargetError):
            call()
    assert len(store.events("u")) == 5  # the refused calls wrote nothing


def test_delete_is_idempotent_with_op_key(store):
    a = store.add("u", "fact one")
    b = store.add("u", "fact two")
    assert store.delete(a.id, op_key="d1").status == "deleted"
    assert store.delete(a.id, op_key="d1").id == a.id  # replay: no error, no second event
    assert [e["op"] for e in store.events()] == ["ADD", "ADD", "DELETE"]
    with pytest.raises(OpKeyConflictError, match="for DELETE of record 1; refusing to reuse it for record 2"):
        store.delete(b.id, op_key="d1")
    with pytest.raises(InputError) as e:
        store.delete(True)
    assert e.value.field == "record_id"


def test_delete_with_hnsw_survives_reopen(tmp_path):
    path = tmp_path / "s"
    s = MemoryStore(path, HashingEmbedder(64), hnsw_threshold=4)
    ids = [s.add("u", f"memory number {i} about topic {i % 3}").id for i in range(6)]
    s.search("u", "topic", k=2)  # builds HNSW
    s.delete(ids[2])
    assert ids[2] not in {h.record.id for h in s.search("u", "memory number 2 about topic 2", k=6)}
    s.check_consistency("u")
    s.close()
    s = MemoryStore(path, HashingEmbedder(64), hnsw_threshold=4)
    hits = s.search("u", "memory number 2 about topic 2", k=6)
    assert len(hits) == 5 and ids[2] not in {h.record.id for h in hits}
    s.check_consistency("u")
    s.close()


def test_deleted_records_export_and_import(store, tmp_path):
    a = store.add("u", "Ann adopted a dog named Rex", observed_at="2023-05-08")
    b = store.add("u", "Ann works as a nurse")
    store.delete(a.id)
    out = tmp_path / "e.jsonl"
    assert store.export_jsonl(out) == 2
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(x["kind"], x["status"], x.get("op")) for x in lines] == [
        ("record", "deleted", "ADD"), ("record", "live", "ADD"), ("event", "event", "DELETE")]
    other = MemoryStore(tmp_path / "other", HashingEmbedder(64))
    res = other.import_file(out)
    assert (res.records, res.events) == (2, 1)
    got = other.all("u", include_superseded=True)
    assert [(r.text, r.status) for r in got] == [("Ann adopted a dog named Rex", "deleted"),
                                                 ("Ann works as a nurse", "live")]
    assert [h.record.text for h in other.search("u", "dog Rex", k=5)] == ["Ann works as a nurse"]
    res = other.import_file(out)  # idempotent
    assert (res.records, res.events, res.records_present, res.events_present) == (0, 0, 2, 1)
    other.check_consistency("u")
    other.close()
    # a 'deleted' line needs its DELETE event, and a DELETE event a 'deleted' line
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(x) for x in lines[:2]) + "\n")
    with pytest.raises(ImportFormatError, match=r"bad.jsonl:1: field 'status': 'deleted', but no DELETE"):
        MemoryStore(tmp_path / "o2", HashingEmbedder(64)).import_file(bad)
    bad.write_text("\n".join(json.dumps(dict(x, status="live") if i == 0 else x) for i, x in enumerate(lines)))
    with pytest.raises(ImportFormatError, match=r"bad.jsonl:3: field 'record_id': record 1 is deleted here"):
        MemoryStore(tmp_path / "o3", HashingEmbedder(64)).import_file(bad)
    assert b.status == "live"


# ------------------------------------------------------------------ migration
def test_schema_1_store_opens_and_migrates(tmp_path):
    path = _v1_copy(tmp_path)
    assert "'deleted'" not in _records_sql(path)
    assert _raw(path, "SELECT value FROM meta WHERE key='schema_version'") == [("1",)]
    s = MemoryStore(path, HashingEmbedder(64), hnsw_threshold=3)
    cols = "id, user_id, text, version, status, supersedes, superseded_by, root_id, chg"
    assert _raw(path, f"SELECT {cols} FROM records ORDER BY id") == V1_RECORDS
    assert _raw(path, "SELECT value FROM meta WHERE key='schema_version'") == [("3",)]
    assert "'deleted'" in _records_sql(path)
    assert _raw(path, "SELECT COUNT(*) FROM observation_vectors") == [(0,)]  # schema 3's table, empty
    assert _raw(path, "PRAGMA foreign_key_check") == []
    assert sorted(n for (n,) in _raw(path, "SELECT name FROM sqlite_master WHERE type='index'"
                                           " AND tbl_name='records' AND sql IS NOT NULL")) == \
        ["records_root", "records_user_chg", "records_user_status"]
    assert [e["op"] for e in s.events()] == ["ADD", "ADD", "ADD", "RECONCILE", "IGNORE", "ADD"]
    assert s.index_stats["loaded"] == 1 and s.index_stats["rebuilt"] == 0  # ann's index file still trusted
    assert [r.id for r in s.history(4)] == [2, 4]
    assert s.add("bob", "Bob sold his guitar.").id == 6  # AUTOINCREMENT counter kept
    s.delete(1)
    assert {h.record.id for h in s.search("ann", "dog named Rex", k=5)} == {3, 4}
    s.check_consistency("ann")
    s.close()
    s = MemoryStore(path, HashingEmbedder(64), hnsw_threshold=3)  # reopening migrates nothing
    assert s.get(1).status == "deleted" and s.store_id == "74ac6016d73e484489998fcdb81da35f"
    s.close()


def test_failed_migration_leaves_schema_1_intact(tmp_path, monkeypatch):
    path = _v1_copy(tmp_path)
    before = _raw(path, "SELECT * FROM records ORDER BY id")
    monkeypatch.setattr(store_db, "_RECORD_INDEXES", store_db._RECORD_INDEXES + ["CREATE INDEX broken ON nowhere(x)"])
    with pytest.raises(sqlite3.OperationalError, match="nowhere"):
        MemoryStore(path, HashingEmbedder(64))
    assert _raw(path, "SELECT * FROM records ORDER BY id") == before
    assert _raw(path, "SELECT value FROM meta WHERE key='schema_version'") == [("1",)]
    assert "'deleted'" not in _records_sql(path)
    monkeypatch.undo()
    with MemoryStore(path, HashingEmbedder(64)) as s:
        assert s.count() == 4 and s.count(live_only=False) == 5


CHILD_MIGRATE = textwrap.dedent("""
    import sys, time
    from tsubasa_fast.memory import HashingEmbedder, MemoryStore, store_db

    class Slow(list):  # iterated inside the migration's transaction, after the table swap
        def __iter__(self):
            print("MIGRATING", flush=True)
            time.sleep(60)
            return super().__iter__()

    store_db._RECORD_INDEXES = Slow(store_db._RECORD_INDEXES)
    MemoryStore(sys.argv[1], HashingEmbedder(64))
""")


def test_kill9_during_migration_leaves_schema_1(tmp_path):
    path = _v1_copy(tmp_path)
    before = _raw(path, "SELECT * FROM records ORDER BY id")
    proc = subprocess.Popen([sys.executable, "-c", CHILD_MIGRATE, str(path)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout.readline().strip() == "MIGRATING"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _raw(path, "SELECT * FROM records ORDER BY id") == before
    assert _raw(path, "SELECT value FROM meta WHERE key='schema_version'") == [("1",)]
    with MemoryStore(path, HashingEmbedder(64), hnsw_threshold=3) as s:  # migrates now
        assert _raw(path, "SELECT value FROM meta WHERE key='schema_version'") == [("3",)]
        assert [r.text for r in s.all("ann")] == [V1_RECORDS[0][2], V1_RECORDS[2][2], V1_RECORDS[3][2]]


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "s"
    MemoryStore(path, HashingEmbedder(64)).close()
    db = sqlite3.connect(path / "memory.sqlite")
    db.execute("UPDATE meta SET value='4' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StoreVersionError, match="schema version 4, newer than this tsubasa_fast knows"):
        MemoryStore(path, HashingEmbedder(64))


CHILD_DELETE = textwrap.dedent("""
    import sys
    from tsubasa_fast.memory import HashingEmbedder, MemoryStore
    store = MemoryStore(sys.argv[1], HashingEmbedder(64), hnsw_threshold=50)
    ids = [store.add("u", f"memory {i} of the user", op_key=f"a{i}").id for i in range(2000)]
    store.search("u", "memory", k=3)
    for rid in ids:
        store.delete(rid, op_key=f"d{rid}")   # returns only after the SQLite commit
        print("ACK", rid, flush=True)
""")


def test_kill9_during_deletes_loses_no_acknowledged_delete(tmp_path):
    path = tmp_path / "store"
    acked = [int(f[0]) for f in kill9_after_acks(CHILD_DELETE, [path], 400)]
    assert len(acked) == 400
    s = MemoryStore(path, HashingEmbedder(64), hnsw_threshold=50)
    for rid in acked:
        assert s.get(rid).status == "deleted" and s.op_result(f"d{rid}") == ("DELETE", rid)
    deleted = {r.id for r in s.all("u", include_superseded=True) if r.status == "deleted"}
    assert set(acked) <= deleted and s.count("u") == 2000 - len(deleted)
    s.check_consistency("u")
    hits = {h.record.id for h in s.search("u", "memory of the user", k=2000)}
    assert hits.isdisjoint(deleted) and len(hits) == 2000 - len(deleted)
    for rid in range(1, 2001):  # resume: finishes the deletes, replays the acknowledged ones
        s.delete(rid, op_key=f"d{rid}")
    assert s.count("u") == 0 and sum(e["op"] == "DELETE" for e in s.events()) == 2000
    s.close()


def test_cli_shows_a_store_error_field_as_its_flag(tmp_path, capsys):
    """The store names its argument (embedder); the CLI shows it as --embedder."""
    from tsubasa_fast.cli import main

    path = tmp_path / "s"
    MemoryStore(path, HashingEmbedder(384)).close()  # hashing-v1-384, what --embedder hashing builds
    (tmp_path / "e.jsonl").write_text("")
    assert main(["memory", "import", "--store", str(path), "--embedder", "minilm", str(tmp_path / "e.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"tsubasa-fast: error: --embedder: minilm: store {path} was built with 'hashing-v1-384'"
