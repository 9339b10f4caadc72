"""The main job on the bundled sample user with a tiny Qwen3: stages, report, resume, errors."""

import json
from pathlib import Path

import pytest

import tsubasa_fast
from tsubasa_fast.cli import main
from tsubasa_fast.errors import InputError
from tsubasa_fast.memory.config import MemoryConfig
from tsubasa_fast.personalize import Personalizer
from tsubasa_fast.run_config import RunConfig

SAMPLE = Path(tsubasa_fast.__file__).parent / "data" / "sample_user.json"


def _config(model):
    from tsubasa_fast.distill.student import StudentConfig
    from tsubasa_fast.distill.synth import SynthConfig
    from tsubasa_fast.distill.train import TrainConfig

    return RunConfig(student=StudentConfig(model=model, lora_r=4),
                     memory=MemoryConfig(source="utterances", manager="rule", embedder="hashing"),
                     # raw utterances: the rule writer refuses them, the LLM writer takes them
                     synth=SynthConfig(generator="llm", pairs_per_prompt=1, check_answerable=False,
                                       check_well_formed=False, round_trip=False),  # random model
                     train=TrainConfig(steps=2, batch_size=4, micro_batch_size=4, lr=1e-3))


def test_personalize_runs_every_stage_and_resumes(tiny_qwen3, tmp_path):
    out = tmp_path / "run"
    lines = []

    class Crash(RuntimeError):
        pass

    p = Personalizer(SAMPLE, "Maya", out, _config(tiny_qwen3), echo=lines.append)

    def crash():
        raise Crash("killed during training")

    p.stage_train = crash
    with pytest.raises(Crash):
        p.run()
    state = json.loads((out / "state.json").read_text())
    assert [s for s in ("memory", "synth", "teacher", "train") if state["stages"].get(s, {}).get("done")] == [
        "memory", "synth", "teacher"]
    assert any(line.strip().startswith(("ADD", "UPDATE", "RECONCILE", "IGNORE")) for line in lines)

    lines.clear()
    report = Personalizer(SAMPLE, "Maya", out, _config(tiny_qwen3), echo=lines.append).run()
    assert [line for line in lines if "already done" in line] == [
        "[memory] already done, skipped", "[synth] already done, skipped", "[teacher] already done, skipped"]
    assert report["user"].endswith(":Maya") and report["training"]["steps"] == 2
    assert report["memory"]["live_memories"] > 10 and report["qa"]["kept"] > 5
    assert set(report["seconds"]) == {"memory", "synth", "teacher", "train"}
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    md = (out / "report.md").read_text()
    assert (out / "adapter" / "loss.png").is_file() and md.startswith("# Personal")
    qa = report["qa"]
    assert qa["facts"] + qa["phrasings"] == qa["kept"] and f"({qa['facts']} facts, {qa['phrasings']} more" in md
    # raw utterances: no observation, so no uncited turn either; the count is shown all the same
    assert report["memory"]["stats"]["uncited_turns"] == 0 and "0 of the user's turns no observation cites" in md
    # every stage's counts reach the report: the manager's decisions are the ops ingest applied
    man = report["memory"]["manager"]
    assert {k: v for k, v in man.items() if v} == report["memory"]["stats"]["ops"] and f"- memory, evolution: ADD {man['ADD']}" in md
    tc, tr = report["teacher_cache"], report["training"]
    assert tc["cached"] == report["qa"]["kept"] and tc["resumed"] == 0 and tc["truncated"] == 0
    assert f"- teacher cache: {tc['cached']} pairs cached, 0 already cached" in md and "0 newly cached prompts cut" in md
    assert (tr["resumed_from"], tr["reused"], tr["truncated"]) == (0, False, 0)  # the crash came before step 1
    assert "- training: resumed from step 0; adapter reused: False" in md
    # the epoch means (tests/distill/test_train_summary.py) reach the report, not one batch's loss
    assert tr["first_epoch_loss"] is not None and f"{tr['first_epoch_loss']:.4f} -> " in md
    assert "malformed items in replies; well-formed check: skipped" in md
    meta = json.loads((out / "adapter" / "tsubasa_adapter.json").read_text())
    assert meta["user"] == report["user"]


