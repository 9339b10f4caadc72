"""The distillation options of personalize and eval qa are generated from the stage recipe:
their defaults are the library's, and each flag lands in its stage config."""

import pytest

from tsubasa_fast.cli import build_parser
from tsubasa_fast.cli.personalize import config_from_args
from tsubasa_fast.distill.configs import SynthConfig, TeacherConfig, TrainConfig, recipe
from tsubasa_fast.personalize import PersonalizeConfig

BASE = ["personalize", "--history", "h.json", "--user", "Maya", "--out", "o"]


def test_defaults_are_the_recipe():
    synth, teacher, train = recipe()
    assert (synth.generator, synth.pairs_per_prompt, synth.check_answerable) == ("llm", 3, False)
    assert (train.epochs, train.lr, train.ce_weight) == (3.0, 3e-4, 1.0)
    cfg = config_from_args(build_parser().parse_args(BASE))
    assert (cfg.synth, cfg.teacher, cfg.train) == (synth, teacher, train)
    assert PersonalizeConfig().synth == synth and PersonalizeConfig().train == train


def test_flags_land_in_their_stage():
    args = build_parser().parse_args(BASE + ["--synth-generator", "rule", "--answer-check", "--pairs-per-prompt", "1",
                                             "-d", "7", "--steps", "4", "--lr", "1e-3", "--ce-weight", "0",
                                             "--micro-batch-size", "2", "-k", "5", "--seed", "9"])
    cfg = config_from_args(args)
    assert cfg.synth == SynthConfig(generator="rule", pairs_per_prompt=1, check_answerable=True, seed=9)
    assert cfg.teacher == TeacherConfig(d=7)
    assert cfg.train == TrainConfig(steps=4, epochs=3.0, batch_size=8, micro_batch_size=2, lr=1e-3,
                                    warmup_ratio=0.1, ce_weight=0.0, k=5, seed=9)
    eval_args = build_parser().parse_args(["eval", "qa", "--locomo", "x.json", "--method", "tsubasa",
                                           "--no-answer-check", "--epochs", "1.5"])
    assert getattr(eval_args, "synth.check_answerable") is False and getattr(eval_args, "train.epochs") == 1.5


def test_steps_and_epochs_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(BASE + ["--steps", "2", "--epochs", "1"])
    assert "not allowed with argument" in capsys.readouterr().err
