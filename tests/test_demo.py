"""`make demo` (`tsubasa-fast demo`) runs tsubasa_fast.demo: here with a tiny Qwen3 and the fast settings."""

import statistics

from tsubasa_fast import demo
from tsubasa_fast.eval.metrics import token_f1
from tsubasa_fast.history import load_eval_questions

from .test_personalize import _config


def test_demo_personalises_and_compares_on_held_back_questions(tiny_qwen3, tmp_path):
    lines = []
    result = demo.run(tmp_path / "demo", config=_config(tiny_qwen3), echo=lines.append, questions=3)
    assert len(result["answers"]) == 3
    qs = load_eval_questions(demo.SAMPLE)
    assert [a["question"] for a in result["answers"]] == [q.question for q in qs[:3]]
    # each score belongs to its own answer and reference (token_f1 is checked by hand in test_metrics)
    for a, q in zip(result["answers"], qs):
        assert a["reference"] == q.answer
        assert a["f1_base"] == token_f1(a["base"], q.answer)
        assert a["f1_student"] == token_f1(a["student"], q.answer)
    base = statistics.mean(a["f1_base"] for a in result["answers"])
    student = statistics.mean(a["f1_student"] for a in result["answers"])
    text = "\n".join(lines)
    assert (f"mean token F1 over 3 held-back questions: base + retrieval {base:.3f}, "
            f"distilled student + retrieval {student:.3f}") in text
    assert any(line.strip().startswith(("ADD", "UPDATE", "RECONCILE", "IGNORE")) for line in lines)
    assert (tmp_path / "demo" / "report.md").is_file()
    assert len(qs) >= 12
