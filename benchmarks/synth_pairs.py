"""Question-writer benchmark: kept pairs, % malformed and a blind-read sample per dev speaker.

Writes each speaker's memory from the dataset's own observations (static manager, no LLM),
runs :func:`tsubasa_fast.distill.synth.synthesize` with the chosen writer and the default
model, and prints per speaker: observations, generated, kept, malformed (by
:mod:`tsubasa_fast.distill.pair_check`, share of generated), every filter's count, and
seconds; then ``--sample`` random kept pairs over all speakers for a blind read.

    PYTHONPATH=. python benchmarks/synth_pairs.py --generator llm [--limit 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

DEV = "/work/shared/data/locomo/locomo_dev.json"
SPEAKERS = (("conv-26", "Caroline"), ("conv-26", "Melanie"), ("conv-30", "Jon"), ("conv-30", "Gina"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--locomo", default=DEV)
    ap.add_argument("--generator", default="llm", choices=("llm", "rule", "llm-text"))
    ap.add_argument("--pairs-per-prompt", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="observations per speaker (default all)")
    ap.add_argument("--no-answer-check", action="store_true")
    ap.add_argument("--sample", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speakers", default=None, help="comma list of conv:Speaker (default the 4 dev speakers)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from tsubasa_fast.distill.synth import SynthConfig, synthesize
    from tsubasa_fast.llm import ChatLM
    from tsubasa_fast.memory import HashingEmbedder, MemoryStore
    from tsubasa_fast.memory.evolution import make_manager
    from tsubasa_fast.memory.ingest import ingest_conversation
    from tsubasa_fast.memory.locomo import load_locomo

    speakers = SPEAKERS if not args.speakers else tuple(tuple(x.split(":")) for x in args.speakers.split(","))
    convs = {c.sample_id: c for c in load_locomo(args.locomo)}
    chat = ChatLM.load(max_new_tokens=96)
    rows, kept_all = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for cid, spk in speakers:
            conv = convs[cid]
            store = MemoryStore(Path(tmp) / f"{cid}-{spk}", HashingEmbedder())
            ingest_conversation(store, conv, "observations", make_manager("static"), speakers=(spk,),
                                uncited_turns=False)  # the dataset's observations alone
            user = conv.user_id(spk)
            cfg = SynthConfig(generator=args.generator, pairs_per_prompt=args.pairs_per_prompt, limit=args.limit,
                              check_answerable=not args.no_answer_check, seed=args.seed)
            t0 = time.perf_counter()
            pairs, rep = synthesize(store, user, chat, cfg, progress=False)
            secs = time.perf_counter() - t0
            store.close()
            malformed = rep["dropped"]["malformed"]
            row = {"user": user, "observations": rep["observations"], "generated": rep["generated"],
                   "kept": rep["kept"], "malformed": malformed,
                   "malformed_pct": round(100 * malformed / max(rep["generated"], 1), 1),
                   "dropped": rep["dropped"], "malformed_rules": {k: v for k, v in rep["malformed_rules"].items() if v},
                   "writer": rep.get("writer"), "seconds": round(secs, 1)}
            rows.append(row)
            kept_all += pairs
            print(json.dumps(row), flush=True)
            for p in pairs:  # every kept pair as it comes (a long run killed half-way still shows them)
                print(f"  {p['question']} -> {p['answer']}", flush=True)
    print("\n| speaker | observations | generated | kept | malformed (% of generated) | seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['user']} | {r['observations']} | {r['generated']} | {r['kept']} | {r['malformed']} "
              f"({r['malformed_pct']} %) | {r['seconds']} |")
    rng = random.Random(args.seed)
    sample = rng.sample(kept_all, min(args.sample, len(kept_all)))
    print(f"\n{len(sample)} random kept pairs (seed {args.seed}):")
    for i, p in enumerate(sample, 1):
        print(f"{i}. {p['question']} -> {p['answer']}    [{p['context'][:90]}]")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "sample": sample}, indent=1, default=str))


if __name__ == "__main__":
    main()
