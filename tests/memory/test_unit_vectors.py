"""Unit vectors stored at write time (schema 3): a fresh process's first search embeds only the
query, the stored vectors are the observations' embeddings, older stores migrate, and a kill -9
never leaves a version without its observation's vector."""

import json
import sqlite3
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tsubasa_fast.memory import HashingEmbedder, MemoryStore
from tsubasa_fast.memory.evolution import Decision, Observation, apply_decision
from tsubasa_fast.memory.retrieval import Retriever, memory_units, unit_vectors

from ..helpers import kill9_after_acks
from ..helpers import raw_sql as _raw

OBS = ["Ann got a guitar.", "Ann took guitar lessons in Leeds.", "Ann plays the guitar in a band."]
MERGED = ["Ann got a guitar (8 May 2023); Ann took guitar lessons in Leeds (8 June 2023).",
          "Ann got a guitar (8 May 2023); Ann took guitar lessons in Leeds (8 June 2023); "
          "Ann plays the guitar in a band (8 July 2023)."]


class Counting:
    """An embedder that counts the texts it is given (wraps the hashing embedder)."""

    def __init__(self, dim: int = 64):
        self.inner = HashingEmbedder(dim)
        self.name, self.dim, self.texts = self.inner.name, dim, []

    def embed(self, texts):
        self.texts.extend(texts)
        return self.inner.embed(texts)


def _evolve(store) -> int:
    """Ann's three observations through the pipeline's write path: one ADD, two UPDATEs
    (vectors computed in one batch, as ingest does); Bob's single fact. Returns the live id."""
    vecs = store.embedder.embed(OBS)
    obs = [Observation("c:Ann", t, f"2023-0{5 + i}-08", {"kind": "observations", "dia_ids": [f"D{i + 1}:1"]},
                       f"obs:{i}", vec=v) for i, (t, v) in enumerate(zip(OBS, vecs))]
    rec = apply_decision(store, obs[0], Decision("ADD", decision_source="rule"))
    for o, text in zip(obs[1:], MERGED):
        rec = apply_decision(store, o, Decision("UPDATE", rec.id, text, decision_source="rule"))
    store.add("c:Bob", "Bob has a dog.", observed_at="2023-05-08")
    return rec.id




def test_a_fresh_process_first_search_embeds_only_the_query(tmp_path):
    path = tmp_path / "s"
    with MemoryStore(path, HashingEmbedder(64)) as s:
        live = _evolve(s)
    emb = Counting()
    with MemoryStore(path, emb) as s:  # a new process: nothing cached in memory
        assert len(memory_units(s, "c:Ann", s.all("c:Ann"))[live]) == 3
        for _ in range(2):
            hits = Retriever(s).search_users(["c:Ann", "c:Bob"], "Where did Ann take guitar lessons?", 2)
            assert hits[0].text == MERGED[1]
        assert emb.texts == ["Where did Ann take guitar lessons?"] * 2  # the query, never the units
        # the same scores as a pool whose units are embedded afresh (the pre-schema-3 code path)
        s.db.conn.execute("DELETE FROM observation_vectors")
        fresh = Retriever(s).search_users(["c:Ann", "c:Bob"], "Where did Ann take guitar lessons?", 2)
        assert [h.score for h in fresh] == pytest.approx([h.score for h in hits], abs=1e-6)
        assert emb.texts[2:] == [OBS[1], OBS[2], "Where did Ann take guitar lessons?"]


def test_stored_unit_vectors_are_fresh_embeddings_of_the_observations(tmp_path):
    path = tmp_path / "s"
    with MemoryStore(path, HashingEmbedder(64)) as s:
        live = _evolve(s)
        chain = [r.id for r in s.history(live)]
        units = [(u[0], vid) for u, vid in zip(memory_units(s, "c:Ann", s.all("c:Ann"))[live], chain)]
        got = unit_vectors(s, units)
    # read with plain sqlite3: version 1 (an ADD of the observation itself) stores none, the two
    # UPDATEs the vectors of the observations they absorbed, not of their merged texts
    rows = _raw(path, "SELECT record_id, embedding FROM observation_vectors ORDER BY record_id")
    assert [r for r, _ in rows] == chain[1:]
    fresh = HashingEmbedder(64).embed(OBS)  # an independent embedder instance, one batch
    stored = np.stack([np.frombuffer(b, dtype=np.float32) for _, b in rows])
    np.testing.assert_allclose(stored, fresh[1:], atol=1e-6)
    np.testing.assert_allclose(got, fresh.astype(np.float64), atol=1e-6)
    assert not np.allclose(stored[0], HashingEmbedder(64).embed([MERGED[0]])[0], atol=1e-3)


