"""TopDKLMixin on TRL's SFTTrainer (the README's TRL lines): one accumulated optimizer step on the
tiny random Qwen3 + LoRA of test_trainer.py equals the float64 reference over full logits."""

import pytest

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")  # a dependency of trl

from tsubasa_fast.integrations import TopDDataCollator, TopDKLMixin  # noqa: E402
from tsubasa_fast.models import load_qwen3_tokenizer  # noqa: E402

from .test_trainer import args, examples, reference_step_gradient, tiny_model, trainable  # noqa: E402


class TopDSFT(TopDKLMixin, trl.SFTTrainer):
    """What the README tells a TRL user to write."""


def test_sft_trainer_step_follows_the_global_token_mean(tmp_path):
    rows = examples()
    model = tiny_model()
    want, count, _ = reference_step_gradient(model, rows)
    before = trainable(model)
    # the step of test_trainer.py (SGD, lr 1, 3 micro-batches of 1) plus what SFTTrainer needs for
    # examples with teacher fields: keep their columns, and skip its preparation, which would cut
    # input_ids to max_length (shorter here than 2 of the 3 examples) but not the teacher fields.
    # Gradient checkpointing stays TRL's default (on); bf16 (TRL's default) is off to compare in float32.
    config = trl.SFTConfig(**{**args(tmp_path).to_dict(), "hub_token": None, "bf16": False,
                              "gradient_checkpointing": True, "max_length": 10,
                              "remove_unused_columns": False, "dataset_kwargs": {"skip_prepare_dataset": True}})
    trainer = TopDSFT(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                      processing_class=load_qwen3_tokenizer(), data_collator=TopDDataCollator())
    trainer.train()
    after = trainable(model)
    assert trainer.state.log_history[0]["answer_tokens"] == count == 9
    for n in want:  # the update is minus the step's gradient
        got = before[n] - after[n]
        scale = want[n].abs().max()
        assert scale > 0, n
        assert (got - want[n]).abs().max() <= 1e-4 * scale, n
