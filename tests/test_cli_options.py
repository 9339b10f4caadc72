"""The options of personalize, eval qa, teacher-cache, train and ask are generated from the
stage configs: their defaults are the library's, and each flag lands in its stage config."""

from dataclasses import fields, replace

import pytest

from tsubasa_fast.cli import build_parser, main
from tsubasa_fast.cli.options import OPTIONS, run_config
from tsubasa_fast.distill.configs import (AnswerConfig, StudentConfig, SynthConfig, TeacherConfig, TrainConfig,
                                          recipe)
from tsubasa_fast.memory.config import MemoryConfig
from tsubasa_fast.run_config import EvalConfig, RunConfig, eval_qa_config

BASE = ["personalize", "--history", "h.json", "--user", "Maya", "--out", "o"]
EVAL = ["eval", "qa", "--locomo", "x.json", "--method", "tsubasa"]


def test_every_option_names_a_real_field():
    classes = {"student": StudentConfig, "memory": MemoryConfig, "synth": SynthConfig, "teacher": TeacherConfig,
               "train": TrainConfig, "answer": AnswerConfig, "eval": EvalConfig, "run": RunConfig}
    for stage, opts in OPTIONS.items():
        names = {f.name for f in fields(classes[stage])}
        assert set(opts) <= names, (stage, set(opts) - names)


def test_defaults_are_the_recipe():
    synth, teacher, train = recipe()
    assert (synth.generator, synth.pairs_per_prompt, synth.check_answerable) == ("llm", 3, False)
    assert (train.epochs, train.lr, train.ce_weight) == (3.0, 3e-4, 1.0)
    # the standalone synth / teacher-cache / train commands start from the same values
    assert (SynthConfig(), TeacherConfig(), TrainConfig()) == (synth, teacher, train)
    # eval qa distils from the dataset's parsed observations: the recipe's rule writer
    obs_synth = recipe("observations")[0]
    assert obs_synth == replace(synth, generator="rule") and recipe("utterances")[0] == synth
    cfg = run_config(build_parser().parse_args(BASE))
    assert (cfg.synth, cfg.teacher, cfg.train) == (synth, teacher, train) and cfg == RunConfig()
    args = build_parser().parse_args(EVAL)
    cfg = run_config(args, eval_qa_config())
    assert (cfg.synth, cfg.teacher, cfg.train) == (obs_synth, teacher, train) and cfg == eval_qa_config().updated({"eval": {"method": "tsubasa"}})
    assert getattr(args, "synth.generator") == "rule"  # the option's default shows it
    for cfg in (run_config(build_parser().parse_args(BASE)), cfg):
        assert (cfg.student, cfg.answer) == (StudentConfig(), AnswerConfig())


def test_flags_land_in_their_stage():
    args = build_parser().parse_args(BASE + ["--synth-generator", "rule", "--answer-check", "--pairs-per-prompt", "1",
                                             "-d", "7", "--steps", "4", "--lr", "1e-3", "--ce-weight", "0",
                                             "--micro-batch-size", "2", "-k", "5", "--seed", "9", "--source",
                                             "utterances", "--no-uncited-turns", "--lora-r", "4",
                                             "--evidence-in-topk", "exclude"])
    cfg = run_config(args)
    assert cfg.synth == SynthConfig(generator="rule", pairs_per_prompt=1, check_answerable=True, seed=9,
                                    evidence_in_topk="exclude")
    assert cfg.teacher == TeacherConfig(d=7)
    # -k is the answer stage's; training copies it, and the run's seed is every stage's
    assert cfg.train == TrainConfig(steps=4, epochs=3.0, batch_size=8, micro_batch_size=2, lr=1e-3,
                                    warmup_ratio=0.1, ce_weight=0.0, k=5, seed=9)
    assert cfg.answer == AnswerConfig(k=5)
    assert cfg.memory == MemoryConfig(source="utterances", uncited_turns=False)
    assert cfg.student.alpha == 8
    assert cfg.student == StudentConfig(lora_r=4, seed=9)
    ev = run_config(build_parser().parse_args(EVAL + ["--no-answer-check", "--epochs", "1.5", "--seeds", "3",
                                                      "--closed-book", "--limit", "2", "--work", "w",
                                                      "--max-new-tokens", "9", "--embedder", "hashing"]))
    assert ev.eval == EvalConfig(method="tsubasa", seeds=3, closed_book=True, limit=2, work_dir="w")
    assert (ev.synth.check_answerable, ev.train.epochs, ev.answer.max_new_tokens, ev.memory.embedder) == \
        (False, 1.5, 9, "hashing")


