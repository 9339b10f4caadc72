"""Student against base on a finished demo folder: redo some stages with other settings, re-score.

Copies a finished ``make demo`` output folder (its store, QA pairs and teacher cache), forgets the
stages named by ``--redo`` and every later one (default: teacher and train), runs them again through
``Personalizer.run()`` with the demo's config changed by ``--set`` (e.g. ``train.epochs=8`` or
``synth.pairs_per_prompt=2``) and prints the demo's table of held-back questions. The memory
stays the same, so the base model's answers do too and only the distillation moves:

    python -m benchmarks.demo_student demo_out /tmp/variant --redo synth,teacher,train --set synth.pairs_per_prompt=2
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import statistics
import time
from pathlib import Path

from tsubasa_fast import demo
from tsubasa_fast.history import load_eval_questions
from tsubasa_fast.personalize import STAGES, Personalizer

_OUTPUTS = {"synth": ("qa.jsonl", "qa.report.json"), "teacher": ("cache",), "train": ("adapter",)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="a finished demo output folder")
    ap.add_argument("out", help="new folder for the variant (replaced)")
    ap.add_argument("--redo", default="teacher,train", help="stages to run again (default teacher,train)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change the demo config, e.g. train.lr=1e-4 (repeatable)")
    args = ap.parse_args(argv)
    named = [s for s in args.redo.split(",") if s]
    if not named or "memory" in named or any(s not in STAGES for s in named):
        ap.error(f"--redo: stages among {STAGES[1:]}")
    redo = list(STAGES[min(STAGES.index(s) for s in named):])  # a stage's outputs feed the later ones
    src, out = Path(args.src), Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("adapter"))
    state = json.loads((out / "state.json").read_text())
    for stage in redo:
        state["stages"].pop(stage, None)
        for name in _OUTPUTS[stage]:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    (out / "state.json").write_text(json.dumps(state))
    cfg = demo.demo_config()
    for item in args.set:
        key, _, value = item.partition("=")
        obj, _, name = key.rpartition(".")
        target = getattr(cfg, obj) if obj else cfg
        if not hasattr(target, name):
            ap.error(f"--set: no config field {key!r}")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass  # a plain string
        setattr(target, name, value)
    t0 = time.perf_counter()
    p = Personalizer(demo.SAMPLE, demo.USER, out, cfg, echo=print)
    report = p.run()
    rows = demo.evaluate(p, load_eval_questions(demo.SAMPLE))
    base, student = (statistics.mean(r[k] for r in rows) for k in ("f1_base", "f1_student"))
    print(json.dumps({"set": args.set, "redo": redo, "pairs": (report["qa"] or {}).get("kept"),
                      "steps": (report["training"] or {}).get("steps"), "f1_base": round(base, 4),
                      "f1_student": round(student, 4), "gain": round(student - base, 4),
                      "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
