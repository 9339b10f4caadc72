"""`make demo` runs tsubasa_fast.demo: here with a tiny Qwen3 and the fast settings."""

from tsubasa_fast import demo
from tsubasa_fast.history import load_eval_questions

from .test_personalize import _config


def test_demo_personalises_and_compares_on_held_back_questions(tiny_qwen3, tmp_path):
    lines = []
    result = demo.run(tmp_path / "demo", config=_config(tiny_qwen3), echo=lines.append, questions=3)
    assert len(result["answers"]) == 3
    qs = load_eval_questions(demo.SAMPLE)
    assert [a["question"] for a in result["answers"]] == [q.question for q in qs[:3]]
    assert all(0.0 <= a["f1_base"] <= 1.0 and 0.0 <= a["f1_student"] <= 1.0 for a in result["answers"])
    text = "\n".join(lines)
    assert "base + retrieval" in text and "student + retrieval" in text
    assert "mean token F1 over 3 held-back questions" in text
    assert any(line.strip().startswith(("ADD", "UPDATE", "RECONCILE", "IGNORE")) for line in lines)
    assert (tmp_path / "demo" / "report.md").is_file()
    assert len(qs) >= 12
