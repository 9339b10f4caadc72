"""MemoryStore: records, versions, search guarantees, index files, export/import, threads."""

import json
import threading

import numpy as np
import pytest

from tsubasa_fast.errors import InputError
from tsubasa_fast.memory import (EmbedderMismatchError, HashingEmbedder, MemoryStore, RecordNotFoundError,
                                 StaleTargetError)


def test_add_get_search_history(store):
    a = store.add("u1", "Ann adopted a dog named Rex", observed_at="2023-05-01",
                  source={"conversation": "c", "dia_ids": ["D1:1"]})
    store.add("u1", "Ann works as a nurse in Boston")
    store.add("u2", "Bob plays the guitar")
    assert store.get(a.id).text == "Ann adopted a dog named Rex"
    assert a.status == "live" and a.version == 1 and a.root_id == a.id
    hits = store.search("u1", "dog named Rex", k=1)
    assert [h.record.id for h in hits] == [a.id]
    # always min(k, live count), other users never leak in
    assert len(store.search("u1", "anything", k=10)) == 2
    assert store.search("nobody", "x", k=3) == []
    b = store.rewrite(a.id, "Ann adopted a dog named Rex; Rex is a beagle", op="UPDATE",
                      source={"dia_ids": ["D2:4"]}, decision_source="rule")
    assert b.version == 2 and b.supersedes == a.id and b.dia_ids == ["D1:1", "D2:4"]
    old = store.get(a.id)
    assert old.status == "superseded" and old.superseded_by == b.id  # still readable
    assert [r.id for r in store.history(a.id)] == [a.id, b.id] == [r.id for r in store.history(b.id)]
    ids = {h.record.id for h in store.search("u1", "dog Rex beagle", k=10)}
    assert a.id not in ids and b.id in ids
    with pytest.raises(StaleTargetError):
        store.rewrite(a.id, "x", op="RECONCILE")
    ops = [e["op"] for e in store.events("u1")]
    assert ops == ["ADD", "ADD", "UPDATE"]


def test_op_key_idempotent_and_ignore_logged(store):
    r1 = store.add("u", "fact one", op_key="k1")
    r2 = store.add("u", "fact one", op_key="k1")
    assert r1.id == r2.id and store.count("u") == 1
    assert store.log_decision("u", "IGNORE", op_key="k2") is True
    assert store.log_decision("u", "IGNORE", op_key="k2") is False
    assert store.op_result("k2") == ("IGNORE", None)


def test_bad_input_errors(store):
    """Each bad argument is an InputError naming it (the CLI shows the field as its flag)."""
    cases = [("text", lambda: store.add("u", "   ")), ("user_id", lambda: store.add("", "x")),
             ("k", lambda: store.search("u", "x", k=0)),
             ("source.dia_ids", lambda: store.add("u", "x", source={"dia_ids": "D1:1"})),
             ("decision_source", lambda: store.add("u", "x", decision_source="robot")),
             ("op", lambda: store.log_decision("u", "DELETE")),
             ("record_id", lambda: store.delete("1"))]
    for field, call in cases:
        with pytest.raises(InputError) as e:
            call()
        assert e.value.field == field and str(e.value).startswith(f"{field}: ")
        assert "--" not in str(e.value)
    with pytest.raises(RecordNotFoundError, match="no memory record with id 42"):
        store.get(42)
    assert store.count("u", live_only=False) == 0 and store.events() == []


def test_refuses_other_embedder(tmp_path):
    MemoryStore(tmp_path / "s", HashingEmbedder(64)).close()
    with pytest.raises(EmbedderMismatchError, match="hashing-v1-64"):
        MemoryStore(tmp_path / "s", HashingEmbedder(128))


def _fill(store, n, user="u"):
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n, store.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return [store.add(user, f"memory {i}", embedding=vecs[i]).id for i in range(n)], vecs


