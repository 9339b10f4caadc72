"""`tsubasa-fast personalize`: the whole method for one user, resumable stage by stage."""

from __future__ import annotations

import json
from pathlib import Path

from . import positive_int
from .distill import add_lora_rank_arg, add_student_args, student_config
from .options import add_stage_options, recipe_configs, stage_configs


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
    add_student_args(p)
    p.add_argument("--source", choices=("llm", "utterances"), default="llm",
                   help="memory writing: LLM observation extraction (default) or raw utterances")
    p.add_argument("--manager", choices=("llm", "rule", "static"), default="rule",
                   help="memory evolution manager (default rule)")
    p.add_argument("--embedder", choices=("minilm", "hashing"), default="minilm", help="memory embedder")
    add_stage_options(p, recipe_configs())
    p.add_argument("-k", type=positive_int, default=3, help="memories in the student prompt (default 3)")
    add_lora_rank_arg(p)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_personalize)


def config_from_args(args):
    from ..personalize import PersonalizeConfig

    stages = stage_configs(args, recipe_configs(), synth={"seed": args.seed}, train={"k": args.k, "seed": args.seed})
    return PersonalizeConfig(student=student_config(args, lora_r=args.lora_r), source=args.source,
                             manager=args.manager, embedder=args.embedder, **stages)


def cmd_personalize(args) -> int:
    from ..personalize import personalize

    report = personalize(args.history, args.user, args.out, config_from_args(args))
    print(json.dumps({"user": report["user"], "seconds": report["seconds"],
                      "peak_rss_mib": report["peak_rss_mib"]}))
    print(f"report: {args.out / 'report.md'}; loss curve: {report['loss_curve']}; "
          f"ask with: tsubasa-fast ask --store {args.out / 'store'} --user {report['user']} "
          f"--adapter {args.out / 'adapter'} \"...\"")
    return 0
