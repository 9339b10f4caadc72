"""TopDDistillationTrainer / TopDKLMixin / TopDDataCollator on a small random Qwen3 (vocab 1,000):
the collator against hand-built batches, one accumulated optimizer step against a float64
reference over full logits (the loss normalised by the answer tokens of the whole step), and
checkpoints: a save cut short is never resumed, and resuming reproduces the uninterrupted run."""

import copy
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen3Config, Qwen3ForCausalLM, Trainer, TrainingArguments

from tsubasa_fast import select_topd
from tsubasa_fast.errors import InputError
from tsubasa_fast.integrations import (
    CHECKPOINT_COMPLETE,
    TopDDataCollator,
    TopDDistillationTrainer,
    TopDKLMixin,
    apply_topd_kl,
    last_complete_checkpoint,
)
from tsubasa_fast.integrations.trainer import zero_weight_examples
from tsubasa_fast.ops import reference

V, D = 1_000, 5


class MixedTrainer(TopDKLMixin, Trainer):
    """What a TRL user writes (``class MyTrainer(TopDKLMixin, trl.SFTTrainer)``), on plain Trainer."""


def test_the_mixin_must_come_before_the_trainer():
    with pytest.raises(TypeError, match="put TopDKLMixin before Trainer"):
        class Wrong(Trainer, TopDKLMixin):  # Trainer.compute_loss would win: plain cross-entropy
            pass

    class Subclass(MixedTrainer):  # a subclass of a correct trainer may override compute_loss itself
        def compute_loss(self, *a, **k):
            return super().compute_loss(*a, **k)
    assert Subclass.compute_loss is not Trainer.compute_loss


def tiny_model(seed=0):
    cfg = Qwen3Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    torch.manual_seed(seed)
    base = Qwen3ForCausalLM(cfg)
    with torch.no_grad():
        base.model.norm.weight.mul_(8.0)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # LoRA B starts at 0: give the adapter a value so every gradient is non-zero
        for p in (p for p in model.parameters() if p.requires_grad):
            p.copy_(torch.linspace(-0.05, 0.05, p.numel()).reshape(p.shape))
    return model


def examples(n=3, seed=0):
    """Sequences of different lengths and answer spans, teacher entries from another model."""
    g = torch.Generator().manual_seed(seed)
    teacher = tiny_model(seed=7)
    out = []
    for i in range(n):
        t = 9 + 3 * i
        ids = torch.randint(0, V, (t,), generator=g)
        mask = torch.zeros(t, dtype=torch.bool)
        mask[t - 3 - i : t - 1] = True  # answer spans of 2, 3, 4 ... tokens
        with torch.no_grad():
            top = select_topd(teacher(input_ids=ids[None]).logits[0], D)
        out.append({"input_ids": ids.tolist(), "teacher_mask": mask, "teacher_indices": top.indices[mask],
                    "teacher_logprobs": top.logprobs[mask]})
    return out


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=1, gradient_accumulation_steps=3,
                max_steps=1, learning_rate=1.0, optim="sgd", lr_scheduler_type="constant",
                max_grad_norm=0.0, report_to="none", disable_tqdm=True, use_cpu=True, seed=0,
                save_strategy="no", logging_steps=1)
    return TrainingArguments(**{**base, **kw})


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------- the collator


def test_collator_pads_and_places_the_teacher_rows():
    a_mask = torch.tensor([False, True, True, False])
    a_idx, a_lp = torch.tensor([[1, 2], [3, 4]]), torch.tensor([[-0.1, -2.0], [-0.5, -1.0]])
    b_idx = torch.arange(12).reshape(6, 2)  # one row per position (T = 6)
    b_lp = -torch.arange(12, dtype=torch.float32).reshape(6, 2) / 10
    b_mask = torch.tensor([False, False, False, True, True, False])
    batch = TopDDataCollator(pad_token_id=9)([
        {"input_ids": [5, 6, 7, 8], "teacher_mask": a_mask, "teacher_indices": a_idx, "teacher_logprobs": a_lp},
        {"input_ids": [10, 11, 12, 13, 14, 15], "teacher_mask": b_mask, "teacher_indices": b_idx,
         "teacher_logprobs": b_lp, "attention_mask": [1, 1, 1, 1, 1, 1]},
    ])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 9], [10, 11, 12, 13, 14, 15]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]
    assert batch["teacher_mask"].tolist() == [[False, True, True, False, False, False],
                                              [False, False, False, True, True, False]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 8, -100, -100], [-100, -100, -100, -100, 14, 15]]
    assert batch["teacher_indices"].shape == (2, 6, 2)
    assert batch["teacher_indices"][0, 1:3].tolist() == [[1, 2], [3, 4]]
    assert batch["teacher_indices"][1, 3:5].tolist() == [[6, 7], [8, 9]]
    assert batch["teacher_logprobs"][0, 2].tolist() == [-0.5, -1.0]
    assert batch["teacher_logprobs"][1, 4].tolist() == pytest.approx([-0.8, -0.9])


