"""Memory benchmarks: store overhead, search latency, LoCoMo ingest, and recall@k variants.

    python -m benchmarks.memory                 # timings + recall table (about 5 minutes, 2 cores)
    python -m benchmarks.memory --skip-recall   # timings only
    python -m benchmarks.memory --json benchmarks/results/memory.json
    python -m benchmarks.memory --store-only 10000 20000   # store timings + HNSW recall only
    python -m benchmarks.memory --first-search STORE conv-26   # a fresh process's first search
    python -m benchmarks.memory --rerank-variants STORE        # reorderings of the default top 20
    python -m benchmarks.memory --llm-rerank STORE --every 6   # SmolLM2-135M rerank probe (slow)
    python -m benchmarks.memory --add-uncovered-turns STORE    # + raw turns no live memory cites

Timings (not tests): store write overhead per record excluding embedding (pre-computed
vectors), search p50 at 10,000 memories of one user (384-d, HNSW), ingest of one LoCoMo
conversation from the dataset's observations with the rule manager (MiniLM embeddings
included). Recall: utterances vs dataset observations vs evolved observations on the LoCoMo
dev file, for each retrieval variant.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo" / "locomo_dev.json"


def _p50(xs):
    return float(np.percentile(np.asarray(xs) * 1e3, 50))


def _structured(rng, basis, n, dim):
    v = (rng.standard_normal((n, basis.shape[0])) @ basis + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def bench_store(n: int = 10_000, dim: int = 384, queries: int = 500, seed: int = 0) -> dict:
    """Write overhead, search latency (k 3 and 10) and HNSW recall@10 against exact float64
    search, for ``n`` memories of one user (HNSW above 4,096)."""
    from tsubasa_fast.memory import HashingEmbedder, MemoryStore

    rng = np.random.default_rng(seed)
    # Sentence embeddings have a low intrinsic dimension; isotropic random vectors are a
    # pathological case for any graph index (HNSW recall@10 about 0.4 at ef 64 there).
    basis = rng.standard_normal((32, dim))
    vecs = _structured(rng, basis, n, dim)
    with tempfile.TemporaryDirectory() as d:
        store = MemoryStore(d, HashingEmbedder(dim), hnsw_threshold=4096)
        writes = []
        for i in range(n):
            t = time.perf_counter()
            store.add("u", f"memory number {i}", embedding=vecs[i], source={"dia_ids": [f"D1:{i}"]},
                      op_key=f"bench:{i}")
            writes.append(time.perf_counter() - t)
        store.flush()
        q = _structured(rng, basis, queries, dim)
        store.search_ids("u", q[0], 3)  # load the index
        lat = {}
        for k in (3, 10):
            ts = []
            for v in q:
                t = time.perf_counter()
                store.search_ids("u", v, k)
                ts.append(time.perf_counter() - t)
            lat[k] = _p50(ts)
        full_t = []
        for v in q:
            t = time.perf_counter()
            store.search("u", v, 3)
            full_t.append(time.perf_counter() - t)
        # recall of the store's HNSW search against exact float64 search (ids are 1..n in order),
        # with ef from k and n (now) and with the old fixed ef 64, side by side
        from tsubasa_fast.memory import store_index

        ref = vecs.astype(np.float64)
        exact = [np.argsort(-(ref @ v.astype(np.float64)), kind="stable")[:10] + 1 for v in q[:200]]
        assert store._indexes["u"].hnsw is not None
        rule = store_index.hnsw_ef
        recall, lat10 = {}, {}
        for name, ef_fn in (("fixed_ef64", lambda k, n, ef_min: max(ef_min, k)), ("ef_rule", rule)):
            store_index.hnsw_ef = ef_fn
            try:
                agree, ts = 0, []
                for v, ex in zip(q[:200], exact):
                    t = time.perf_counter()
                    got = store.search_ids("u", v, 10)[0]
                    ts.append(time.perf_counter() - t)
                    agree += len(set(got.tolist()) & set(ex.tolist()))
                recall[name], lat10[name] = agree / 2000, _p50(ts)
            finally:
                store_index.hnsw_ef = rule
        store.close()
        t = time.perf_counter()
        reopened = MemoryStore(d, HashingEmbedder(dim), hnsw_threshold=4096)
        reopen_s = time.perf_counter() - t
        stats = dict(reopened.index_stats)
        reopened.close()
    return {"memories": n, "dim": dim, "write_p50_ms": _p50(writes), "write_p99_ms": float(
        np.percentile(np.asarray(writes) * 1e3, 99)), "search_ids_p50_ms": lat[3], "search_ids_k10_p50_ms": lat[10],
        "search_records_p50_ms": _p50(full_t), "hnsw_recall@10_vs_exact": recall["ef_rule"],
        "hnsw_ef@10": store_index.hnsw_ef(10, n, 64), "hnsw_recall@10_fixed_ef64": recall["fixed_ef64"],
        "search_k10_p50_ms_fixed_ef64": lat10["fixed_ef64"], "search_k10_p50_ms_ef_rule": lat10["ef_rule"],
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


def bench_first_search(store_path: Path, conversation: str, query: str = "When did Caroline go to the LGBTQ support group?") -> dict:
    """A fresh process's first ``search_conversation`` over one LoCoMo conversation's store
    (the pool is built: BM25 indexes, units and their vectors), then a second one; MiniLM is
    loaded and warmed before the clock starts. Counts the texts the embedder is given."""
    from tsubasa_fast.memory.retrieval import Retriever
    from tsubasa_fast.memory.store import open_store

    store = open_store(store_path, must_exist=True)
    store.embedder.embed(["warm up"])
    texts = []
    inner = store.embedder.embed

    def counting(batch):
        texts.extend(batch)
        return inner(batch)

    store.embedder.embed = counting
    users = sorted(u for u in store.users() if u.startswith(conversation + ":"))
    r = Retriever(store)
    t = time.perf_counter()
    r.search_users(users, query, 3)
    first = time.perf_counter() - t
    n_first = len(texts)
    t = time.perf_counter()
    r.search_users(users, query, 3)
    second = time.perf_counter() - t
    store.close()
    return {"store": str(store_path), "users": users, "first_s": round(first, 3), "second_s": round(second, 4),
            "texts_embedded_first": n_first, "texts_embedded_second": len(texts) - n_first}


# ---------------------------------------------------------------- reranking the default's top 20
LIST_QUESTION = re.compile(r"\b(what|which)\s+(?:\w+\s+)?(\w+s)\b(?!\s+(?:is|was)\b)|\b(what|where|who)\s+(has|have)\b"
                           r"|\bin what ways\b", re.I)


def _default_top(store_path: Path, locomo: Path, depth: int = 20) -> list[dict]:
    """The default ranking's top ``depth`` records (with scores) for every evaluated question."""
    from tsubasa_fast.memory.locomo import load_locomo
    from tsubasa_fast.memory.retrieval import DEFAULT_SPEAKER_BOOST, Retriever, named_speaker
    from tsubasa_fast.memory.store import open_store

    store = open_store(store_path, must_exist=True)
    r = Retriever(store)
    vec = {rid: np.frombuffer(e, np.float32).astype(np.float64)
           for rid, e in store.db.query("SELECT id, embedding FROM records WHERE status='live'")}
    rows = []
    for c in load_locomo(locomo):
        for qa in c.qa:
            if not qa.evidence or qa.category not in (1, 2, 3, 4):
                continue
            who = named_speaker(qa.question, c.speakers)
            boosts = [DEFAULT_SPEAKER_BOOST if i == who else 0.0 for i in range(len(c.speakers))]
            got = r.search_records(c.user_ids, qa.question, depth, boosts)
            rows.append({"conv": c.sample_id, "cat": qa.category, "q": qa.question, "gold": set(qa.evidence),
                         "recs": [x for x, _ in got], "s": np.array([s for _, s in got]),
                         "vecs": np.stack([vec[x.id] for x, _ in got])})
    store.close()
    return rows


