"""RunConfig: one validated config per stage; values several stages read are set once."""

import pytest

from tsubasa_fast.distill.configs import AnswerConfig, StudentConfig, SynthConfig, TeacherConfig, TrainConfig, recipe
from tsubasa_fast.errors import InputError
from tsubasa_fast.memory.config import MemoryConfig
from tsubasa_fast.run_config import EvalConfig, RunConfig


def test_a_stage_left_out_gets_its_default_and_the_recipe():
    synth, teacher, train = recipe()
    cfg = RunConfig()
    assert (cfg.synth, cfg.teacher, cfg.train) == (synth, teacher, train)
    assert (cfg.student, cfg.memory, cfg.answer, cfg.eval) == (StudentConfig(), MemoryConfig(), AnswerConfig(),
                                                               EvalConfig())


def test_the_run_seed_is_every_stages_seed_and_training_uses_the_answer_prompt():
    cfg = RunConfig(seed=4, answer=AnswerConfig(k=6, retrieval="dense", grounding=False))
    assert (cfg.synth.seed, cfg.train.seed, cfg.student.seed) == (4, 4, 4)
    assert (cfg.train.k, cfg.train.retrieval, cfg.train.grounding) == (6, "dense", False)
    # set on the copy only: the owner takes it
    cfg = RunConfig(train=TrainConfig(k=1, seed=2))
    assert (cfg.answer.k, cfg.seed, cfg.synth.seed, cfg.student.seed) == (1, 2, 2, 2)
    # the caller's stage objects are not modified
    train = TrainConfig(k=1)
    RunConfig(answer=AnswerConfig(k=1), train=train, seed=3)
    assert train.seed == 0


@pytest.mark.parametrize("kwargs, field, shown", [
    ({"answer": AnswerConfig(k=5), "train": TrainConfig(k=1)}, "k", "answer.k=5, train.k=1"),
    ({"seed": 1, "synth": SynthConfig(seed=2)}, "seed", "seed=1, synth.seed=2"),
    ({"answer": AnswerConfig(retrieval="dense"), "train": TrainConfig(retrieval="hybrid")}, "retrieval",
     "answer.retrieval='dense', train.retrieval='hybrid'"),
])
def test_two_different_values_of_one_shared_setting_are_refused(kwargs, field, shown):
    with pytest.raises(InputError) as e:
        RunConfig(**kwargs)
    assert e.value.field == field and e.value.message.endswith(shown)


def test_updated_changes_a_shared_value_everywhere():
    cfg = RunConfig(seed=3, answer=AnswerConfig(k=4))
    new = cfg.updated({"run": {"seed": 8}, "answer": {"k": 2}, "teacher": {"d": 9}})
    assert (new.seed, new.synth.seed, new.train.seed, new.student.seed) == (8, 8, 8, 8)
    assert (new.answer.k, new.train.k, new.teacher.d) == (2, 2, 9)
    assert (cfg.seed, cfg.train.k, cfg.teacher.d) == (3, 4, TeacherConfig().d)  # the original is unchanged
    assert cfg.with_seed(5) == cfg.updated({"run": {"seed": 5}})
    with pytest.raises(InputError, match="unknown stage 'trian'"):
        cfg.updated({"trian": {"lr": 1.0}})


@pytest.mark.parametrize("make, field", [
    (lambda: RunConfig(train=AnswerConfig()), "train"),
    (lambda: RunConfig(train=TrainConfig(lr=0)), "lr"),
    (lambda: RunConfig(seed="0"), "seed"),
    (lambda: MemoryConfig(manager="mem0"), "manager"),
    (lambda: MemoryConfig(source="web"), "source"),
    (lambda: AnswerConfig(k=0), "k"),
    (lambda: AnswerConfig(retrieval="bm25"), "retrieval"),
    (lambda: TeacherConfig(d=0), "d"),
    (lambda: TeacherConfig(temperature=0.0), "temperature"),
    (lambda: TeacherConfig(logprob_dtype="int8"), "logprob_dtype"),
    (lambda: EvalConfig(method="rag"), "method"),
    (lambda: EvalConfig(seeds=0), "seeds"),
    (lambda: EvalConfig(limit=0), "limit"),
    (lambda: SynthConfig(generator="gpt"), "generator"),
    (lambda: SynthConfig(limit=0), "limit"),
    (lambda: SynthConfig(pairs_per_prompt=True), "pairs_per_prompt"),
    (lambda: SynthConfig(f1_threshold=1.5), "f1_threshold"),
    (lambda: SynthConfig(min_context_overlap=-0.1), "min_context_overlap"),
])
def test_bad_values_name_their_field(make, field):
    with pytest.raises(InputError) as e:
        make()
    assert e.value.field == field
