"""The distillation engine on a tiny random Qwen3: teacher cache, training, resume, adapters."""

from dataclasses import replace
import json
import os
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file

from tsubasa_fast.distill.cache import CacheError, CacheSpec, TeacherCache, TeacherCacheWriter
from tsubasa_fast.distill.data import collate, encode
from tsubasa_fast.distill.prompts import TEMPLATE_VERSION, teacher_messages
from tsubasa_fast.distill.student import AdapterMismatchError, Student, StudentConfig
from tsubasa_fast.distill.teacher import TeacherConfig, build_teacher_cache, cache_spec, teacher_topd
from tsubasa_fast.distill.train import TrainConfig, build_student_data, encode_student, evaluate_loss, train
from tsubasa_fast.integrations import CHECKPOINT_COMPLETE, TopDDataCollator, apply_topd_kl
from tsubasa_fast.ops import reference

from .conftest import memories_for

TRAIN = dict(batch_size=6, micro_batch_size=4, lr=1e-2, warmup_ratio=0.0, checkpoint_every=2)


def foreign_cache(student, other, pairs, path):
    """A cache in the student's format whose targets come from another random model, so the
    adapter has something to learn (two random models agree with themselves too easily)."""
    with TeacherCacheWriter(path, cache_spec(student, TeacherConfig())) as w:
        for p in pairs:
            w.add(p.key, *teacher_topd(other, p, TeacherConfig()))
    return path


@pytest.fixture(scope="module")
def student(tiny_qwen3):
    return Student(StudentConfig(model=tiny_qwen3, lora_r=8, lora_alpha=16))


def test_teacher_cache_matches_full_logits(student, pairs, tmp_path):
    cfg = TeacherConfig(d=5, temperature=1.0)
    stats = build_teacher_cache(student, pairs, tmp_path, cfg, progress=False)
    assert stats["cached"] == len(pairs)
    cache = TeacherCache(tmp_path)
    tok = student.tokenizer
    for p in pairs[:3]:
        seq = encode(tok, teacher_messages(p.context, p.question), p.answer)
        batch = collate([seq], tok.pad_token_id)
        with student.teacher():  # independent path: the model's own dense logits
            logits = student.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        want_idx, want_lp = reference.select_topd(logits[0, seq.target_rows].double(), 5)
        idx, lp = cache.get(p.key)
        assert torch.equal(idx.long(), want_idx)
        torch.testing.assert_close(lp.double(), want_lp, atol=2e-3, rtol=2e-3)  # stored in fp16
    # a second run resumes: nothing left to do
    assert build_teacher_cache(student, pairs, tmp_path, cfg, progress=False)["resumed"] == len(pairs)


def test_cache_from_another_base_model_is_refused(student, other_tiny_qwen3, pairs, tmp_path):
    other = Student(StudentConfig(model=other_tiny_qwen3, lora_r=8))
    build_teacher_cache(other, pairs, tmp_path / "cache", TeacherConfig(), progress=False)
    with pytest.raises(CacheError, match="model_fingerprint"):
        train(student, pairs, tmp_path / "cache", tmp_path / "out", TrainConfig(steps=1), progress=False)


def test_teacher_index_beyond_student_vocab_is_refused(student, pairs, tmp_path):
    spec = CacheSpec(model_fingerprint=student.fingerprint, tokenizer_hash=student.tokenizer_hash,
                     vocab_size=152_064, d=5, temperature=1.0, template_version=TEMPLATE_VERSION)
    with TeacherCacheWriter(tmp_path / "cache", spec) as w:  # a teacher from a larger-vocab family
        for p in pairs:
            n = len(student.tokenizer.encode(p.answer, add_special_tokens=False)) + 1
            idx = torch.full((n, 5), 152_000, dtype=torch.int32)
            w.add(p.key, idx, torch.full((n, 5), -1.7))
    with pytest.raises(CacheError, match="vocab_size"):
        train(student, pairs, tmp_path / "cache", tmp_path / "out", TrainConfig(steps=1), progress=False)