def _recall(rows: list[dict], orders: list[list[int]], ks=(1, 3, 5, 10)) -> dict:
    """R@k overall and R@3 per conversation of the given orders (LoCoMo's evidence coverage)."""
    from tsubasa_fast.memory.locomo import evidence_recall

    tot, per = {k: 0.0 for k in ks}, {}
    for row, order in zip(rows, orders):
        cited = [row["recs"][i].dia_ids for i in order]
        for k in ks:
            v = evidence_recall(row["gold"], cited, k)
            tot[k] += v
            if k == 3:
                per.setdefault(row["conv"], []).append(v)
    return {**{f"R@{k}": round(tot[k] / len(rows), 3) for k in ks},
            **{f"R@3 {c}": round(float(np.mean(v)), 3) for c, v in per.items()}}


def _session_diverse(row: dict, lam: float, depth: int = 10) -> list[int]:
    """Greedy: a record whose sessions all appear above it loses ``lam``."""
    sess = [{d.split(":")[0] for d in x.dia_ids} for x in row["recs"]]
    rest, out, seen = list(range(min(depth, len(sess)))), [], set()
    while rest:
        b = max(rest, key=lambda i: row["s"][i] - lam * bool(sess[i] and sess[i] <= seen))
        out.append(b)
        rest.remove(b)
        seen |= sess[b]
    return out + list(range(min(depth, len(sess)), len(sess)))


