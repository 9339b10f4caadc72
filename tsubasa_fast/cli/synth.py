"""`tsubasa-fast synth`: self-learning QA pairs from one user's memories (wing 2, step 1)."""

from __future__ import annotations

import json
from pathlib import Path

from ..distill.configs import StudentConfig, SynthConfig
from .options import add_options, stage_configs

# stage -> the fields synth offers as options (defaults: SynthConfig's and StudentConfig's)
SYNTH_OPTIONS = {"synth": ("generator", "pairs_per_prompt", "group_size", "max_answer_words", "check_answerable",
                           "f1_threshold", "min_context_overlap", "max_new_tokens", "limit", "seed"),
                 "student": ("model",)}


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
    add_options(p, {"synth": SynthConfig(), "student": StudentConfig()}, SYNTH_OPTIONS, overrides={
        ("synth", "generator"): {"flags": "--generator"}, ("synth", "max_new_tokens"): {"flags": "--max-new-tokens"},
        ("synth", "limit"): {"flags": "--limit"}, ("synth", "seed"): {"flags": "--seed"}})
    p.add_argument("--no-llm", action="store_true",
                   help="with --generator rule: load no model and skip the answerability filter")
    p.set_defaults(func=cmd_synth)


def cmd_synth(args) -> int:
    from ..distill.synth import synthesize, write_qa_jsonl, write_report
    from ..memory.store import open_store

    stages = stage_configs(args, {"synth": SynthConfig(), "student": StudentConfig()})
    cfg = stages["synth"]
    if args.no_llm and cfg.generator != "rule":
        raise ValueError("--no-llm needs --generator rule (the llm generators are the model)")
    store = open_store(args.store, must_exist=True)
    try:
        if store.count(args.user) == 0:  # fail before loading a model
            users = ", ".join(store.users()[:10]) or "none"
            raise ValueError(f"--user: no live memories for user {args.user!r} in {args.store} (users: {users})")
        chat = None
        if cfg.generator != "rule" or not (args.no_llm or not cfg.check_answerable):
            from ..llm import ChatLM

            chat = ChatLM.load(stages["student"].model, max_new_tokens=cfg.max_new_tokens)
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