def test_hnsw_matches_exact_and_respects_supersede(tmp_path):
    s = MemoryStore(tmp_path / "s", HashingEmbedder(64), hnsw_threshold=100)
    ids, vecs = _fill(s, 400)
    s.search("u", vecs[0], k=1)
    assert s._indexes["u"].hnsw is not None
    # supersede a few: they must vanish from HNSW results
    for rid in ids[:20]:
        s.rewrite(rid, f"rewritten {rid}", op="UPDATE", embedding=vecs[ids.index(rid)])
    s.check_consistency("u")
    agree = 0
    for i in range(50):
        got = [h.record.id for h in s.search("u", vecs[i], k=5)]
        assert len(got) == 5 and all(s.get(g).status == "live" for g in got)
        exact_ids, _ = s._indexes["u"].exact(vecs[i], 5)
        agree += len(set(got) & set(exact_ids.tolist()))
    assert agree / 250 > 0.95
    s.close()


def test_index_file_corrupt_missing_stale_rebuilt(tmp_path):
    path = tmp_path / "s"
    s = MemoryStore(path, HashingEmbedder(64), hnsw_threshold=50)
    ids, vecs = _fill(s, 120)
    s.search("u", vecs[3], k=1)
    s.close()
    files = list((path / "index").glob("*.hnsw"))
    assert len(files) == 1 and not list((path / "index").glob(".*"))  # no temp files left
    s = MemoryStore(path, HashingEmbedder(64), hnsw_threshold=50)
    assert s.index_stats["loaded"] == 1 and s.index_stats["rebuilt"] == 0
    # stale: records written by another instance that never flushed its index
    s2 = MemoryStore(path, HashingEmbedder(64), hnsw_threshold=50)
    new = s2.add("u", "late memory", embedding=vecs[5]).id
    s2._db.close(); s2._closed = True  # simulate a crash: no flush
    assert new in [h.record.id for h in s.search("u", vecs[5], k=2)]
    s.close()
    s = MemoryStore(path, HashingEmbedder(64), hnsw_threshold=50)
    s.check_consistency("u")
    s.close()
    # corrupt the file: flip bytes in the middle
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64
    files[0].write_bytes(bytes(data))
    s = MemoryStore(path, HashingEmbedder(64), hnsw_threshold=50)
    assert s.index_stats["rebuilt"] == 1
    s.check_consistency("u")
    assert s.search("u", vecs[7], k=1)[0].record.id == ids[7]
    s.close()
    files[0].unlink()
    s = MemoryStore(path, HashingEmbedder(64), hnsw_threshold=50)
    assert s.index_stats["built"] == 1
    s.check_consistency("u")
    s.close()


def test_threads_write_and_search(tmp_path):
    s = MemoryStore(tmp_path / "s", HashingEmbedder(64), hnsw_threshold=64)
    errors = []

    def writer(t):
        try:
            for i in range(60):
                s.add("u", f"thread {t} item {i} about topic {i % 7}")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def reader():
        try:
            for i in range(100):
                hits = s.search("u", f"topic {i % 7}", k=5)
                assert len(hits) == min(5, len(hits)) and all(h.record.status == "live" for h in hits)
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(3)] + \
              [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert s.count("u") == 180
    s.check_consistency("u")
    assert len(s.search("u", "topic 3", k=10)) == 10
    s.close()


def test_export_import_roundtrip(tmp_path, store):
    a = store.add("u", "Ann lives in Boston", observed_at="2023-01-01", source={"dia_ids": ["D1:1"]})
    store.rewrite(a.id, "On 1 Jan 2023 Ann lived in Boston. On 1 May 2023 Ann moved to Denver.",
                  op="RECONCILE", source={"dia_ids": ["D5:2"]})
    store.add("v", "Bob likes tea")
    out = tmp_path / "export.jsonl"
    assert store.export_jsonl(out) == 3
    assert all(json.loads(line)["store_id"] == store.store_id for line in out.read_text().splitlines())
    other = MemoryStore(tmp_path / "other", store.embedder)
    assert other.import_jsonl(out) == 3
    assert other.import_jsonl(out) == 0  # idempotent
    assert other.count("u") == 1 and other.count("u", live_only=False) == 2
    live = other.all("u")[0]
    assert "Denver" in live.text and len(other.history(live.id)) == 2 and live.dia_ids == ["D1:1", "D5:2"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "user_id": "u"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: missing field 'text'"):
        other.import_jsonl(bad)
    other.close()
