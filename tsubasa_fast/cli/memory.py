"""``tsubasa-fast memory ingest|search|history|export|import`` and ``tsubasa-fast eval retrieval``."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from ..fileio import atomic_write_text
from ..progress import progress_bar
from ..memory.config import DEFAULT_K, EMBEDDERS, MemoryConfig, default_manager
from ..memory.retrieval import DEFAULT_ALPHA, DEFAULT_MODE, DEFAULT_SPEAKER_BOOST, FUSIONS, MODES
from ..memory.store import MemoryStoreError, open_store
from . import group
from .options import add_options
from . import positive_int as _positive


def _non_negative_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not x >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {value!r}")
    return x


def _lock_timeout_arg(p) -> None:
    p.add_argument("--lock-timeout", type=_non_negative_float, default=30.0, metavar="SECONDS",
                   help="how long to wait for another process's write lock (default 30)")


def _store_errors(fn):
    """A locked or corrupt store is one line on stderr (exit status 2), not a traceback."""
    @functools.wraps(fn)
    def run(args):
        try:
            return fn(args)
        except MemoryStoreError as e:
            if isinstance(e, (ValueError, KeyError)):
                raise  # printed by the top-level handler
            print(f"tsubasa-fast: error: {e}", file=sys.stderr)
            return 2
    return run


def register(subparsers) -> None:
    mem = group(subparsers, "memory", "build and query the evolving per-user memory store")

    p = mem.add_parser("ingest", help="write LoCoMo conversations into a store",
                       description="Write LoCoMo conversations into a memory store (idempotent: "
                                   "replaying adds nothing). Each speaker is a user <sample_id>:<speaker>.")
    p.add_argument("--store", required=True, type=Path, help="store directory (created if missing)")
    p.add_argument("--locomo", required=True, type=Path, help="LoCoMo JSON file (locomo10.json format)")
    p.add_argument("--conversation", nargs="+", metavar="ID", help="sample ids to ingest (default: all)")
    add_options(p, {"memory": MemoryConfig()}, {"memory": ("source", "manager", "embedder")}, overrides={
        ("memory", "source"): {"required": True, "help": "raw utterances (RAG baseline), the dataset's observations, "
                                                         "or the LLM extractor"},
        ("memory", "manager"): {"default": None, "help": "evolution manager (default: static for utterances, rule "
                                                         "otherwise)"},
        ("memory", "embedder"): {"default": None, "help": "embedder for a new store (default minilm; an existing "
                                                          "store keeps its own)"}})
    p.add_argument("--model", default=None,
                   help="local causal LM folder for --source llm / --manager llm (default SmolLM2-135M-Instruct)")
    p.add_argument("--date-prefix", action=argparse.BooleanOptionalAction, default=None,
                   help="prefix memory texts with the session date (default: on for utterances only)")
    add_options(p, {"memory": MemoryConfig()}, {"memory": ("uncited_turns",)}, help_prefix="observations / llm: ")
    _lock_timeout_arg(p)
    p.set_defaults(func=_store_errors(cmd_ingest))

    p = mem.add_parser("search", help="search one user's live memories",
                       description="Top-k live memories of one user (the library's default ranking).")
    p.add_argument("--store", required=True, type=Path, help="store directory")
    p.add_argument("--user", required=True, help="user id, e.g. conv-26:Caroline")
    p.add_argument("-k", type=_positive, default=DEFAULT_K, help=f"number of results (default {DEFAULT_K})")
    p.add_argument("--retrieval", choices=MODES, default=DEFAULT_MODE,
                   help=f"ranking: dense cosine, hybrid BM25+cosine, or hybrid with date matching "
                        f"(default {DEFAULT_MODE}, as `eval retrieval`)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.add_argument("query", help="query text")
    p.set_defaults(func=_store_errors(cmd_search))

    p = mem.add_parser("history", help="show every version of a memory record",
                       description="The version chain of a record, oldest first.")
    p.add_argument("--store", required=True, type=Path, help="store directory")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.add_argument("id", type=_positive, help="record id (any version in the chain)")
    p.set_defaults(func=_store_errors(cmd_history))

    p = mem.add_parser("export", help="export every record version as JSON lines")
    p.add_argument("--store", required=True, type=Path, help="store directory")
    p.add_argument("--user", default=None, help="only this user (default: every user)")
    p.add_argument("out", type=Path, help="output .jsonl file")
    p.set_defaults(func=_store_errors(cmd_export))

    p = mem.add_parser("import", help="import records from an export (idempotent)")
    p.add_argument("--store", required=True, type=Path, help="store directory")
    p.add_argument("--embedder", choices=EMBEDDERS, default=None, help="embedder for a new store")
    p.add_argument("file", type=Path, help=".jsonl file written by `memory export`")
    _lock_timeout_arg(p)
    p.set_defaults(func=_store_errors(cmd_import))

    ev = group(subparsers, "eval", "evaluate memory and models")
    p = ev.add_parser("retrieval", help="recall@k of LoCoMo evidence among retrieved memories",
                      description="For each question with evidence, recall@k = fraction of its evidence "
                                  "dia_ids covered by the source dia_ids of the top-k memories (both "
                                  "speakers' stores, merged). Categories: 1 multi-hop, 2 temporal, "
                                  "3 open-domain, 4 single-hop, 5 adversarial.")
    p.add_argument("--store", required=True, type=Path, help="store directory")
    p.add_argument("--locomo", required=True, type=Path, help="LoCoMo JSON file")
    p.add_argument("--conversation", nargs="+", metavar="ID", help="sample ids (default: all)")
    p.add_argument("-k", nargs="+", type=_positive, default=[1, 3, 5, 10], help="k values (default 1 3 5 10)")
    p.add_argument("--categories", nargs="+", type=int, default=[1, 2, 3, 4], choices=(1, 2, 3, 4, 5),
                   help="question categories (default 1 2 3 4)")
    p.add_argument("--retrieval", choices=MODES, default=DEFAULT_MODE,
                   help=f"ranking: dense cosine, hybrid BM25+cosine, or hybrid with date matching (default {DEFAULT_MODE})")
    p.add_argument("--fusion", choices=FUSIONS, default="convex",
                   help="how hybrid fuses cosine and BM25: weighted sum or reciprocal rank fusion (default convex)")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                   help=f"dense weight for hybrid ranking (default {DEFAULT_ALPHA})")
    p.add_argument("--speaker-boost", type=float, default=DEFAULT_SPEAKER_BOOST,
                   help=f"score bonus for the memories of the one speaker a question names (default {DEFAULT_SPEAKER_BOOST})")
    p.add_argument("--units", action=argparse.BooleanOptionalAction, default=True,
                   help="also score an evolved memory by the observations it merged (default on)")
    p.add_argument("--diversify", action=argparse.BooleanOptionalAction, default=True,
                   help="move memories whose evidence is already in higher-ranked ones down (default on)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results as JSON")
    p.set_defaults(func=_store_errors(cmd_eval_retrieval))


def cmd_ingest(args) -> int:
    from ..memory.evolution import make_manager
    from ..memory.extraction import ObservationExtractor
    from ..memory.ingest import IngestStats, ingest_conversation
    from ..memory.locomo import load_locomo

    source = getattr(args, "memory.source")
    cfg = MemoryConfig(source=source, manager=getattr(args, "memory.manager") or default_manager(source),
                       embedder=getattr(args, "memory.embedder") or MemoryConfig.embedder,
                       uncited_turns=getattr(args, "memory.uncited_turns"))
    convs = load_locomo(args.locomo, args.conversation)
    manager_name = cfg.manager
    date_prefix = args.date_prefix if args.date_prefix is not None else source == "utterances"
    chat = None
    if source == "llm" or manager_name == "llm":
        from ..llm import ChatLM

        chat = ChatLM.load(args.model)  # extraction and the manager size each reply's limit
    extractor = ObservationExtractor(chat) if source == "llm" else None
    manager = make_manager(manager_name, chat=chat)
    store = open_store(args.store, getattr(args, "memory.embedder"), lock_timeout=args.lock_timeout)
    stats = IngestStats()
    try:
        with progress_bar(total=sum(len(c.sessions) for c in convs), desc="ingest", unit="session") as bar:
            for conv in convs:
                bar.set_postfix_str(conv.sample_id)
                ingest_conversation(store, conv, source, manager, extractor=extractor,
                                    date_prefix=date_prefix, progress=bar, stats=stats,
                                    uncited_turns=cfg.uncited_turns)
        summary = {"store": str(args.store), "source": source, "manager": manager_name, **stats.as_dict(),
                   "live_records": store.count()}
        if extractor is not None:
            summary["extraction"] = extractor.stats
        if manager_name == "llm":
            summary["manager_stats"] = manager.stats
    finally:
        store.close()
    print(json.dumps(summary))
    return 0


def _print_record(rec, score=None, as_json=False) -> None:
    if as_json:
        d = rec.to_dict()
        if score is not None:
            d["score"] = score
        print(json.dumps(d, ensure_ascii=False))
        return
    head = f"#{rec.id} v{rec.version} {rec.status}"
    if score is not None:
        head = f"{score:.3f}  " + head
    src = ",".join(rec.dia_ids)
    print(f"{head}  [{rec.observed_at or '-'}] ({rec.decision_source}{'; ' + src if src else ''})\n    {rec.text}")


def cmd_search(args) -> int:
    from ..memory.retrieval import Retriever

    store = open_store(args.store, must_exist=True)
    try:
        for rec, score in Retriever(store, args.retrieval).search_records([args.user], args.query, args.k):
            _print_record(rec, score, args.json)
    finally:
        store.close()
    return 0


def cmd_history(args) -> int:
    store = open_store(args.store, must_exist=True)
    try:
        chain = store.history(args.id)
        for rec in chain:
            _print_record(rec, as_json=args.json)
    finally:
        store.close()
    return 0


def cmd_export(args) -> int:
    if args.user is not None and not args.user.strip():
        raise ValueError("--user: empty user id; give a user id, or omit --user to export every user")
    store = open_store(args.store, must_exist=True)
    try:
        n = store.export_jsonl(args.out, args.user)
    finally:
        store.close()
    print(f"exported {n} records to {args.out}")
    return 0


def cmd_import(args) -> int:
    if not args.file.is_file():
        raise FileNotFoundError(f"file: no such file {args.file}")
    store = open_store(args.store, args.embedder, lock_timeout=args.lock_timeout)
    try:
        r = store.import_file(args.file)
    finally:
        store.close()
    print(f"imported {r.records} records and {r.events} decisions into {args.store} "
          f"({r.records_present} records and {r.events_present} decisions were already there)")
    return 0


def cmd_eval_retrieval(args) -> int:
    from ..memory.locomo import evaluate_retrieval, format_report, load_locomo
    from ..memory.retrieval import Retriever, conversation_merge

    if not 0 <= args.alpha <= 1:
        raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}")
    convs = load_locomo(args.locomo, args.conversation)
    store = open_store(args.store, must_exist=True)
    try:
        missing = [u for c in convs for u in c.user_ids if store.count(u) == 0]
        if len(missing) == sum(len(c.user_ids) for c in convs):
            raise ValueError(f"--store {args.store} holds no memories for these conversations; run "
                             f"`tsubasa-fast memory ingest` first")
        search = Retriever(store, args.retrieval, alpha=args.alpha, fusion=args.fusion, units=args.units,
                           diversify=args.diversify)
        result = evaluate_retrieval(convs, search, args.k, args.categories, progress=sys.stderr.isatty(),
                                    merge=conversation_merge(args.speaker_boost))
    finally:
        store.close()
    result["config"] = {"retrieval": args.retrieval, "fusion": args.fusion, "alpha": args.alpha,
                        "speaker_boost": args.speaker_boost, "units": args.units,
                        "diversify": args.diversify, "categories": args.categories}
    print(format_report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0
