"""Scripted evolution suite: does the live memory hold the current state after a change?

    python -m benchmarks.evolution                       # rule and static managers (about 30 s)
    python -m benchmarks.evolution --managers rule llm   # + the LLM manager with SmolLM2-135M (minutes)
    python -m benchmarks.evolution --json benchmarks/results/evolution.json -v
    python -m benchmarks.evolution --managers rule --locomo-recall   # + LoCoMo dev recall, dated vs undated

Cases (tests/memory/data/evolution_cases.json, written for this suite, shared with
tests/memory/test_evolution_suite.py): a sequence of dated observations about one person,
"now" questions, and what must hold afterwards. Each case becomes one LoCoMo-format
conversation (one session per date, the observations as the dataset's observations) and goes
through the same path as ``memory ingest --source observations`` (real store, MiniLM), then:

* ``questions``: the top-1 live memory from the project's retrieval (``make_search`` default)
  contains every expected phrase (case-insensitive);
* ``stale``: a live memory containing the stale phrase must also contain the current phrase,
  after it (the old state survives only as history inside the reconciled memory);
* ``keeps``: the top-1 memory of the first question still holds these phrases; an ISO date
  may appear as ``2023-01-14`` or ``14 January 2023`` (history with its date);
* ``max_live``: at most n live memories contain the phrase (no duplicates);
* ``separate``: no live memory contains both phrases (unrelated facts stay apart).

A case passes when all its checks pass. ``last_ops`` (the right operations for the last
observations) is scored separately as operation accuracy.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

CASES = Path(__file__).resolve().parents[1] / "tests" / "memory" / "data" / "evolution_cases.json"
_FRIEND = "Robin"


def load_cases(path: str | Path = CASES) -> list[dict]:
    cases = json.loads(Path(path).read_text(encoding="utf-8"))
    ids = [c["id"] for c in cases]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate case ids")
    return cases


def person_of(case: dict) -> str:
    return case["obs"][0][1].split()[0].removesuffix("'s")


def case_conversation(case: dict) -> dict:
    """One LoCoMo-format conversation: a session per distinct date, observations by the person."""
    import datetime as dt

    person = person_of(case)
    conv = {"speaker_a": person, "speaker_b": _FRIEND}
    obs: dict = {}
    dates = list(dict.fromkeys(d for d, _ in case["obs"]))
    for n, iso in enumerate(dates, 1):
        day = dt.date.fromisoformat(iso)
        conv[f"session_{n}_date_time"] = f"10:00 am on {day.day} {day.strftime('%B')}, {day.year}"
        conv[f"session_{n}"] = [{"speaker": person, "dia_id": f"D{n}:1", "text": "Some news from me."},
                                {"speaker": _FRIEND, "dia_id": f"D{n}:2", "text": "Tell me more!"}]
        obs[f"session_{n}_observation"] = {person: [[t, f"D{n}:1"] for d, t in case["obs"] if d == iso]}
    return {"sample_id": case["id"], "conversation": conv, "qa": [], "observation": obs,
            "session_summary": {}, "event_summary": {}}


def write_locomo(cases: list[dict], path: Path) -> Path:
    path.write_text(json.dumps([case_conversation(c) for c in cases], indent=1), encoding="utf-8")
    return path


def _human(iso: str) -> str:
    import datetime as dt

    d = dt.date.fromisoformat(iso)
    return f"{d.day} {d.strftime('%B %Y')}"


def _has(text: str, phrase: str) -> bool:
    t = text.lower()
    if len(phrase) == 10 and phrase[4] == "-" and phrase[7] == "-":  # an ISO date
        return phrase in t or _human(phrase).lower() in t
    return phrase.lower() in t


@dataclass
class CaseResult:
    id: str
    kind: str
    passed: bool
    failures: list[str] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    ops_ok: bool = True
    top1: list[str] = field(default_factory=list)


def score_case(case: dict, store, search, ops: list[str], live: list[str] | None = None) -> CaseResult:
    """Check one ingested case against the live memories of its person (see the module docstring);
    ``live``: their texts (default: read from ``store``)."""
    user = f"{case['id']}:{person_of(case)}"
    live = [r.text for r in store.all(user)] if live is None else live
    fails, tops = [], []
    for q, expect in case["questions"]:
        hits = search(user, q, 1)
        top = hits[0].text if hits else ""
        tops.append(top)
        missing = [e for e in expect if not _has(top, e)]
        if missing:
            fails.append(f"top-1 for {q!r} lacks {missing}: {top!r}")
    current = case["questions"][0][1]
    for stale in case.get("stale", []):
        for text in live:
            low = text.lower()
            if stale.lower() not in low:
                continue
            pos = [low.find(c.lower()) for c in current]
            if min(pos) < 0 or min(pos) < low.find(stale.lower()):
                fails.append(f"stale {stale!r} stands alone in live memory {text!r}")
    for phrase in case.get("keeps", []):
        if not _has(tops[0], phrase):
            fails.append(f"top-1 {tops[0]!r} lost the history {phrase!r}")
    for phrase, n in case.get("max_live", []):
        got = sum(_has(t, phrase) for t in live)
        if got > n:
            fails.append(f"{got} live memories contain {phrase!r} (at most {n})")
    for a, b in case.get("separate", []):
        both = [t for t in live if _has(t, a) and _has(t, b)]
        if both:
            fails.append(f"{a!r} and {b!r} merged into {both[0]!r}")
    want = case.get("last_ops", [])
    ops_ok = ops[len(ops) - len(want):] == want if want else True
    return CaseResult(case["id"], case["kind"], not fails, fails, ops, ops_ok, tops)


def run_suite(cases: list[dict], manager, embedder, workdir: Path, progress: bool = False) -> list[CaseResult]:
    """Ingest every case like ``memory ingest --source observations`` and score it; ``progress``
    prints each case's result as it is scored (a run stopped early still tells its figure so far)."""
    from tsubasa_fast.memory import MemoryStore
    from tsubasa_fast.memory.ingest import ingest_conversation
    from tsubasa_fast.memory.locomo import load_locomo
    from tsubasa_fast.memory.retrieval import make_search

    convs = {c.sample_id: c for c in load_locomo(write_locomo(cases, workdir / "cases.json"))}
    store = MemoryStore(workdir / f"store-{manager.name}", embedder)
    search = make_search(store)
    results = []
    try:
        for case in cases:
            conv = convs[case["id"]]
            ops: list[str] = []
            ingest_conversation(store, conv, "observations", manager, date_prefix=False,
                                speakers=(conv.speaker_a,), on_decision=lambda o, d: ops.append(d.op))
            results.append(score_case(case, store, search, ops))
            if progress:
                r = results[-1]
                print(f"  case {len(results)}/{len(cases)} {r.id}: {'pass' if r.passed else 'FAIL'} ops {r.ops} "
                      f"(passed so far {sum(x.passed for x in results)}/{len(results)}; "
                      f"stats {dict(manager.stats)})", flush=True)
    finally:
        store.close()
    return results


