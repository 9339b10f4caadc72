"""`eval qa` end to end on a tiny LoCoMo file with a tiny random Qwen3: schema, counts, errors."""

import json

import pytest

from tests.memory.conftest import tiny_locomo
from tsubasa_fast.cli import main
from tsubasa_fast.eval.metrics import score_answer

KEYS = {"f1", "f1_stemmed", "bleu1", "judge"}


@pytest.fixture(scope="module")
def locomo(tmp_path_factory):
    """Two sessions, six questions (categories 1, 2, 4, 4, 3 and an adversarial 5)."""
    data = tiny_locomo(n_sessions=2)
    data[0]["qa"] = [
        {"question": "What class did Ann go to?", "answer": "hiking trip", "evidence": ["D1:1"], "category": 4},
        {"question": "What does Bob enjoy?", "answer": "new puppy", "evidence": ["D1:2"], "category": 4},
        {"question": "When did Ann go hiking?", "answer": "1 May 2023", "evidence": ["D1:1"], "category": 2},
        {"question": "What do Ann and Bob like?", "answer": "hiking, puppy", "evidence": ["D1:1", "D2:2"],
         "category": 1},
        {"question": "Would Bob like dogs?", "answer": "Yes; he enjoys his puppy", "evidence": ["D1:2"],
         "category": 3},
        {"question": "What did Bob realise about pottery?", "evidence": ["D2:2"], "category": 5,
         "adversarial_answer": "nothing"},
    ]
    path = tmp_path_factory.mktemp("locomo") / "tiny.json"
    path.write_text(json.dumps(data))
    return path


def _check(result, method, n_questions, answers):
    """The result's numbers recomputed by hand from the per-question rows in answers.jsonl."""
    assert result["method"] == method
    assert result["questions"] == n_questions - 1  # categories 1-4
    assert set(result["overall"]) == KEYS and result["overall"]["judge"] is None
    assert set(result["by_category"]) == {"1", "2", "3", "4", "5"}
    assert result["by_category"]["4"]["questions"] == 2 and result["by_category"]["5"]["questions"] == 1
    for row in answers:  # each row's scores belong to its own prediction and gold answer
        assert {k: row[k] for k in ("f1", "f1_stemmed", "bleu1")} == score_answer(
            row["prediction"], row["answer"], row["category"])
    for cats, got in [((1, 2, 3, 4), result["overall"]),
                      *[((int(c),), v) for c, v in result["by_category"].items()]]:
        sel = [r for r in answers if r["category"] in cats]
        for k in ("f1", "f1_stemmed", "bleu1"):
            assert got[k] == pytest.approx(100.0 * sum(r[k] for r in sel) / len(sel))
    assert result["mean_retrieved_tokens"] == pytest.approx(
        sum(r["retrieved_tokens"] for r in answers) / len(answers))
    assert all(isinstance(v, float) for v in result["seconds"].values()) and "answer" in result["seconds"]
    assert result["category_names"]["5"] == "adversarial" and result["notes"]
    assert result["seeds"] == [0] and result["per_seed_overall"] == [result["overall"]]
    assert set(result["overall_std"].values()) == {None}  # one seed: no spread
    if method == "tsubasa":  # the paired arm: the same questions answered with the adapter off
        base = [{**r, **r["base"]} for r in answers]
        for row in base:
            assert {k: row[k] for k in ("f1", "f1_stemmed", "bleu1")} == score_answer(
                row["prediction"], row["answer"], row["category"])
        sel = [r for r in base if r["category"] in (1, 2, 3, 4)]
        for k in ("f1", "f1_stemmed", "bleu1"):
            want = 100.0 * sum(r[k] for r in sel) / len(sel)
            assert result["rag_evolved"]["overall"][k] == pytest.approx(want)
            assert result["distillation_gain"][k] == pytest.approx(result["overall"][k] - want)
    else:
        assert "distillation_gain" not in result and all("base" not in r for r in answers)


