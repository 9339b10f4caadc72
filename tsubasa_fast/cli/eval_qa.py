"""``tsubasa-fast eval qa``: LoCoMo question answering with a RAG baseline or TSUBASA, scored."""

from __future__ import annotations

import json
from pathlib import Path

from ..run_config import eval_qa_config
from . import group
from .options import add_options, run_config, run_defaults

# stage -> the fields eval qa offers as options (defaults: RunConfig's)
EVAL_OPTIONS = {
    "eval": ("method", "judge", "limit", "date_in_prompt", "seeds", "closed_book", "work_dir"),
    "answer": ("k", "max_new_tokens"),
    "student": ("model", "load_in_4bit", "device", "lora_r"),
    "memory": ("embedder",),
    "synth": ("generator", "pairs_per_prompt", "check_answerable", "evidence_in_topk", "abstain_share"),
    "teacher": ("d",),
    "train": ("epochs", "steps", "batch_size", "micro_batch_size", "lr", "ce_weight"),
    "run": ("seed",),
}


def register(subparsers) -> None:
    ev = group(subparsers, "eval", "evaluate memory and models")
    p = ev.add_parser(
        "qa", help="answer LoCoMo questions and score them (F1, stemmed F1, BLEU-1, optional LLM judge)",
        description="Per conversation: build the memory (raw utterances, the dataset's observations, or "
                    "the evolved store for rag-evolved and tsubasa), for tsubasa synthesise QA and distil one "
                    "adapter, then "
                    "answer the dataset's questions from the top-k memories of both speakers (ranked "
                    "in one pool) and score them. Categories: 1 multi-hop, 2 temporal, 3 open-domain, "
                    "4 single-hop (overall), 5 adversarial (separately). The synthesis, teacher and "
                    "training options apply to tsubasa.")
    p.add_argument("--locomo", required=True, type=Path, help="LoCoMo JSON file (locomo10.json format)")
    p.add_argument("--conversation", nargs="+", metavar="ID", help="sample ids (default: all)")
    add_options(p, run_defaults(eval_qa_config()), EVAL_OPTIONS,
                overrides={("eval", "method"): {"required": True}})
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the results as JSON")
    p.set_defaults(func=cmd_eval_qa)


def cmd_eval_qa(args) -> int:
    from ..eval.qa import evaluate_qa, format_table
    from ..memory.locomo import load_locomo

    config = run_config(args, eval_qa_config())
    if config.eval.judge is not None and not Path(config.eval.judge).is_dir():
        raise FileNotFoundError(f"--judge: no such model folder {config.eval.judge}")
    convs = load_locomo(args.locomo, args.conversation)
    result = evaluate_qa(convs, config)
    print(format_table(result))
    print(f"work dir: {result['config']['work_dir']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