def test_standalone_commands_read_their_stage_defaults():
    p = build_parser()
    train = p.parse_args(["train", "--store", "s", "--user", "u", "--qa", "q", "--cache", "c", "--out", "o"])
    for f in ("epochs", "batch_size", "micro_batch_size", "lr", "warmup_ratio", "tail", "ce_weight", "k",
              "grounding", "checkpoint_every", "seed", "report_to"):
        assert getattr(train, f"train.{f}") == getattr(TrainConfig(), f), f
    assert getattr(p.parse_args(["train", "--store", "s", "--user", "u", "--qa", "q", "--cache", "c", "--out", "o",
                                 "--no-memories"]), "train.grounding") is False
    tc = p.parse_args(["teacher-cache", "--store", "s", "--user", "u", "--qa", "q", "--out", "o", "--batch-size", "3"])
    assert (getattr(tc, "teacher.batch_size"), getattr(tc, "teacher.d")) == (3, TeacherConfig().d)
    ask = p.parse_args(["ask", "--store", "s", "--user", "u", "why?"])
    assert (getattr(ask, "answer.k"), getattr(ask, "answer.max_new_tokens")) == (3, 32)


def test_steps_and_epochs_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(BASE + ["--steps", "2", "--epochs", "1"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_bad_value_is_reported_as_its_flag(capsys, tmp_path):
    """The library names the field (lr, pairs_per_prompt); the CLI shows it as the flag."""
    assert main(EVAL[:3] + [str(tmp_path / "x.json"), "--method", "tsubasa", "--lr", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "tsubasa-fast: error: --lr: must be > 0, got -1.0"
    assert main(["teacher-cache", "--store", str(tmp_path), "--user", "u", "--qa", "q", "--out", "o",
                 "--temperature", "0"]) == 2
    assert capsys.readouterr().err.strip() == "tsubasa-fast: error: --temperature: must be > 0, got 0.0"


def test_memory_ingest_options_come_from_the_memory_config(capsys):
    from tsubasa_fast.memory.config import EMBEDDERS, MANAGERS, SOURCES, default_manager

    p = build_parser()
    args = p.parse_args(["memory", "ingest", "--store", "s", "--locomo", "x.json", "--source", "observations"])
    # no manager or embedder named: the command resolves them (an existing store keeps its embedder)
    assert (getattr(args, "memory.manager"), getattr(args, "memory.embedder")) == (None, None)
    assert getattr(args, "memory.uncited_turns") is MemoryConfig().uncited_turns
    assert [default_manager(s) for s in SOURCES] == ["static", "rule", "rule"]
    with pytest.raises(Exception, match="source"):
        default_manager("tweets")
    ingest = next(a for a in p._subparsers._group_actions[0].choices["memory"]._subparsers._group_actions[0]
                  .choices["ingest"]._actions if a.dest == "memory.manager")
    assert tuple(ingest.choices) == MANAGERS
    for flag, allowed in (("--source", SOURCES), ("--embedder", EMBEDDERS)):
        with pytest.raises(SystemExit):
            p.parse_args(["memory", "ingest", "--store", "s", "--locomo", "x.json", "--source", "observations",
                          flag, "nope"])
        err = capsys.readouterr().err
        assert all(c in err for c in allowed)
    with pytest.raises(SystemExit):  # --source stays required
        p.parse_args(["memory", "ingest", "--store", "s", "--locomo", "x.json"])


def test_demo_options_come_from_the_demo_config(capsys, tmp_path):
    """`tsubasa-fast demo` (make demo): --model, --4bit and --steps land in demo_config()'s stages,
    every other value stays the demo's; a missing model folder is one clear line, exit status 2."""
    from tsubasa_fast.demo import demo_config

    p = build_parser()
    cfg = run_config(p.parse_args(["demo"]), demo_config())
    assert cfg == demo_config() and cfg.train.checkpoint_every == 10
    args = p.parse_args(["demo", "--model", "m", "--no-4bit", "--steps", "7", "--out", str(tmp_path / "o")])
    assert run_config(args, demo_config()) == demo_config("m", 7, False)
    assert args.out == tmp_path / "o"
    with pytest.raises(SystemExit):
        p.parse_args(["demo", "--steps", "0"])
    assert "--steps" in capsys.readouterr().err
    assert main(["demo", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tsubasa-fast: error: ") and str(tmp_path / "none") in err and "\n" not in err
    assert not (tmp_path / "o").exists()  # nothing written before the model is found
