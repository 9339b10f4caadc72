"""Memory benchmarks: store overhead, search latency, LoCoMo ingest, and recall@k variants.

    python -m benchmarks.memory                 # timings + recall table (about 5 minutes, 2 cores)
    python -m benchmarks.memory --skip-recall   # timings only
    python -m benchmarks.memory --json benchmarks/results/memory.json

Timings (not tests): store write overhead per record excluding embedding (pre-computed
vectors), search p50 at 10,000 memories of one user (384-d, HNSW), ingest of one LoCoMo
conversation from the dataset's observations with the rule manager (MiniLM embeddings
included). Recall: utterances vs dataset observations vs evolved observations on the LoCoMo
dev file, for each retrieval variant.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo" / "locomo_dev.json"


def _p50(xs):
    return float(np.percentile(np.asarray(xs) * 1e3, 50))


def bench_store(n: int = 10_000, dim: int = 384, queries: int = 500) -> dict:
    from tsubasa_fast.memory import HashingEmbedder, MemoryStore

    rng = np.random.default_rng(0)
    # Sentence embeddings have a low intrinsic dimension; isotropic random vectors are a
    # pathological case for any graph index (HNSW recall@10 about 0.4 at ef 64 there).
    basis = rng.standard_normal((32, dim))
    vecs = (rng.standard_normal((n, 32)) @ basis + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory() as d:
        store = MemoryStore(d, HashingEmbedder(dim), hnsw_threshold=4096)
        writes = []
        for i in range(n):
            t = time.perf_counter()
            store.add("u", f"memory number {i}", embedding=vecs[i], source={"dia_ids": [f"D1:{i}"]},
                      op_key=f"bench:{i}")
            writes.append(time.perf_counter() - t)
        store.flush()
        q = (rng.standard_normal((queries, 32)) @ basis + 0.3 * rng.standard_normal((queries, dim))).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        store.search_ids("u", q[0], 3)  # load the index
        ids_t, full_t = [], []
        for v in q:
            t = time.perf_counter()
            store.search_ids("u", v, 3)
            ids_t.append(time.perf_counter() - t)
        for v in q:
            t = time.perf_counter()
            store.search("u", v, 3)
            full_t.append(time.perf_counter() - t)
        # recall of HNSW against exact
        idx = store._indexes["u"]
        agree = sum(len(set(store.search_ids("u", v, 10)[0].tolist()) & set(idx.exact(v, 10)[0].tolist()))
                    for v in q[:100]) / 1000
        store.close()
        t = time.perf_counter()
        reopened = MemoryStore(d, HashingEmbedder(dim), hnsw_threshold=4096)
        reopen_s = time.perf_counter() - t
        stats = dict(reopened.index_stats)
        reopened.close()
    return {"memories": n, "dim": dim, "write_p50_ms": _p50(writes), "write_p99_ms": float(
        np.percentile(np.asarray(writes) * 1e3, 99)), "search_ids_p50_ms": _p50(ids_t),
        "search_records_p50_ms": _p50(full_t), "hnsw_recall@10_vs_exact": agree,
        "reopen_s": reopen_s, "reopen_index_stats": stats}


def bench_ingest(locomo: Path) -> dict:
    from tsubasa_fast.memory import MemoryStore, MiniLMEmbedder
    from tsubasa_fast.memory.evolution import RuleManager
    from tsubasa_fast.memory.ingest import ingest_conversation
    from tsubasa_fast.memory.locomo import load_locomo

    conv = load_locomo(locomo)[0]
    emb = MiniLMEmbedder()
    emb.embed(["warm up"])
    with tempfile.TemporaryDirectory() as d:
        store = MemoryStore(d, emb)
        m = RuleManager()
        t = time.perf_counter()
        st = ingest_conversation(store, conv, "observations", m, date_prefix=False)
        secs = time.perf_counter() - t
        store.close()
    return {"conversation": conv.sample_id, "observations": st.observations, "ops": st.ops, "seconds": secs}


VARIANTS = [("dense", 1.0, 0.0), ("hybrid", 0.5, 0.0), ("hybrid", 0.5, 0.1), ("hybrid", 0.7, 0.1),
            ("date", 0.5, 0.1)]  # the last is the default of `eval retrieval`
STORES = [("utterances", "utterances", "static", True), ("observations", "observations", "static", False),
          ("evolved (rule)", "observations", "rule", False)]


def bench_recall(locomo: Path) -> list[dict]:
    from tsubasa_fast.memory import MemoryStore, MiniLMEmbedder
    from tsubasa_fast.memory.evolution import make_manager
    from tsubasa_fast.memory.ingest import ingest_conversation
    from tsubasa_fast.memory.locomo import evaluate_retrieval, load_locomo
    from tsubasa_fast.memory.retrieval import Retriever, conversation_merge

    convs = load_locomo(locomo)
    emb = MiniLMEmbedder()
    rows = []
    for label, source, manager, prefix in STORES:
        with tempfile.TemporaryDirectory() as d:
            store = MemoryStore(d, emb)
            m = make_manager(manager)
            for c in convs:
                ingest_conversation(store, c, source, m, date_prefix=prefix)
            for mode, alpha, boost in VARIANTS:
                r = evaluate_retrieval(convs, Retriever(store, mode, alpha=alpha),
                                       merge=conversation_merge(boost))
                rows.append({"memories": label, "live": store.count(), "retrieval": mode, "alpha": alpha,
                             "speaker_boost": boost, **{k: round(v, 3) for k, v in r["overall"].items()},
                             "tokens@3": round(r["mean_retrieved_tokens"]["3"], 1)})
                print(json.dumps(rows[-1]), flush=True)
            store.close()
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--locomo", type=Path, default=DEV, help="LoCoMo file (default: the shared dev file)")
    p.add_argument("--skip-recall", action="store_true", help="timings only")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    args = p.parse_args(argv)
    out = {"store": bench_store()}
    print(json.dumps(out["store"]), flush=True)
    if args.locomo.is_file():
        out["ingest"] = bench_ingest(args.locomo)
        print(json.dumps(out["ingest"]), flush=True)
        if not args.skip_recall:
            out["recall"] = bench_recall(args.locomo)
    else:
        print(f"no LoCoMo file at {args.locomo}; skipping ingest and recall")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