def test_bad_history_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "h.json"
    bad.write_text(json.dumps([{"date": "soon", "turns": [{"speaker": "Maya", "text": "hi"}]}]))
    assert main(["personalize", "--history", str(bad), "--user", "Maya", "--out", str(tmp_path / "o")]) == 2
    assert "date" in capsys.readouterr().err
    assert main(["personalize", "--history", str(SAMPLE), "--user", "Nobody", "--out", str(tmp_path / "o")]) == 2
    assert "Nobody" in capsys.readouterr().err
    # the library names its argument ("history"); the CLI shows it as the flag
    assert main(["personalize", "--history", str(tmp_path / "nope.json"), "--user", "Maya",
                 "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"tsubasa-fast: error: --history: no such file {tmp_path / 'nope.json'}"


def test_out_dir_of_another_user_is_refused(tiny_qwen3, tmp_path):
    out = tmp_path / "run"
    (out).mkdir()
    Personalizer(SAMPLE, "Maya", out, _config(tiny_qwen3))._save_state()
    with pytest.raises(ValueError, match="another history or user"):
        Personalizer(SAMPLE, "Sam", out, _config(tiny_qwen3))


def test_evidence_already_in_the_students_top_k_is_counted_and_can_be_excluded(tmp_path):
    """A pair whose question is its own memory's text retrieves that memory first; a pair whose
    question is another memory's text does not: 1 of 2 in the top-1."""
    from tsubasa_fast.distill.configs import SynthConfig
    from tsubasa_fast.distill.grounding import memory_retriever
    from tsubasa_fast.distill.stages import evidence_stage
    from tsubasa_fast.errors import InputError, StageError
    from tsubasa_fast.memory.store import open_store

    texts = ["[5 March 2023] Maya has a ginger cat named Miso.",
             "[14 May 2023] Maya applied for a UX researcher job at Harbour Health.",
             "[20 August 2023] Maya moved into a flat in Southville, Bristol."]
    store = open_store(tmp_path / "store", "hashing")
    for i, t in enumerate(texts):
        store.add("maya", t, op_key=f"k{i}")
    store.close()
    retrieve = memory_retriever(tmp_path / "store", "maya", 1)

    def fresh():
        return ([{"question": texts[0], "context": texts[0]}, {"question": texts[2], "context": texts[1]}],
                {"kept": 2, "dropped": {}})

    pairs, report = fresh()
    assert evidence_stage(pairs, report, retrieve, 1, "include") == pairs
    assert report["evidence_in_topk"] == {"k": 1, "pairs": 2, "in_topk": 1, "share": 0.5, "policy": "include"}
    assert [q["evidence_in_topk"] for q in pairs] == [True, False]
    pairs, report = fresh()
    assert evidence_stage(pairs, report, retrieve, 1, "exclude") == [pairs[1]]
    assert (report["kept"], report["dropped"]) == (1, {"evidence_in_topk": 1})
    with pytest.raises(StageError, match="every pair's evidence is already in the student's top-1"):
        evidence_stage(fresh()[0][:1], fresh()[1], retrieve, 1, "exclude")
    retrieve.store.close()
    with pytest.raises(InputError) as e:
        SynthConfig(evidence_in_topk="sometimes")
    assert e.value.field == "evidence_in_topk"


def test_a_history_offers_no_dataset_observations(tmp_path):
    with pytest.raises(InputError) as e:
        Personalizer(SAMPLE, "Maya", tmp_path / "run", RunConfig(memory=MemoryConfig(source="observations")))
    assert e.value.field == "source" and not (tmp_path / "run").exists()
