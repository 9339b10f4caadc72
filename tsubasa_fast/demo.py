"""`make demo`: the main job on the bundled sample user, then held-back questions.

Personalises the default model (SmolLM2-135M-Instruct on CPU) to "Maya", a history written
for this project (9 dated sessions over a year in which she moves city, changes job, reverses
a preference and keeps a weekly habit): memory writing with the decisions printed as they
happen, self-learned QA, teacher cache, student training. Then every held-back question of
the sample is answered by the base model with retrieval and by the distilled student with
retrieval, scored with token F1 against the reference answer. Rerunning resumes (or reuses)
the finished stages in ``out``. The command: ``tsubasa-fast demo`` (``make demo``, :mod:`.cli.demo`).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from .eval.metrics import token_f1
from .history import load_eval_questions
from .personalize import Personalizer
from .run_config import RunConfig

SAMPLE = Path(__file__).parent / "data" / "sample_user.json"
USER = "Maya"


def demo_config(model: str | None = None, steps: int | None = None,
                load_in_4bit: bool | None = None) -> RunConfig:
    """The defaults of personalize (grounded LLM extraction falling back, counted, to the
    user's own words in the third person where the small model invents; the rule manager; the
    stage recipe of :func:`.distill.configs.recipe`), with a checkpoint every 10 steps."""
    return RunConfig().updated({"student": {"model": model, "load_in_4bit": load_in_4bit},
                                "train": {"steps": steps, "checkpoint_every": 10}})


def evaluate(personalizer: Personalizer, questions, echo=print) -> list[dict]:
    """Answers every question with base + retrieval and student + retrieval (the run's answer
    config: as ``ask`` answers); prints a table."""
    from .distill.answer import Answerer

    answerer = Answerer(personalizer.out / "store", personalizer.user_id, student=personalizer.student,
                        config=personalizer.config.answer)
    personalizer.student.load_adapter_weights(personalizer.out / "adapter")
    rows = []
    for q in questions:
        base = answerer.answer(q.question, adapter=False)
        tuned = answerer.answer(q.question, adapter=True)
        rows.append({"question": q.question, "reference": q.answer, "category": q.category,
                     "base": base.text, "student": tuned.text,
                     "f1_base": token_f1(base.text, q.answer), "f1_student": token_f1(tuned.text, q.answer)})
    _print_table(rows, echo)
    return rows


def _clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_table(rows: list[dict], echo) -> None:
    echo("")
    echo(f"{'question':44} {'reference':22} {'base + retrieval':30} {'F1':>4}  {'student + retrieval':30} {'F1':>4}")
    for r in rows:
        echo(f"{_clip(r['question'], 44):44} {_clip(r['reference'], 22):22} {_clip(r['base'], 30):30} "
             f"{r['f1_base']:4.2f}  {_clip(r['student'], 30):30} {r['f1_student']:4.2f}")
    echo(f"mean token F1 over {len(rows)} held-back questions: base + retrieval "
         f"{statistics.mean(r['f1_base'] for r in rows):.3f}, distilled student + retrieval "
         f"{statistics.mean(r['f1_student'] for r in rows):.3f}")


def run(out: str | Path = "demo_out", model: str | None = None, steps: int | None = None,
        config: RunConfig | None = None, echo=print, questions: int | None = None,
        load_in_4bit: bool | None = None) -> dict:
    """The demo into ``out``: ``config`` (default :func:`demo_config` of ``model``, ``steps`` and
    ``load_in_4bit``), then the first ``questions`` held-back questions (default all)."""
    t0 = time.perf_counter()
    config = config or demo_config(model, steps, load_in_4bit)
    p = Personalizer(SAMPLE, USER, out, config, echo=echo)
    echo(f"personalising {p.user_id} from {SAMPLE.name} into {p.out}/ "
         f"(model: {config.student.model or 'SmolLM2-135M-Instruct'})")
    report = p.run()
    qs = load_eval_questions(SAMPLE)[:questions]
    rows = evaluate(p, qs, echo)
    echo(f"\nreport: {p.out / 'report.md'} (and report.json); loss curve: {report['loss_curve']}")
    echo(f"ask more: tsubasa-fast ask --store {p.out / 'store'} --user {p.user_id} --adapter {p.out / 'adapter'} "
         f"\"Where does Maya live now?\"")
    echo(f"{time.perf_counter() - t0:.0f}s in all")
    return {"report": report, "answers": rows}