@pytest.mark.parametrize("change, field", [
    (dict(teacher_mask=torch.tensor([False, True, True, True])), "teacher_mask"),  # nothing after the end
    (dict(teacher_indices=torch.ones(3, 2, dtype=torch.long)), "teacher_indices"),  # neither 2 nor 4 rows
    (dict(teacher_logprobs=torch.zeros(2, 3)), "teacher_logprobs"),
    (dict(teacher_mask=[0, 1, 1, 0]), "teacher_mask"),  # not bool
])
def test_collator_names_the_bad_field(change, field):
    ok = {"input_ids": [5, 6, 7, 8], "teacher_mask": torch.tensor([False, True, True, False]),
          "teacher_indices": torch.ones(2, 2, dtype=torch.long), "teacher_logprobs": torch.zeros(2, 2)}
    with pytest.raises(InputError) as err:
        TopDDataCollator()([{**ok, **change}])
    assert err.value.field == field


# --------------------------------------------------------------------------- the loss of a step


def reference_step_gradient(model, rows):
    """float64, full logits: d/dθ of (sum of the top-d KL over every answer token) / (their number)."""
    ref = copy.deepcopy(model).double()
    total, count = 0.0, 0
    for r in rows:
        ids = torch.tensor(r["input_ids"])[None]
        logits = ref(input_ids=ids).logits[0]  # the unpatched forward (deepcopy of a patched model too)
        m = r["teacher_mask"]
        total = total + reference.topd_kl(logits[m], r["teacher_indices"], r["teacher_logprobs"].double()).sum()
        count += int(m.sum())
    loss = total / count
    loss.backward()
    return {n: p.grad.float() for n, p in ref.named_parameters() if p.requires_grad}, count, float(loss.detach())


@pytest.mark.parametrize("cls, padded", [(TopDDistillationTrainer, 0), (MixedTrainer, 0),
                                         (TopDDistillationTrainer, 3)])
def test_one_accumulated_step_follows_the_global_token_mean(cls, padded, tmp_path):
    # padded: zero-weight examples shuffled in, some micro-batches made of them alone; the
    # step must still be the gradient of the real examples alone
    rows = examples()
    model = tiny_model()
    want, count, _ = reference_step_gradient(model, rows)
    before = trainable(model)
    kwargs = {} if cls is TopDDistillationTrainer else {"data_collator": TopDDataCollator()}
    trainer = cls(model=model, args=args(tmp_path, gradient_accumulation_steps=3 + padded),
                  train_dataset=rows + zero_weight_examples(rows[0], padded), **kwargs)
    trainer.train()
    after = trainable(model)
    assert trainer.state.log_history[0]["answer_tokens"] == count == 9
    for n in want:  # SGD, lr 1, no clipping: the update is minus the step's gradient
        got = before[n] - after[n]
        scale = want[n].abs().max()
        assert scale > 0, n
        assert (got - want[n]).abs().max() <= 1e-4 * scale, n


# --------------------------------------------------------------------------- zero-weight examples


def grads_of(model, batch, **kw):
    model.zero_grad(set_to_none=True)
    loss = model(**batch, **kw).loss
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def test_zero_weight_examples_add_no_rows_and_no_labels():
    pad = zero_weight_examples(examples(1)[0], 2, pad_token_id=7)
    batch = TopDDataCollator(pad_token_id=7)(pad)
    assert batch["input_ids"].tolist() == [[7, 7], [7, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 1]]  # no fully masked row (no NaN)
    assert not batch["teacher_mask"].any()
    assert (batch["labels"] == -100).all()  # nothing for num_items_in_batch to count
    assert batch["teacher_indices"].shape == (2, 2, D)


