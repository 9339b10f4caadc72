"""`tsubasa-fast personalize`: the whole method for one user, resumable stage by stage."""

from __future__ import annotations

import json
from pathlib import Path

from ..memory.config import HISTORY_SOURCES
from .options import add_options, run_defaults, run_config

# stage -> the fields personalize offers as options (defaults: RunConfig's)
PERSONALIZE_OPTIONS = {
    "student": ("model", "load_in_4bit", "device", "lora_r"),
    "memory": ("source", "manager", "embedder", "uncited_turns"),
    "synth": ("generator", "pairs_per_prompt", "check_answerable", "evidence_in_topk"),
    "teacher": ("d",),
    "train": ("epochs", "steps", "batch_size", "micro_batch_size", "lr", "ce_weight"),
    "answer": ("k",),
    "run": ("seed",),
}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "personalize", help="run the whole method for one user (memory, QA, teacher cache, training)",
        description="Write the user's evolving memory from their history, synthesise QA pairs from it, "
                    "cache the teacher's top-d tokens and train the user's LoRA adapter. Leaves the store, "
                    "the adapter and report.json / report.md (with the loss curve) in --out, ready for "
                    "`tsubasa-fast ask`. A rerun resumes where an interrupted run stopped. History format: "
                    "JSON or JSONL sessions, each {date, turns: [{speaker, text}]}; LoCoMo files as they are.")
    p.add_argument("--history", required=True, type=Path, help="the user's history (JSON, JSONL or LoCoMo)")
    p.add_argument("--user", required=True, help="the user's speaker name in the history")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    add_options(p, run_defaults(), PERSONALIZE_OPTIONS, overrides={("memory", "source"): {"choices": HISTORY_SOURCES}})
    p.set_defaults(func=cmd_personalize)


def config_from_args(args):
    """The RunConfig of the parsed options."""
    return run_config(args)


def cmd_personalize(args) -> int:
    from ..personalize import personalize

    report = personalize(args.history, args.user, args.out, config_from_args(args))
    print(json.dumps({"user": report["user"], "seconds": report["seconds"],
                      "peak_rss_mib": report["peak_rss_mib"]}))
    print(f"report: {args.out / 'report.md'}; loss curve: {report['loss_curve']}; "
          f"ask with: tsubasa-fast ask --store {args.out / 'store'} --user {report['user']} "
          f"--adapter {args.out / 'adapter'} \"...\"")
    return 0
