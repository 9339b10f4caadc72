"""LLM-extracted observations (SmolLM2-135M under the extraction grammar) vs the dataset's own.

    python -m benchmarks.extraction --sessions 4 --json benchmarks/results/extraction.json

For the first N sessions of each dev conversation, both speakers: ingest (static manager, so
the figure is extraction alone; MiniLM embeddings) once from ``--source llm`` through the real
pipeline (ingest_conversation + ObservationExtractor + ChatLM) and once from the dataset's
observations, then evidence recall@k (evaluate_retrieval, both speakers merged) over the
questions whose evidence lies entirely in those sessions. Reports schema-valid replies,
observations per (session, speaker), skips / retries / fallbacks, and recall. Not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import tempfile
import time
from pathlib import Path

from .constrained import DEV


def subset(conv, n: int):
    """The conversation cut to its first n sessions, with only the questions answerable from them."""
    sessions = conv.sessions[:n]
    keep = {s.number for s in sessions}
    in_keep = lambda ids: ids and all(int(re.match(r"D(\d+):", d).group(1)) in keep for d in ids)  # noqa: E731
    return dataclasses.replace(conv, sessions=sessions, qa=[q for q in conv.qa if in_keep(q.evidence)],
                               observations={k: v for k, v in conv.observations.items() if k in keep})


def main(argv=None):
    import torch

    from tsubasa_fast.llm import ChatLM
    from tsubasa_fast.memory import MemoryStore
    from tsubasa_fast.memory.embedders import MiniLMEmbedder
    from tsubasa_fast.memory.evolution import StaticManager
    from tsubasa_fast.memory.extraction import ObservationExtractor
    from tsubasa_fast.memory.ingest import ingest_conversation
    from tsubasa_fast.memory.locomo import evaluate_retrieval, load_locomo
    from tsubasa_fast.memory.retrieval import Retriever

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--conversation", nargs="+", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-items", type=int, default=None, help="extractor min_items (default: the extractor's)")
    ap.add_argument("--sources", nargs="+", default=["llm", "observations"])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    convs = [subset(c, args.sessions) for c in load_locomo(DEV, args.conversation)]
    lm = ChatLM.load(None)
    emb = MiniLMEmbedder()
    out: dict = {"sessions_per_conversation": args.sessions, "questions": sum(len(c.qa) for c in convs)}
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in args.sources:
            store = MemoryStore(Path(tmp) / source, emb)
            kw = {} if args.min_items is None else {"min_items": args.min_items}
            ex = ObservationExtractor(lm, **kw) if source == "llm" else None
            t = time.perf_counter()
            stats = [ingest_conversation(store, c, source, StaticManager(), extractor=ex).as_dict() for c in convs]
            seconds = time.perf_counter() - t
            pairs = sum(1 for c in convs for s in c.sessions for sp in c.speakers
                        if any(x.speaker == sp for x in s.turns))
            row = {"observations": sum(s["observations"] for s in stats), "speaker_sessions": pairs,
                   "skipped_sessions": sum(s["skipped_sessions"] for s in stats), "ingest_s": round(seconds, 1)}
            row["observations_per_speaker_session"] = round(row["observations"] / pairs, 2)
            if ex is not None:
                row["extraction"] = dict(ex.stats)
                row["schema_valid"] = f"{ex.stats['sessions'] - ex.stats['skipped']}/{ex.stats['sessions']}"
                samples = [r.text for u in store.users() for r in store.all(u)][:12]
            for mode in ("dense", "hybrid"):
                res = evaluate_retrieval(convs, Retriever(store, mode), (1, 3, 5))
                row[f"recall_{mode}"] = {k: round(v, 3) for k, v in res["overall"].items()}
            store.close()
            out[source] = row
            print(json.dumps({source: row}), flush=True)
    out["samples"] = samples
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
