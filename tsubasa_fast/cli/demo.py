"""`tsubasa-fast demo` (``make demo``): the main job on the bundled sample user, then its
held-back questions answered by the base and by the distilled student (:mod:`tsubasa_fast.demo`)."""

from __future__ import annotations

from pathlib import Path

from .options import add_options, run_config


def register(subparsers) -> None:
    from ..demo import demo_config

    base = demo_config()
    p = subparsers.add_parser(
        "demo", help="personalise the bundled sample user and compare base and student",
        description="Personalise the default model (or --model) to Maya, the bundled sample user (memory "
                    "decisions printed as they happen, self-learned QA, teacher cache, training), then answer "
                    "her held-back questions with the base model and with the distilled student, both with "
                    "retrieval, and print their mean token F1. A rerun resumes the finished stages in --out.")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output directory (default demo_out/)")
    add_options(p, {"student": base.student, "train": base.train},
                {"student": ("model", "load_in_4bit"), "train": ("steps",)},
                overrides={("train", "steps"): {"help": "optimizer steps (default: the recipe's epochs)"}})
    p.set_defaults(func=lambda args: cmd_demo(args, base))


def cmd_demo(args, base) -> int:
    from ..demo import run

    run(args.out, config=run_config(args, base))
    return 0
