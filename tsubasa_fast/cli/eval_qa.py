"""``tsubasa-fast eval qa``: LoCoMo question answering with a RAG baseline or TSUBASA, scored."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..eval.qa import METHODS
from . import group
from . import positive_int as _positive
from .distill import add_lora_rank_arg, add_student_args, student_config
from .options import add_stage_options, recipe_configs, stage_configs


def register(subparsers) -> None:
    ev = group(subparsers, "eval", "evaluate memory and models")
    p = ev.add_parser(
        "qa", help="answer LoCoMo questions and score them (F1, stemmed F1, BLEU-1, optional LLM judge)",
        description="Per conversation: build the memory (raw utterances, the dataset's observations, or "
                    "the evolved store for rag-evolved and tsubasa), for tsubasa synthesise QA and distil one "
                    "adapter, then "
                    "answer the dataset's questions from the top-k memories of both speakers (ranked "
                    "in one pool) and score them. Categories: 1 multi-hop, 2 temporal, 3 open-domain, "
                    "4 single-hop (overall), 5 adversarial (separately).")
    p.add_argument("--locomo", required=True, type=Path, help="LoCoMo JSON file (locomo10.json format)")
    p.add_argument("--conversation", nargs="+", metavar="ID", help="sample ids (default: all)")
    p.add_argument("--method", required=True, choices=METHODS,
                   help="rag-utterances / rag-observations / rag-evolved: the base model over raw turns, the "
                        "dataset's observations, or the evolved store; tsubasa: the distilled student over the "
                        "evolved store, with the paired rag-evolved scores and the distillation gain")
    p.add_argument("-k", type=_positive, default=3, help="memories in the answer prompt (default 3)")
    add_student_args(p)
    p.add_argument("--judge", default=None, metavar="MODEL_DIR",
                   help="local causal LM folder used as a CORRECT/WRONG judge (default: no judge)")
    p.add_argument("--embedder", choices=("minilm", "hashing"), default="minilm", help="memory embedder")
    p.add_argument("--limit", type=_positive, default=None, metavar="N",
                   help="answer only the first N questions of each conversation")
    p.add_argument("--max-new-tokens", type=_positive, default=32, help="answer length limit (default 32)")
    p.add_argument("--date-in-prompt", action=argparse.BooleanOptionalAction, default=True,
                   help="prefix undated memories (observations) with their session date in the prompt "
                        "(default on)")
    p.add_argument("--work", type=Path, default=None, metavar="DIR",
                   help="where stores, adapters and answers.jsonl go (default: a new temp dir)")
    add_stage_options(p, recipe_configs(), "tsubasa: ")
    add_lora_rank_arg(p, "tsubasa: ")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--seeds", type=_positive, default=1, metavar="N",
                   help="repeat with seeds seed..seed+N-1 (synthesis sampling and training); report the mean, "
                        "the standard deviation and each seed's scores (default 1)")
    p.add_argument("--closed-book", action="store_true",
                   help="answer from the question alone, no memories (what the weights hold)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the results as JSON")
    p.set_defaults(func=cmd_eval_qa)


def cmd_eval_qa(args) -> int:
    from ..eval.qa import QAEvalConfig, evaluate_qa, format_table
    from ..memory.locomo import load_locomo

    config = QAEvalConfig(
        method=args.method, k=args.k, student=student_config(args, lora_r=args.lora_r), judge=args.judge,
        embedder=args.embedder, limit=args.limit,
        max_new_tokens=args.max_new_tokens, date_in_prompt=args.date_in_prompt,
        work_dir=None if args.work is None else str(args.work),
        seed=args.seed, seeds=args.seeds, closed_book=args.closed_book, **stage_configs(args, recipe_configs()))
    if args.judge is not None and not Path(args.judge).is_dir():
        raise FileNotFoundError(f"--judge: no such model folder {args.judge}")
    convs = load_locomo(args.locomo, args.conversation)
    result = evaluate_qa(convs, config)
    print(format_table(result))
    print(f"work dir: {result['config']['work_dir']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