def _mmr(row: dict, lam: float, depth: int = 10) -> list[int]:
    """Maximal marginal relevance over the top ``depth`` (MiniLM vectors of the records)."""
    from tsubasa_fast.memory.retrieval import diversify

    v, n = row["vecs"], len(row["recs"])
    rest, out = list(range(min(depth, n))), []
    while rest:
        b = max(rest, key=lambda i: lam * row["s"][i] - (1 - lam) * max((v[i] @ v[j] for j in out), default=0.0))
        out.append(b)
        rest.remove(b)
    return diversify([x.dia_ids for x in row["recs"]], out + list(range(min(depth, n), n)))


def bench_rerank_variants(store_path: Path, locomo: Path) -> list[dict]:
    """Reorderings of the default ranking's top 20 (diversity for list questions)."""
    rows = _default_top(store_path, locomo)
    lists = [bool(LIST_QUESTION.search(r["q"])) for r in rows]
    base = [list(range(len(r["recs"]))) for r in rows]
    out = [{"variant": "default", **_recall(rows, base)}]
    for lam in (0.02, 0.05, 0.1):
        orders = [_session_diverse(r, lam) if li else b for r, li, b in zip(rows, lists, base)]
        out.append({"variant": f"list questions ({sum(lists)}): session diversity {lam}", **_recall(rows, orders)})
    for lam in (0.9, 0.8, 0.7):
        orders = [_mmr(r, lam) if li else b for r, li, b in zip(rows, lists, base)]
        out.append({"variant": f"list questions: MMR lambda {lam}", **_recall(rows, orders)})
    return out


