"""HNSW breadth set from k and the index size; argument guards that used to guess
(issue 9, section 3 item 7)."""

import math

import numpy as np
import pytest

from tsubasa_fast.memory import HashingEmbedder, MemoryStore
from tsubasa_fast.memory.store import OpKeyConflictError, hnsw_ef


def _structured(rng, n, dim=64, latent=32):
    """Vectors with a low intrinsic dimension, like sentence embeddings."""
    basis = rng.standard_normal((latent, dim))
    v = rng.standard_normal((n, latent)) @ basis + 0.3 * rng.standard_normal((n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_hnsw_ef_rule():
    assert hnsw_ef(10, 20_000, 64) == math.ceil(1.5 * 10 * math.log2(20_000)) == 215
    assert hnsw_ef(3, 10_000, 64) == 64  # never below the configured floor
    assert hnsw_ef(50, 30, 64) == 50  # never above the index size (but at least k)


def test_hnsw_recall_against_exact_float64(tmp_path):
    rng = np.random.default_rng(0)
    n, dim = 5000, 64
    vecs = _structured(rng, n, dim)
    s = MemoryStore(tmp_path / "s", HashingEmbedder(dim), hnsw_threshold=1000)
    with s.db.write() as db:  # bulk load through the store's own row writer (fast)
        for i, v in enumerate(vecs):
            s.db.insert_record(db, user_id="u", text=f"m{i}", observed_at=None, created_at="2023-01-01T00:00:00",
                               version=1, supersedes=None, root_id=None, source={}, decision_source="user",
                               embedding=v.tobytes(), chg=i + 1)
    queries = _structured(np.random.default_rng(0), 5000 + 100, dim)[5000:]  # same basis, new points
    assert s._indexes == {}
    s.search_ids("u", queries[0], 1)
    assert s._indexes["u"].hnsw is not None
    ref = vecs.astype(np.float64)
    for k in (10, 50):
        agree = 0
        for q in queries:
            got, _ = s.search_ids("u", q, k)
            exact = np.argsort(-(ref @ q.astype(np.float64)), kind="stable")[:k] + 1  # ids are 1-based
            agree += len(set(got.tolist()) & set(exact.tolist()))
        assert agree / (k * len(queries)) >= 0.99, (k, agree / (k * len(queries)))
    s.close()


def test_search_needs_a_query(store):
    store.add("u", "Ann likes tea")
    for bad in (None, 3, ["tea"]):
        with pytest.raises(ValueError, match="query: must be a non-empty string or an embedding"):
            store.search("u", bad)
    with pytest.raises(ValueError, match="query: must be a non-empty string"):
        store.search("u", "  ")


def test_record_ids_must_be_integers(store):
    rec = store.add("u", "Ann likes tea")
    assert store.get(np.int64(rec.id)).id == rec.id
    for bad in (1.7, 1.0, "1", True, None):
        with pytest.raises(ValueError, match="record_id: must be an integer"):
            store.get(bad)
        with pytest.raises(ValueError, match="record_id: must be an integer"):
            store.history(bad)
    with pytest.raises(ValueError, match="target_id: must be an integer"):
        store.rewrite(1.7, "Ann likes green tea")
    assert store.count("u", live_only=False) == 1


def test_reused_op_key_with_other_content_is_an_error(store):
    a = store.add("u", "Ann likes tea", op_key="k1")
    assert store.add("u", "Ann likes tea", op_key="k1").id == a.id  # a true replay
    with pytest.raises(OpKeyConflictError, match="op_key 'k1' was already used for ADD with text"):
        store.add("u", "Ann likes coffee", op_key="k1")
    with pytest.raises(OpKeyConflictError, match="of user 'u'"):
        store.add("v", "Ann likes tea", op_key="k1")
    b = store.rewrite(a.id, "Ann likes green tea", op="UPDATE", op_key="k2")
    assert store.rewrite(a.id, "Ann likes green tea", op="UPDATE", op_key="k2").id == b.id
    with pytest.raises(OpKeyConflictError, match="different text"):
        store.rewrite(a.id, "Ann likes black tea", op="UPDATE", op_key="k2")
    with pytest.raises(OpKeyConflictError, match="of record 1; refusing to reuse it for record 2"):
        store.rewrite(b.id, "Ann likes green tea", op="UPDATE", op_key="k2")
    with pytest.raises(OpKeyConflictError, match="refusing to reuse it for RECONCILE"):
        store.rewrite(a.id, "Ann likes green tea", op="RECONCILE", op_key="k2")
    with pytest.raises(OpKeyConflictError, match="refusing to reuse it for IGNORE"):
        store.log_decision("u", "IGNORE", op_key="k1")
    assert store.log_decision("u", "IGNORE", op_key="k3") is True
    with pytest.raises(OpKeyConflictError, match="refusing to reuse it for ADD"):
        store.add("u", "Ann likes tea", op_key="k3")
    assert [r.text for r in store.all("u")] == ["Ann likes green tea"]
    assert [e["op"] for e in store.events()] == ["ADD", "UPDATE", "IGNORE"]