@pytest.mark.parametrize("num_items", [None, 9])
def test_a_batch_of_zero_weight_examples_has_loss_0_and_zero_gradients(num_items):
    model = apply_topd_kl(tiny_model())
    model.train()
    batch = TopDDataCollator()(zero_weight_examples(examples(1)[0], 3))
    kw = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    loss, grads = grads_of(model, batch, **kw)
    assert loss.item() == 0.0  # a sum over no rows (mean: 0 rows give 0, not 0/0)
    assert grads  # the graph reaches the adapter (DDP sees every parameter used) ...
    for n, g in grads.items():  # ... with a gradient of exactly zero
        assert g is not None and torch.count_nonzero(g) == 0, n


def test_zero_weight_examples_mixed_in_change_neither_loss_nor_gradients():
    rows = examples()
    model = apply_topd_kl(tiny_model())
    model.train()
    want, count, want_loss = reference_step_gradient(model, rows)
    pad = zero_weight_examples(rows[0], 3)
    mixed = [pad[0], rows[0], pad[1], rows[1], rows[2], pad[2]]
    items = {"num_items_in_batch": torch.tensor(count)}
    loss, grads = grads_of(model, TopDDataCollator()(mixed), **items)
    plain_loss, plain = grads_of(model, TopDDataCollator()(rows), **items)
    mean_loss, _ = grads_of(model, TopDDataCollator()(mixed))  # reduction mean: over real rows only
    assert loss.item() == pytest.approx(want_loss, rel=1e-5)
    assert mean_loss.item() == pytest.approx(want_loss, rel=1e-5)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-6, atol=0)
    for n in want:
        scale = want[n].abs().max()
        assert scale > 0, n
        assert (grads[n] - want[n]).abs().max() <= 1e-4 * scale, n  # float64, full logits
        assert (grads[n] - plain[n]).abs().max() <= 1e-6 * scale, n  # the batch without them


# --------------------------------------------------------------------------- checkpoints


def test_a_save_cut_short_is_never_resumed(tmp_path, monkeypatch):
    rows = examples()
    ckpt = dict(max_steps=3, learning_rate=0.5, save_strategy="steps", save_steps=1, save_total_limit=1,
                gradient_accumulation_steps=1, optim="adamw_torch")
    straight = tiny_model()
    TopDDistillationTrainer(model=straight, args=args(tmp_path / "a", **ckpt), train_dataset=rows).train()

    model = tiny_model()
    real = Trainer._save_rng_state

    def killed_at_2(self, output_dir):  # the process dies while checkpoint-2 is being written
        if self.state.global_step == 2:
            raise SystemExit("killed")
        return real(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", killed_at_2)
    with pytest.raises(SystemExit):
        TopDDistillationTrainer(model=model, args=args(tmp_path / "b", **ckpt), train_dataset=rows).train()
    monkeypatch.undo()
    out = tmp_path / "b"
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()  # looks like a checkpoint
    assert not (out / "checkpoint-2" / CHECKPOINT_COMPLETE).is_file()
    assert (out / "checkpoint-1" / CHECKPOINT_COMPLETE).is_file()  # rotation waited for a complete one
    assert last_complete_checkpoint(out) == out / "checkpoint-1"

    resumed = tiny_model()  # a fresh process, its adapter moved off: the checkpoint must restore it
    with torch.no_grad():
        for p in (p for p in resumed.parameters() if p.requires_grad):
            p.add_(0.1)
    trainer = TopDDistillationTrainer(model=resumed, args=args(out, **ckpt), train_dataset=rows)
    trainer.train(resume_from_checkpoint=True)
    assert [h["step"] for h in trainer.state.log_history if "loss" in h] == [1, 2, 3]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-3"]  # the cut-short one is gone
    want, got = trainable(straight), trainable(resumed)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-7)


def test_resume_true_without_a_complete_checkpoint_is_an_error(tmp_path):
    (tmp_path / "checkpoint-4").mkdir()  # a save that never finished
    trainer = TopDDistillationTrainer(model=tiny_model(), args=args(tmp_path), train_dataset=examples(1))
    with pytest.raises(InputError, match="no complete checkpoint"):
        trainer.train(resume_from_checkpoint=True)
    shutil.rmtree(tmp_path / "checkpoint-4")