def run_suite_cli(cases: list[dict], workdir: Path) -> list[CaseResult]:
    """The same cases through the command line, as a held-out suite is measured: ``memory ingest
    --source observations`` (default manager and embedder), ``memory search --json -k 1 QUERY``
    for each question and ``memory export`` for the live memories (``status`` live)."""
    import contextlib
    import io

    from tsubasa_fast.cli import main as cli
    from tsubasa_fast.memory.store import open_store

    def run(argv: list[str]) -> str:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = cli(argv)
        if rc != 0:
            raise RuntimeError(f"tsubasa-fast {' '.join(argv)} exited {rc}")
        return buf.getvalue()

    st, data, dump = str(workdir / "store-cli"), write_locomo(cases, workdir / "cases.json"), workdir / "export.jsonl"
    run(["memory", "ingest", "--store", st, "--locomo", str(data), "--source", "observations"])
    run(["memory", "export", "--store", st, str(dump)])
    rows = [json.loads(line) for line in dump.read_text(encoding="utf-8").splitlines() if line.strip()]

    class Hit:  # what score_case reads of a search result
        def __init__(self, text: str):
            self.text = text

    def search(user: str, q: str, k: int) -> list[Hit]:
        out = run(["memory", "search", "--store", st, "--user", user, "--json", "-k", str(k), q])
        return [Hit(json.loads(line)["text"]) for line in out.splitlines() if line.strip()]

    store = open_store(st, must_exist=True)  # only to read the decisions for the operation accuracy
    try:
        results = []
        for case in cases:
            user = f"{case['id']}:{person_of(case)}"
            ops = [e["op"] for e in store.events(user)]
            live = [r["text"] for r in rows if r["user_id"] == user and r["status"] == "live"]
            results.append(score_case(case, None, search, ops, live))
    finally:
        store.close()
    return results