def test_training_lowers_the_distillation_loss(tiny_qwen3, other_tiny_qwen3, pairs, tmp_path):
    st = Student(StudentConfig(model=tiny_qwen3, lora_r=8, lora_alpha=16))
    foreign_cache(st, Student(StudentConfig(model=other_tiny_qwen3)), pairs, tmp_path / "cache")
    cfg = TrainConfig(steps=12, **TRAIN)
    rows = build_student_data(pairs, memories_for, tmp_path / "out", cfg)
    before = evaluate_loss(st, pairs, tmp_path / "cache", rows, cfg)
    summary = train(st, pairs, tmp_path / "cache", tmp_path / "out", cfg, retrieve=memories_for, progress=False)
    after = evaluate_loss(st, pairs, tmp_path / "cache", rows, cfg)
    assert after < 0.7 * before, (before, after)
    assert summary["steps"] == 12
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 13))
    assert (tmp_path / "out" / "loss.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (tmp_path / "out" / "student_data.jsonl").read_text().splitlines()]
    assert all(len(r["memories"]) == 3 for r in rows)


def test_resume_after_interruption_reproduces_the_run(tiny_qwen3, other_tiny_qwen3, pairs, tmp_path):
    """Ctrl-C after step 3 saves checkpoint-3 and stops; a later save cut short by a kill
    (no completion marker, a truncated file) is skipped; the rerun from step 3 gives the
    adapter of the uninterrupted run."""
    cfg = TrainConfig(steps=6, **{**TRAIN, "batch_size": 4, "micro_batch_size": 2})
    st = Student(StudentConfig(model=tiny_qwen3, lora_r=8, lora_alpha=16))
    foreign_cache(st, Student(StudentConfig(model=other_tiny_qwen3)), pairs, tmp_path / "cache")
    train(st, pairs, tmp_path / "cache", tmp_path / "full", cfg, retrieve=memories_for, progress=False)

    def ctrl_c(step, loss):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    st2 = Student(StudentConfig(model=tiny_qwen3, lora_r=8, lora_alpha=16))
    before = signal.getsignal(signal.SIGINT)  # the default handler, or SIG_IGN in a background job
    with pytest.raises(KeyboardInterrupt):
        train(st2, pairs, tmp_path / "cache", tmp_path / "resumed", cfg, retrieve=memories_for,
              progress=False, on_step=ctrl_c)
    ckpts = tmp_path / "resumed" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-3"]  # checkpoint-2 rotated out
    assert (ckpts / "checkpoint-3" / CHECKPOINT_COMPLETE).is_file()
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    half = ckpts / "checkpoint-5"  # what a kill during the save of step 5 would leave
    shutil.copytree(ckpts / "checkpoint-3", half)
    (half / CHECKPOINT_COMPLETE).unlink()
    weights = half / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    st3 = Student(StudentConfig(model=tiny_qwen3, lora_r=8, lora_alpha=16, seed=1))  # a fresh process
    summary = train(st3, pairs, tmp_path / "cache", tmp_path / "resumed", cfg, retrieve=memories_for,
                    progress=False)
    assert summary["resumed_from"] == 3
    assert not ckpts.exists()  # removed once the adapter is saved
    a = load_file(str(tmp_path / "full" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    full = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in resumed] == list(range(1, 7))
    assert [m["tokens"] for m in resumed] == [m["tokens"] for m in full]
    assert [m["loss"] for m in resumed] == pytest.approx([m["loss"] for m in full], rel=1e-4)


def test_a_finished_training_is_loaded_not_redone(tiny_qwen3, other_tiny_qwen3, pairs, tmp_path):
    """A rerun with the same inputs loads the trained adapter into a fresh student (the same
    hidden states as the trained one, no new metrics line); a changed learning rate or a
    changed teacher cache trains again."""
    cfg = TrainConfig(steps=4, **TRAIN)
    st = Student(StudentConfig(model=tiny_qwen3, lora_r=8, lora_alpha=16))
    foreign_cache(st, Student(StudentConfig(model=other_tiny_qwen3)), pairs, tmp_path / "cache")
    first = train(st, pairs, tmp_path / "cache", tmp_path / "out", cfg, retrieve=memories_for, progress=False)
    assert "reused" not in first and len(first["inputs_sha256"]) == 64
    batch = collate([encode(st.tokenizer, teacher_messages("c", "q?"), "a")], st.tokenizer.pad_token_id)

    def hidden(s):
        with torch.no_grad():
            return s.hidden_states(batch["input_ids"], batch["attention_mask"])

    trained = hidden(st)
    fresh = Student(StudentConfig(model=tiny_qwen3, lora_r=8, lora_alpha=16))  # a new process
    assert (hidden(fresh) - trained).abs().max() > 1e-3  # an untrained adapter differs
    metrics = tmp_path / "out" / "metrics.jsonl"
    lines = metrics.read_text()
    again = train(fresh, pairs, tmp_path / "cache", tmp_path / "out", cfg, retrieve=memories_for, progress=False)
    assert again["reused"] is True and again["inputs_sha256"] == first["inputs_sha256"]
    assert again["last_loss"] == first["last_loss"]
    torch.testing.assert_close(hidden(fresh), trained)
    assert metrics.read_text() == lines  # no step was run

    other_lr = train(Student(StudentConfig(model=tiny_qwen3, lora_r=8, lora_alpha=16)), pairs,
                     tmp_path / "cache", tmp_path / "out", replace(cfg, lr=2e-2),
                     retrieve=memories_for, progress=False)
    assert "reused" not in other_lr and other_lr["inputs_sha256"] != first["inputs_sha256"]
    shutil.rmtree(tmp_path / "cache")  # the same keys, another teacher: other targets
    foreign_cache(st, Student(StudentConfig(model=tiny_qwen3)), pairs, tmp_path / "cache")
    other_cache = train(Student(StudentConfig(model=tiny_qwen3, lora_r=8, lora_alpha=16)), pairs,
                        tmp_path / "cache", tmp_path / "out", replace(cfg, lr=2e-2),
                        retrieve=memories_for, progress=False)
    assert "reused" not in other_cache and other_cache["inputs_sha256"] != other_lr["inputs_sha256"]


def test_adapter_save_load_round_trip(tiny_qwen3, other_tiny_qwen3, pairs, tmp_path):
    st = Student(StudentConfig(model=tiny_qwen3, lora_r=8, lora_alpha=16))
    with torch.no_grad():
        for p in st.trainable_parameters():
            p.normal_(0, 0.05)
    st.save_adapter(tmp_path / "adapter", {"user": "caroline"})
    loaded = Student(StudentConfig(model=tiny_qwen3), adapter=tmp_path / "adapter", trainable=False)
    batch = collate([encode(st.tokenizer, teacher_messages("c", "q?"), "a")], st.tokenizer.pad_token_id)
    with torch.no_grad():
        h1 = st.hidden_states(batch["input_ids"], batch["attention_mask"])
        h2 = loaded.hidden_states(batch["input_ids"], batch["attention_mask"])
        with loaded.teacher():
            h0 = loaded.hidden_states(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(h2, h1)
    assert (h0 - h1).abs().max() > 1e-3  # the adapter changes the model
    with pytest.raises(AdapterMismatchError, match="base model"):
        Student(StudentConfig(model=other_tiny_qwen3), adapter=tmp_path / "adapter")


def distill_loss(st, pairs, stride):
    """The training loss (patched forward on a TopDDataCollator batch) of `pairs` against
    fixed synthetic teacher entries, summed over the answer tokens."""
    rows = [{"question": p.question, "answer": p.answer, "memories": memories_for(p.question)} for p in pairs]
    feats = []
    for r in rows:
        e = encode_student(st.tokenizer, r, 256)
        mask = torch.zeros(len(e.input_ids), dtype=torch.bool)
        mask[e.target_rows] = True
        m = e.answer_len
        feats.append({"input_ids": e.input_ids, "teacher_mask": mask,
                      "teacher_indices": torch.arange(m * 5).reshape(m, 5) * stride,
                      "teacher_logprobs": torch.log_softmax(torch.linspace(0, 1, m * 5).reshape(m, 5), -1)})
    batch = TopDDataCollator(st.tokenizer.pad_token_id)(feats)
    apply_topd_kl(st.model)
    return st.model(**batch, reduction="sum").loss


def test_gradient_checkpointing_gives_the_same_gradients(tiny_qwen3, pairs):
    grads = []
    for checkpointing in (False, True):
        st = Student(StudentConfig(model=tiny_qwen3, lora_r=4, lora_alpha=8, gradient_checkpointing=checkpointing))
        with torch.no_grad():
            for p in st.trainable_parameters():
                p.copy_(torch.linspace(-0.05, 0.05, p.numel()).reshape(p.shape))
        st.model.train()
        distill_loss(st, pairs[:2], 7).backward()
        grads.append([p.grad.clone() for p in st.trainable_parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)


def test_four_bit_gradients_match_the_dequantised_model(tiny_qwen3, pairs):
    """4-bit (bitsandbytes, CPU) after a teacher pass: LoRA gradients equal those of an fp32
    model holding the same dequantised weights (regression: bnb's CPU inference repacking
    drops the gradient through the base weights)."""
    import bitsandbytes as bnb

    q4 = Student(StudentConfig(model=tiny_qwen3, load_in_4bit=True, lora_r=4, lora_alpha=8))
    fp = Student(StudentConfig(model=tiny_qwen3, lora_r=4, lora_alpha=8))
    with torch.no_grad():
        fp_mods = dict(fp.base.named_modules())
        for name, mod in q4.base.named_modules():
            if isinstance(mod, bnb.nn.Linear4bit):
                w = bnb.functional.dequantize_4bit(mod.weight.data, mod.weight.quant_state)
                fp_mods[name].weight.copy_(w.float())
        for a, b in zip(q4.trainable_parameters(), fp.trainable_parameters()):
            a.copy_(torch.linspace(-0.05, 0.05, a.numel()).reshape(a.shape))
            b.copy_(a)
    grads = []
    for st in (q4, fp):
        batch = collate([encode(st.tokenizer, teacher_messages(p.context, p.question), p.answer) for p in pairs[:2]],
                        st.tokenizer.pad_token_id)
        with st.teacher():  # eval-mode no-grad pass first, as when the cache is built in-process
            st.hidden_states(batch["input_ids"], batch["attention_mask"])
        st.model.train()
        distill_loss(st, pairs[:2], 11).backward()
        grads.append({n: p.grad.clone() for n, p in st.model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    first_layer = [n for n in grads[0] if ".layers.0." in n and "lora_B" in n]
    assert first_layer and all(grads[1][n].abs().max() > 0 for n in first_layer)
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=2e-3, atol=1e-6)


def test_lora_alpha_defaults_to_twice_the_rank():
    """The LoRA scale is written once: personalize, eval qa and the CLI pass only the rank."""
    assert StudentConfig(lora_r=8).alpha == 16 and StudentConfig().alpha == 32
    assert StudentConfig(lora_r=8, lora_alpha=4).alpha == 4
    assert replace(StudentConfig(), lora_r=4).alpha == 8  # a copy with another rank keeps the rule


@pytest.mark.parametrize("kwargs, field", [({"lora_r": 0}, "lora_r"), ({"lora_r": 2.5}, "lora_r"),
                                           ({"lora_r": True}, "lora_r"), ({"lora_alpha": -1}, "lora_alpha"),
                                           ({"lora_dropout": 1.0}, "lora_dropout"),
                                           ({"load_in_4bit": "yes"}, "load_in_4bit")])
def test_student_config_names_the_bad_field(kwargs, field):
    from tsubasa_fast.errors import InputError

    with pytest.raises(InputError) as e:
        StudentConfig(**kwargs)
    assert e.value.field == field


def test_every_entry_point_builds_its_student_from_one_config(tmp_path):
    """personalize, eval qa and the demo hold the StudentConfig of one RunConfig; the CLI's
    options for it are generated from StudentConfig's fields."""
    from tsubasa_fast.cli import build_parser
    from tsubasa_fast.cli.options import run_config
    from tsubasa_fast.demo import demo_config
    from tsubasa_fast.run_config import RunConfig

    args = build_parser().parse_args(["eval", "qa", "--locomo", "x", "--method", "tsubasa", "--model", str(tmp_path),
                                      "--no-4bit", "--device", "cpu", "--lora-r", "4"])
    cfg = run_config(args).student
    assert (cfg.model, cfg.load_in_4bit, cfg.device, cfg.lora_r, cfg.alpha) == (str(tmp_path), False, "cpu", 4, 8)
    assert RunConfig(student=cfg).student is cfg
    assert RunConfig().student == StudentConfig()
    assert demo_config(model="m", load_in_4bit=False).student == StudentConfig(model="m", load_in_4bit=False)