def bench_llm_rerank(store_path: Path, locomo: Path, every: int = 6, depth: int = 20) -> list[dict]:
    """SmolLM2-135M-Instruct over the default top ``depth`` of every ``every``-th question:
    relevance ``logit(" Yes") - logit(" No")`` after "Does the memory help answer the question?",
    and UPR ``mean log p(question | memory)``; each alone and z-scored plus the default's z-score."""
    import torch

    from tsubasa_fast.models import load_causal_lm

    rows = _default_top(store_path, locomo, depth)[::every]
    model, tok = load_causal_lm(None)
    model.eval()
    tok.padding_side = "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    yes, no = tok.encode(" Yes")[-1], tok.encode(" No")[-1]
    t0 = time.perf_counter()
    for row in rows:
        texts, q = [x.text for x in row["recs"]], row["q"]
        prompts = [tok.apply_chat_template([{"role": "user", "content": f"Memory: {m}\nQuestion: {q}\nDoes the "
                                             f"memory help answer the question? Answer Yes or No."}],
                                           tokenize=False, add_generation_prompt=True) for m in texts]
        enc = tok(prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            lg = model(**enc).logits
        last = enc["attention_mask"].sum(1) - 1
        ll = lg[torch.arange(len(texts)), last]
        row["rel"] = (ll[:, yes] - ll[:, no]).double().numpy()
        pre = [f"Memory: {m}\nQuestion:" for m in texts]
        enc = tok([p + " " + q for p in pre], return_tensors="pt", padding=True)
        with torch.no_grad():
            lp = model(**enc).logits.log_softmax(-1)
        upr = []
        for i, p in enumerate(pre):
            n0, n1 = len(tok(p)["input_ids"]), int(enc["attention_mask"][i].sum())
            upr.append(float(lp[i, n0 - 1:n1 - 1].gather(1, enc["input_ids"][i, n0:n1, None]).mean()))
        row["upr"] = np.array(upr)
    secs = (time.perf_counter() - t0) / len(rows)
    z = lambda x: (x - x.mean()) / (x.std() + 1e-9)  # noqa: E731
    base = [list(range(len(r["recs"]))) for r in rows]
    out = [{"variant": f"default on these {len(rows)} questions", **_recall(rows, base)}]
    for key in ("rel", "upr"):
        out.append({"variant": f"{key} alone", **_recall(rows, [np.argsort(-r[key], kind="stable").tolist() for r in rows])})
        for w in (0.1, 0.25, 0.5, 1.0):
            orders = [np.argsort(-(z(r["s"]) + w * z(r[key])), kind="stable").tolist() for r in rows]
            out.append({"variant": f"z(default) + {w} z({key})", **_recall(rows, orders)})
    out.append({"variant": "seconds per question (both scorers)", "s": round(secs, 1)})
    return out


def add_uncovered_turns(store_path: Path, locomo: Path) -> dict:
    """Adds to an (evolved) store the raw utterances that no live memory of their conversation
    cites, as ``memory ingest --source utterances`` writes them (static ADD, the same op keys)."""
    from tsubasa_fast.memory.evolution import Decision, apply_decision
    from tsubasa_fast.memory.ingest import session_observations
    from tsubasa_fast.memory.locomo import load_locomo
    from tsubasa_fast.memory.store import open_store

    store = open_store(store_path, must_exist=True)
    added = 0
    for c in load_locomo(locomo):
        cited = {d for u in c.user_ids for r in store.all(u) for d in r.dia_ids}
        todo = [o for s in c.sessions for o in session_observations(c, s, "utterances")[0]
                if o.source["dia_ids"][0] not in cited]
        for o, v in zip(todo, store.embedder.embed([o.text for o in todo]) if todo else []):
            o.vec = v
            apply_decision(store, o, Decision("ADD", decision_source="static"))
            added += 1
    live = store.count()
    store.close()
    return {"store": str(store_path), "added": added, "live": live}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--locomo", type=Path, default=DEV, help="LoCoMo file (default: the shared dev file)")
    p.add_argument("--skip-recall", action="store_true", help="timings only")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    p.add_argument("--store-only", type=int, nargs="+", metavar="N", default=None,
                   help="only the store benchmark, at these sizes (e.g. 10000 20000)")
    p.add_argument("--first-search", nargs=2, metavar=("STORE", "CONVERSATION"), default=None,
                   help="only the first-search cost of a fresh process on an existing store")
    p.add_argument("--rerank-variants", type=Path, metavar="STORE", default=None,
                   help="only reorderings of the default ranking's top 20 on an existing store")
    p.add_argument("--llm-rerank", type=Path, metavar="STORE", default=None,
                   help="only the SmolLM2 rerank probe on an existing store")
    p.add_argument("--every", type=int, default=6, help="--llm-rerank: every n-th question (default 6)")
    p.add_argument("--add-uncovered-turns", type=Path, metavar="STORE", default=None,
                   help="only: add the raw turns no live memory cites to an existing store")
    args = p.parse_args(argv)
    if args.add_uncovered_turns:
        print(json.dumps(add_uncovered_turns(args.add_uncovered_turns, args.locomo)), flush=True)
        return 0
    if args.rerank_variants or args.llm_rerank:
        rows = (bench_rerank_variants(args.rerank_variants, args.locomo) if args.rerank_variants
                else bench_llm_rerank(args.llm_rerank, args.locomo, args.every))
        for r in rows:
            print(json.dumps(r), flush=True)
        return 0
    if args.first_search:
        print(json.dumps(bench_first_search(Path(args.first_search[0]), args.first_search[1])), flush=True)
        return 0
    if args.store_only:
        rows = [bench_store(n) for n in args.store_only]
        for r in rows:
            print(json.dumps(r), flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"store": rows}, indent=2) + "\n")
        return 0
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