def summarise(results: list[CaseResult]) -> dict:
    n = len(results)
    by_kind: dict = {}
    for r in results:
        k = by_kind.setdefault(r.kind, [0, 0])
        k[0] += r.passed
        k[1] += 1
    return {"cases": n, "passed": sum(r.passed for r in results),
            "accuracy": round(sum(r.passed for r in results) / n, 3),
            "op_accuracy": round(sum(r.ops_ok for r in results) / n, 3),
            "by_kind": {k: f"{p}/{t}" for k, (p, t) in sorted(by_kind.items())},
            "failed": {r.id: r.failures for r in results if not r.passed}}


def locomo_recall(embedder, path: Path, dated: bool) -> dict:
    """Dataset observations of the LoCoMo file through the rule manager (``dated`` merged texts or
    not), then evidence recall@k for dense and hybrid retrieval (as ``eval retrieval``)."""
    from tsubasa_fast.memory import MemoryStore
    from tsubasa_fast.memory.evolution import RuleManager
    from tsubasa_fast.memory.ingest import ingest_conversation
    from tsubasa_fast.memory.locomo import evaluate_retrieval, load_locomo, merged_search
    from tsubasa_fast.memory.retrieval import Retriever

    convs = load_locomo(path)
    manager = RuleManager(dated=dated)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = MemoryStore(Path(tmp) / "s", embedder)
        try:
            for conv in convs:
                ingest_conversation(store, conv, "observations", manager, date_prefix=False)
            for mode in ("dense", "hybrid"):
                r = evaluate_retrieval(convs, Retriever(store, mode), (1, 3, 5, 10), merge=merged_search)
                out[mode] = {k: round(v, 3) for k, v in r["overall"].items()}
        finally:
            store.close()
    out["ops"] = dict(manager.stats)
    return out


def make(name: str, chat=None):
    from tsubasa_fast.memory.evolution import make_manager

    return make_manager(name, chat=chat)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--managers", nargs="+", default=["rule", "static"], choices=("rule", "llm", "static"))
    ap.add_argument("--cases", type=Path, default=CASES)
    ap.add_argument("--model", default=None, help="causal LM folder for the llm manager (default SmolLM2-135M)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each failed check")
    ap.add_argument("--progress", action="store_true", help="print each case's result as it is scored")
    ap.add_argument("--cli", action="store_true",
                    help="also: the default manager through the CLI (memory ingest / search --json -k 1 / export)")
    ap.add_argument("--locomo-recall", action="store_true",
                    help="also: LoCoMo dev recall of rule-evolved observations, dated vs undated texts")
    ap.add_argument("--locomo", type=Path,
                    default=Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo" / "locomo_dev.json")
    args = ap.parse_args(argv)

    from tsubasa_fast.fileio import atomic_write_text
    from tsubasa_fast.memory import MiniLMEmbedder

    cases = load_cases(args.cases)
    embedder = MiniLMEmbedder()
    out = {}
    for name in args.managers:
        chat = None
        if name == "llm":
            from tsubasa_fast.llm import ChatLM

            chat = ChatLM.load(args.model, max_new_tokens=128)
        manager = make(name, chat)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            results = run_suite(cases, manager, embedder, Path(tmp), progress=args.progress)
        s = summarise(results)
        s["seconds"] = round(time.perf_counter() - t0, 1)
        s["manager_stats"] = dict(manager.stats)
        s["ops"] = dict(Counter(op for r in results for op in r.ops))
        out[name] = s
        print(f"{name:7s} cases {s['passed']}/{s['cases']} = {s['accuracy']:.3f}   "
              f"op accuracy {s['op_accuracy']:.3f}   {s['seconds']} s   stats {s['manager_stats']}")
        print(f"        by kind: {s['by_kind']}")
        if args.verbose:
            for cid, fails in s["failed"].items():
                for f in fails:
                    print(f"   FAIL {cid}: {f}")
    if args.cli:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            results = run_suite_cli(cases, Path(tmp))
        s = out["cli"] = summarise(results)
        s["seconds"] = round(time.perf_counter() - t0, 1)
        s["ops"] = dict(Counter(op for r in results for op in r.ops))
        print(f"cli     cases {s['passed']}/{s['cases']} = {s['accuracy']:.3f}   "
              f"op accuracy {s['op_accuracy']:.3f}   {s['seconds']} s   ops {s['ops']}")
        if args.verbose:
            for cid, fails in s["failed"].items():
                for f in fails:
                    print(f"   FAIL {cid}: {f}")
    if args.locomo_recall:
        for dated in (True, False):
            label = "dated" if dated else "undated"
            r = out[f"locomo_recall_{label}"] = locomo_recall(embedder, args.locomo, dated)
            print(f"locomo {label:7s} ops {r['ops']}  dense {r['dense']}  hybrid {r['hybrid']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
