"""The main job on the bundled sample user with a tiny Qwen3: stages, report, resume, errors."""

import json
from pathlib import Path

import pytest

import tsubasa_fast
from tsubasa_fast.cli import main
from tsubasa_fast.personalize import PersonalizeConfig, Personalizer

SAMPLE = Path(tsubasa_fast.__file__).parent / "data" / "sample_user.json"


def _config(model):
    from tsubasa_fast.distill.synth import SynthConfig
    from tsubasa_fast.distill.train import TrainConfig

    return PersonalizeConfig(model=model, source="utterances", manager="rule", embedder="hashing", lora_r=4,
                             # raw utterances: the rule writer refuses them, the LLM writer takes them
                             synth=SynthConfig(generator="llm", pairs_per_prompt=1, check_answerable=False,
                                               check_well_formed=False),  # random model
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
    assert (out / "adapter" / "loss.png").is_file() and (out / "report.md").read_text().startswith("# Personal")
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
