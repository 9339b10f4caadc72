"""CLI options generated from the distillation stage configs.

Each option's default is read from the config object the command starts from (for
personalize and eval qa: :func:`tsubasa_fast.distill.configs.recipe`), so a default is
written once, in the library; the CLI only names the flags. Parsed values land in
``args`` under ``"<stage>.<field>"`` and :func:`stage_configs` folds them back into copies
of the configs, where the dataclasses validate them.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from . import positive_int

# stage -> field -> (flag, help, argparse keywords)
OPTIONS = {
    "synth": {
        "generator": ("--synth-generator", "who writes the training questions", {"choices": ("llm", "rule")}),
        "pairs_per_prompt": ("--pairs-per-prompt", "answers (so questions) per memory", {"type": positive_int}),
        "check_answerable": ("--answer-check", "the answerability re-ask filter (the llm writer has its round trip)",
                             {"action": argparse.BooleanOptionalAction}),
    },
    "teacher": {"d": ("-d", "teacher entries per token", {"type": positive_int})},
    "train": {
        "epochs": ("--epochs", "passes over the QA pairs", {"type": float}),
        "steps": ("--steps", "optimizer steps (instead of --epochs)", {"type": positive_int}),
        "batch_size": ("--batch-size", "examples per optimizer step", {"type": positive_int}),
        "micro_batch_size": ("--micro-batch-size", "examples per forward pass", {"type": positive_int}),
        "lr": ("--lr", "peak learning rate", {"type": float}),
        "ce_weight": ("--ce-weight", "weight of a CE term on the answer beside the top-d KL", {"type": float}),
    },
}


def recipe_configs() -> dict:
    """stage -> config of :func:`tsubasa_fast.distill.configs.recipe` (light: no torch import)."""
    from ..distill.configs import recipe

    return dict(zip(("synth", "teacher", "train"), recipe()))


def add_stage_options(p: argparse.ArgumentParser, configs: dict, help_prefix: str = "") -> None:
    """The options of :data:`OPTIONS` for the stages in ``configs`` (stage -> config object),
    with that object's values as defaults; --steps and --epochs exclude each other."""
    length = p.add_mutually_exclusive_group()
    for stage, cfg in configs.items():
        for field, (flag, text, kw) in OPTIONS[stage].items():
            default = getattr(cfg, field)
            target = length if field in ("steps", "epochs") else p
            shown = "" if default is None else f" (default {default})"
            target.add_argument(flag, dest=f"{stage}.{field}", default=default, help=f"{help_prefix}{text}{shown}",
                                **kw)


def stage_configs(args: argparse.Namespace, configs: dict, **fixed) -> dict:
    """Copies of ``configs`` with the parsed options applied (``fixed``: stage -> field values
    every run sets, e.g. the seed). --steps given: the epochs no longer count."""
    out = {}
    for stage, cfg in configs.items():
        values = {f: getattr(args, f"{stage}.{f}") for f in OPTIONS[stage]}
        out[stage] = replace(cfg, **values, **fixed.get(stage, {}))
    return out