@pytest.mark.parametrize("method", ["rag-utterances", "rag-observations", "rag-evolved", "tsubasa"])
def test_eval_qa_methods(method, locomo, tiny_qwen3, tmp_path, capsys):
    out = tmp_path / "qa.json"
    argv = ["eval", "qa", "--locomo", str(locomo), "--conversation", "conv-t", "--method", method, "-k", "2",
            "--model", tiny_qwen3, "--device", "cpu", "--embedder", "hashing", "--max-new-tokens", "4",
            "--work", str(tmp_path / "work"), "--json", str(out)]
    if method == "tsubasa":
        argv += ["--steps", "1", "--batch-size", "2", "--lora-r", "2", "--no-answer-check"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "overall (1-4)" in printed and "5 adversarial" in printed
    assert ("distillation gain" in printed) == (method == "tsubasa")
    result = json.loads(out.read_text())
    conv_dir = tmp_path / "work" / method / "conv-t"
    answers = [json.loads(line) for line in (conv_dir / "answers.jsonl").read_text().splitlines()]
    assert [a["question"] for a in answers] == [q["question"] for q in json.loads(locomo.read_text())[0]["qa"]]
    _check(result, method, 6, answers)
    if method == "tsubasa":
        assert (conv_dir / "adapter" / "adapter_model.safetensors").is_file()
        assert result["conversations"]["conv-t"]["distill"]["pairs"] > 0
        # the teacher's evidence is the memory as the student is shown it: with its session date
        # (the store keeps observations undated), so the evidence check compares like with like
        pairs = [json.loads(line) for line in (conv_dir / "qa.jsonl").read_text().splitlines()]
        session_day = {1: "1 May 2023", 2: "2 May 2023"}  # the fixture's "1:56 pm on 1 May, 2023", ...
        for p in pairs:
            assert p["context"] == f"[{session_day[p['sessions'][0]]}] " + p["context"].split("] ", 1)[1]
            assert not p["context"].split("] ", 1)[1].startswith("[")  # dated once
        ev = result["conversations"]["conv-t"]["distill"]["evidence_in_topk"]
        assert ev["in_topk"] == sum(p["evidence_in_topk"] for p in pairs)
        assert any("ONE adapter per conversation" in n for n in result["notes"])


def test_eval_qa_seeds_and_closed_book(locomo, tiny_qwen3, tmp_path, monkeypatch):
    from tsubasa_fast.llm import ChatLM

    calls = []
    real_call = ChatLM.__call__

    def counted(self, messages, max_new_tokens=None, adapter=None):
        calls.append(messages)
        return real_call(self, messages, max_new_tokens, adapter=adapter)

    monkeypatch.setattr(ChatLM, "__call__", counted)
    out = tmp_path / "qa.json"
    assert main(["eval", "qa", "--locomo", str(locomo), "--method", "rag-evolved", "--limit", "3",
                 "--seeds", "2", "--seed", "5", "--closed-book", "--model", tiny_qwen3, "--device", "cpu",
                 "--embedder", "hashing", "--max-new-tokens", "3", "--work", str(tmp_path / "work"),
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["seeds"] == [5, 6] and set(result["conversations"]) == {"seed-5", "seed-6"}
    per_seed = []
    for seed in (5, 6):
        rows = [json.loads(line) for line in
                (tmp_path / "work" / "rag-evolved" / f"seed-{seed}" / "conv-t" / "answers.jsonl").read_text().splitlines()]
        assert len(rows) == 3 and all(r["memories"] == [] and r["retrieved_tokens"] == 0 for r in rows)
        per_seed.append(100.0 * sum(r["f1"] for r in rows) / 3)  # the first three are categories 4, 4, 2
    assert [o["f1"] for o in result["per_seed_overall"]] == pytest.approx(per_seed)
    assert result["overall"]["f1"] == pytest.approx(sum(per_seed) / 2)
    mean = sum(per_seed) / 2
    assert result["overall_std"]["f1"] == pytest.approx((sum((v - mean) ** 2 for v in per_seed)) ** 0.5)
    assert result["mean_retrieved_tokens"] == 0.0 and any("closed book" in n for n in result["notes"])
    # the base model's greedy answers do not depend on the seed: generated once, reused by seed 6
    assert len(calls) == 3
    rows5, rows6 = ([json.loads(line) for line in (tmp_path / "work" / "rag-evolved" / f"seed-{s}" / "conv-t" /
                                                   "answers.jsonl").read_text().splitlines()] for s in (5, 6))
    assert [r["prediction"] for r in rows5] == [r["prediction"] for r in rows6]


def test_tsubasa_with_no_surviving_pair_is_an_error(locomo, tiny_qwen3, tmp_path, capsys):
    # a random model answers none of its own questions, so the answerability filter keeps nothing
    assert main(["eval", "qa", "--locomo", str(locomo), "--method", "tsubasa", "--limit", "1",
                 "--model", tiny_qwen3, "--device", "cpu", "--embedder", "hashing", "--steps", "1",
                 "--synth-generator", "rule", "--answer-check",
                 "--lora-r", "2", "--work", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert "no synthesised QA pair survived" in err and "nothing to distil" in err


def test_eval_qa_limit_and_judge(locomo, tiny_qwen3, tmp_path):
    out = tmp_path / "qa.json"
    assert main(["eval", "qa", "--locomo", str(locomo), "--method", "rag-observations", "--limit", "2",
                 "--model", tiny_qwen3, "--device", "cpu", "--embedder", "hashing", "--max-new-tokens", "2",
                 "--judge", tiny_qwen3, "--work", str(tmp_path / "work"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["questions"] == 2 and set(result["by_category"]) == {"4"}
    assert "CORRECT or WRONG" in result["judge_prompt"] and "judge" in result["seconds"]
    rows = [json.loads(line) for line in
            (tmp_path / "work" / "rag-observations" / "conv-t" / "answers.jsonl")
            .read_text().splitlines()]
    judged = [r["judge"] for r in rows if r["judge"] is not None]
    assert all(j in (0, 1) for j in judged)  # a verdict is CORRECT (1) or WRONG (0), never a score
    # a random model rarely names a label: the overall judge is the mean of those that do, else None
    assert result["overall"]["judge"] == (pytest.approx(100.0 * sum(judged) / len(judged)) if judged else None)


def test_eval_qa_clear_errors(locomo, tmp_path, capsys):
    assert main(["eval", "qa", "--locomo", str(tmp_path / "nope.json"), "--method", "tsubasa"]) == 2
    assert "nope.json" in capsys.readouterr().err
    assert main(["eval", "qa", "--locomo", str(locomo), "--conversation", "conv-zz",
                 "--method", "rag-utterances"]) == 2
    assert "conv-zz" in capsys.readouterr().err
    assert main(["eval", "qa", "--locomo", str(locomo), "--method", "rag-utterances",
                 "--judge", str(tmp_path / "no-judge")]) == 2
    assert "--judge" in capsys.readouterr().err
