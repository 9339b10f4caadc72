"""Rule-writer probe on text its rules were not written from: LoCoMo's event and session summaries.

The rule writer's templates were written while reading the dev speakers' observations, so its
figures there are in-sample. The same conversations also carry ``event_summary`` (one line per
event, present tense) and ``session_summary`` (a paragraph per session) fields, written in the
same third-person style but never read while writing the rules. Each sentence that opens on a
speaker's name becomes one memory dated by its session (the ``[date]`` prefix ingest writes);
the writer runs over it with the user given, and the malformed-pair check over its pairs.
Prints per speaker and source: sentences, pairs, malformed (share), then ``--sample`` random
well-formed pairs for a blind read.

    .venv/bin/python -m benchmarks.rule_writer_probe [--source events|summaries|both] [--sample 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import re
from collections import Counter

DEV = "/work/shared/data/locomo/locomo_dev.json"


def _day(text: str) -> dt.date | None:
    m = re.search(r"(\d{1,2}) ([A-Z][a-z]+),? (\d{4})", text or "")
    if not m:
        return None
    try:
        return dt.datetime.strptime(" ".join(m.groups()), "%d %B %Y").date()
    except ValueError:
        return None


def sentences(conv: dict, source: str) -> list[tuple[str, str, dt.date | None]]:
    """``(speaker, sentence, session day)`` for every sentence of ``source`` that opens on a speaker."""
    talk = conv["conversation"]
    names = (talk["speaker_a"], talk["speaker_b"])
    out = []
    if source == "events":
        for ev in conv.get("event_summary", {}).values():
            for name in names:
                out += [(name, s.strip(), _day(ev.get("date", ""))) for s in ev.get(name, []) if s.strip()]
    else:
        for key, text in conv.get("session_summary", {}).items():
            n = re.match(r"session_(\d+)_summary", key)
            day = _day(talk.get(f"session_{n.group(1)}_date_time", "")) if n else None
            for sent in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
                for name in names:
                    if sent.startswith((name + " ", name + "'s ")):
                        out.append((name, sent.strip(), day))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--locomo", default=DEV)
    ap.add_argument("--source", default="both", choices=("events", "summaries", "both"))
    ap.add_argument("--sample", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-pairs", type=int, default=3)
    args = ap.parse_args(argv)

    from tsubasa_fast.distill.pair_check import pair_problems
    from tsubasa_fast.distill.rule_writer import rule_pairs
    from tsubasa_fast.memory.slots import human_date

    sources = ("events", "summaries") if args.source == "both" else (args.source,)
    rows, good = [], []
    for conv in json.load(open(args.locomo)):
        for source in sources:
            per: dict[str, Counter] = {}
            for name, sent, day in sentences(conv, source):
                memory = f"[{human_date(day.isoformat())}] {sent}" if day else sent
                c = per.setdefault(name, Counter())
                c["sentences"] += 1
                for q, a in rule_pairs(memory, max_pairs=args.max_pairs, user=name):
                    problems = pair_problems(q, a, memory, name)
                    c["pairs"] += 1
                    c["malformed"] += bool(problems)
                    c.update(problems)
                    if problems:
                        print(f"malformed {problems}: {q} -> {a}")
                    else:
                        good.append((q, a, memory))
            rows += [(f"{conv['sample_id']}:{name}", source, c) for name, c in per.items()]
    print("\n| speaker | source | sentences | pairs | malformed (% of pairs) |\n|---|---|---|---|---|")
    for spk, source, c in rows:
        pct = 100 * c["malformed"] / c["pairs"] if c["pairs"] else 0.0
        print(f"| {spk} | {source} | {c['sentences']} | {c['pairs']} | {c['malformed']} ({pct:.1f} %) |")
    print(f"\n{min(args.sample, len(good))} random well-formed pairs (seed {args.seed}):")
    for i, (q, a, memory) in enumerate(random.Random(args.seed).sample(good, min(args.sample, len(good))), 1):
        print(f"{i}. {q} -> {a}    [{memory[:100]}]")


if __name__ == "__main__":
    main()