def test_rewrite_embeds_an_observation_it_is_not_given_and_checks_one_it_is(store):
    a = store.add("u", "Ann has a cat.")
    b = store.rewrite(a.id, "Ann has two cats.", payload={"observation": "Ann got a second cat."})
    row = store.db.conn.execute("SELECT embedding FROM observation_vectors WHERE record_id=?", (b.id,)).fetchone()
    np.testing.assert_allclose(np.frombuffer(row[0], np.float32), HashingEmbedder(64).embed(["Ann got a second cat."])[0],
                               atol=1e-6)
    c = store.rewrite(b.id, "Ann has two cats.", payload={"observation": "Ann has two cats."})  # same text: none
    assert store.db.conn.execute("SELECT COUNT(*) FROM observation_vectors WHERE record_id=?", (c.id,)).fetchone() == (0,)
    from tsubasa_fast.errors import InputError
    with pytest.raises(InputError, match=r"shape \(64,\)"):
        store.rewrite(c.id, "Ann has three cats.", payload={"observation": "Ann got a cat."},
                      observation_embedding=np.zeros(3))
    assert store.get(c.id).status == "live"  # refused before anything was written


def test_export_import_stores_the_unit_vectors(tmp_path):
    src = MemoryStore(tmp_path / "a", HashingEmbedder(64))
    live = _evolve(src)
    src.export_jsonl(tmp_path / "e.jsonl")
    src.close()
    emb = Counting()
    with MemoryStore(tmp_path / "b", emb) as dst:
        dst.import_file(tmp_path / "e.jsonl")
        n = len(emb.texts)
        assert n == 4 + 2  # the four records' texts and the two absorbed observations, one batch
        r = Retriever(dst).search_users(["c:Ann", "c:Bob"], "guitar band", 1)
        assert r[0].text == MERGED[1] and len(emb.texts) == n + 1
        assert len(memory_units(dst, "c:Ann", dst.all("c:Ann"))) == 1 and live


def _make_v2(path: Path) -> None:
    """A schema-2 store: the schema-3 store minus observation_vectors (what 2 -> 3 adds)."""
    with MemoryStore(path, HashingEmbedder(64)) as s:
        _evolve(s)
    db = sqlite3.connect(path / "memory.sqlite")
    db.execute("DROP TABLE observation_vectors")
    db.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
    db.commit()
    db.close()


def test_schema_2_store_migrates_and_embeds_the_units_it_lacks(tmp_path):
    path = tmp_path / "v2"
    _make_v2(path)
    emb = Counting()
    with MemoryStore(path, emb) as s:
        assert _raw(path, "SELECT value FROM meta WHERE key='schema_version'") == [("3",)]
        assert _raw(path, "SELECT COUNT(*) FROM observation_vectors") == [(0,)]
        hits = Retriever(s).search_users(["c:Ann", "c:Bob"], "guitar lessons", 1)
        assert hits[0].text == MERGED[1]
        assert emb.texts == [OBS[1], OBS[2], "guitar lessons"]  # old versions: embedded, as before
        ann = s.add("c:Ann", "Ann has a bike.", observed_at="2023-09-01")
        s.rewrite(ann.id, "Ann has a red bike.", payload={"observation": "Ann painted her bike red."})
    assert _raw(path, "SELECT COUNT(*) FROM observation_vectors") == [(1,)]


CHILD = textwrap.dedent("""
    import sys
    from tsubasa_fast.memory import HashingEmbedder, MemoryStore
    s = MemoryStore(sys.argv[1], HashingEmbedder(64))
    rec = s.add("u", "fact 0", op_key="a")
    for i in range(1, 5000):
        rec = s.rewrite(rec.id, f"fact 0 .. {i}", payload={"observation": f"fact {i}"}, op_key=f"r{i}")
        print("ACK", rec.id, i, flush=True)   # after the commit
""")


def test_kill9_during_rewrites_leaves_every_acknowledged_vector(tmp_path):
    path = tmp_path / "s"
    acked = [tuple(int(x) for x in f) for f in kill9_after_acks(CHILD, [path], 300)]
    with MemoryStore(path, HashingEmbedder(64)) as s:
        vecs = dict(_raw(path, "SELECT record_id, embedding FROM observation_vectors"))
        versions = {r.id: r for r in s.all("u", include_superseded=True)}
        assert set(vecs) == set(versions) - {1}  # every rewrite that committed has its vector, no orphan
        for rid, i in acked:
            np.testing.assert_allclose(np.frombuffer(vecs[rid], np.float32),
                                       HashingEmbedder(64).embed([f"fact {i}"])[0], atol=1e-6)
        assert json.loads(json.dumps(_raw(path, "PRAGMA foreign_key_check"))) == []
