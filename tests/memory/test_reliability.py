"""Reliability: kill -9 during ingest, two writer processes, replay idempotence, malformed input."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tsubasa_fast.memory import HashingEmbedder, MemoryStore
from tsubasa_fast.memory.evolution import make_manager
from tsubasa_fast.memory.ingest import ingest_conversation
from tsubasa_fast.memory.locomo import LocomoFormatError, load_locomo

from .conftest import tiny_locomo

ROOT = Path(__file__).resolve().parents[2]

CHILD_INGEST = textwrap.dedent("""
    import json, sys
    from tsubasa_fast.memory import HashingEmbedder, MemoryStore
    from tsubasa_fast.memory import store as store_mod
    from tsubasa_fast.memory.evolution import make_manager
    from tsubasa_fast.memory.ingest import ingest_conversation
    from tsubasa_fast.memory.locomo import load_locomo

    store = MemoryStore(sys.argv[1], HashingEmbedder(64), hnsw_threshold=100)
    orig_add = store.add
    def acking_add(*a, **kw):
        rec = orig_add(*a, **kw)      # returns only after the SQLite commit
        print("ACK", kw["op_key"], rec.id, flush=True)
        return rec
    store.add = acking_add
    for conv in load_locomo(sys.argv[2]):
        ingest_conversation(store, conv, "utterances", make_manager("static"))
    print("DONE", flush=True)
""")


def test_kill9_during_ingest_loses_no_acknowledged_write(tmp_path):
    data = tmp_path / "big.json"
    data.write_text(json.dumps(tiny_locomo(n_sessions=40, turns=30)))  # 1200 utterances
    path = tmp_path / "store"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", CHILD_INGEST, str(path), str(data)],
                            stdout=subprocess.PIPE, text=True, env=env)
    acked = {}
    for line in proc.stdout:
        if line.startswith("ACK"):
            _, key, rid = line.split()
            acked[key] = int(rid)
        if len(acked) >= 400:  # past the HNSW threshold, mid-ingest
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    store = MemoryStore(path, HashingEmbedder(64), hnsw_threshold=100)
    for key, rid in acked.items():
        assert store.op_result(key) == ("ADD", rid)
        assert store.get(rid).status == "live"
    users = store.users()
    total = sum(store.count(u) for u in users)
    assert total >= len(acked)
    for u in users:
        store.check_consistency(u)  # index agrees with SQLite
    # resume: finishes the conversation without duplicating anything
    conv = load_locomo(data)[0]
    stats = ingest_conversation(store, conv, "utterances", make_manager("static"))
    assert stats.replayed >= len(acked)
    texts = [r.text for u in users for r in store.all(u)]
    assert len(texts) == len(set(texts)) == 1200
    keys = [e["op_key"] for e in store.events() if e["op_key"]]
    assert len(keys) == len(set(keys)) == 1200
    for u in users:
        store.check_consistency(u)
    store.close()


CHILD_WRITER = textwrap.dedent("""
    import sys
    from tsubasa_fast.memory import HashingEmbedder, MemoryStore
    store = MemoryStore(sys.argv[1], HashingEmbedder(64), hnsw_threshold=50)
    tag = sys.argv[2]
    for i in range(150):
        store.add("shared", f"writer {tag} memory {i}", op_key=f"{tag}:{i}")
        if i % 10 == 0:
            store.search("shared", f"memory {i}", k=3)
    store.close()
    print("OK")
""")


def test_two_processes_write_one_store(tmp_path):
    path = tmp_path / "store"
    MemoryStore(path, HashingEmbedder(64), hnsw_threshold=50).close()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", CHILD_WRITER, str(path), tag],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for tag in ("a", "b")]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.strip() == "OK"
    store = MemoryStore(path, HashingEmbedder(64), hnsw_threshold=50)
    assert store.count("shared") == 300
    assert len({r.text for r in store.all("shared")}) == 300
    store.check_consistency("shared")
    assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert len(store.search("shared", "writer b memory 7", k=10)) == 10
    store.close()


def test_lock_timeout_is_a_clear_error(tmp_path):
    from tsubasa_fast.memory import StoreLockedError

    path = tmp_path / "store"
    a = MemoryStore(path, HashingEmbedder(64))
    b = MemoryStore(path, HashingEmbedder(64), lock_timeout=0.2)
    a._db.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        with pytest.raises(StoreLockedError, match="locked by another writer"):
            b.add("u", "blocked")
    finally:
        a._db.execute("ROLLBACK")
    assert b.add("u", "now it works").id == 1
    a.close(); b.close()


@pytest.mark.parametrize("source,manager", [("utterances", "static"), ("observations", "rule"),
                                            ("observations", "static")])
def test_replay_adds_nothing(tmp_path, locomo_file, source, manager):
    store = MemoryStore(tmp_path / "s", HashingEmbedder(64))
    conv = load_locomo(locomo_file)[0]
    first = ingest_conversation(store, conv, source, make_manager(manager))
    n_records = store.count(live_only=False)
    n_events = len(store.events())
    second = ingest_conversation(store, conv, source, make_manager(manager))
    assert first.applied > 0 and second.applied == 0 and second.replayed == first.observations
    assert store.count(live_only=False) == n_records and len(store.events()) == n_events
    store.close()


def _mutate(tmp_path, fn):
    data = tiny_locomo()
    fn(data[0])
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(data))
    return p


@pytest.mark.parametrize("mutate,field", [
    (lambda c: c["conversation"].pop("speaker_b"), r"conversation\[0\] \(conv-t\)\.conversation\.speaker_b: missing"),
    (lambda c: c["conversation"]["session_2"][1].update(dia_id=7), r"session_2\[1\]\.dia_id: expected str"),
    (lambda c: c["conversation"].update(session_1_date_time="yesterday"), r"session_1_date_time: expected a date"),
    (lambda c: c["conversation"]["session_1"][0].update(speaker="Zed"), r"session_1\[0\]\.speaker: 'Zed'"),
    (lambda c: c["qa"][0].update(category=9), r"qa\[0\]\.category: expected 1-5"),
    (lambda c: c["qa"][1].pop("answer"), r"qa\[1\]\.answer: missing"),
    (lambda c: c["qa"][0].update(evidence="D1:1"), r"qa\[0\]\.evidence: expected a list"),
    (lambda c: c["observation"]["session_1_observation"]["Ann"].append(["only text"]),
     r"observation\.session_1_observation\.Ann\[1\]: expected \[text, dia_id\]"),
    (lambda c: c.pop("sample_id"), r"conversation\[0\]\.sample_id: missing"),
])
def test_malformed_locomo_names_the_field(tmp_path, mutate, field):
    with pytest.raises(LocomoFormatError, match=field):
        load_locomo(_mutate(tmp_path, mutate))


def test_malformed_locomo_json_and_shape(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(LocomoFormatError, match="not valid JSON"):
        load_locomo(p)
    p.write_text('{"a": 1}')
    with pytest.raises(LocomoFormatError, match="top level must be a list"):
        load_locomo(p)
    with pytest.raises(LocomoFormatError, match="^locomo: no such file") as e:  # the library names no flag
        load_locomo(tmp_path / "missing.json")
    assert e.value.field == "locomo" and "--" not in str(e.value)
