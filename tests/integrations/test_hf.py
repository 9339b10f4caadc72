"""apply_topd_kl: the fused top-d KL as the loss of a transformers causal LM (bare or under
peft), checked against a float64 reference computed over the unpatched model's full logits
with tsubasa_fast.ops.reference (the project's float64 specification of the loss)."""

import copy
import inspect

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    Qwen3ForCausalLM,
)

from tsubasa_fast import select_topd
from tsubasa_fast.distill.data import collate, encode
from tsubasa_fast.integrations import (
    SUPPORTED_MODEL_TYPES,
    apply_topd_kl,
    remove_topd_kl,
)
from tsubasa_fast.ops import reference

D = 8
SMALL_V = 512
REL = 1e-4
CHATS = [
    ([{"role": "user", "content": "Where did Caroline move in September 2023?"}], "Denver, Colorado."),
    ([{"role": "user", "content": "What is the name of Caroline's dog?"}], "Bo"),
]


def tiny_lm(model_type, seed, vocab=SMALL_V, tie=False):
    cfg = AutoConfig.for_model(model_type, vocab_size=vocab, hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                               head_dim=16, tie_word_embeddings=tie, pad_token_id=0, bos_token_id=1,
                               eos_token_id=2)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # peaked like a trained LM, so the top-d carry most of the mass
        model.get_decoder().norm.weight.mul_(8.0)
    return model


def teacher_entries(teacher, batch, temperature=1.0):
    """(B, T, d) top-d of another model on the same tokens: position t predicts token t+1."""
    with torch.no_grad():
        logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    top = select_topd(logits, D, temperature=temperature)
    return top.indices, top.logprobs


def small_batch(seed=0):
    """Two right-padded rows; the teacher covers an 'answer' span of each (not the padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, SMALL_V, (2, 12), generator=g)
    attn = torch.ones(2, 12, dtype=torch.long)
    attn[1, 9:] = 0
    ids[1, 9:] = 0
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, 5:11] = True
    mask[1, 3:8] = True
    return {"input_ids": ids, "attention_mask": attn, "target_mask": mask}


def reference_loss(logits, idx, lp, mask, *, tail="renorm", temperature=1.0, reduction="mean",
                   labels=None, ce_weight=0.0):
    """The loss from the full (B, T, V) logits in float64; the CE target of position t is labels[t+1]."""
    shifted = None
    if labels is not None:
        shifted = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], reference.IGNORE_INDEX)], 1)
    rows = reference.topd_kl(logits.double(), idx.long(), lp.double(), temperature=temperature,
                             tail=tail, labels=shifted, ce_weight=ce_weight)
    rows = torch.where(mask, rows, torch.zeros_like(rows))
    if reduction == "none":
        return rows
    return rows.sum() / mask.sum() if reduction == "mean" else rows.sum()


def rel_err(got, want):
    got, want = got.detach().double(), want.detach().double()
    return float((got - want).norm() / want.norm())


def no_logits(model):
    """A hook that fails the test if the lm_head module is ever run (it would build logits)."""
    def hook(*_):
        raise AssertionError("lm_head was called: the (B, T, V) logits were built")
    return model.get_output_embeddings().register_forward_hook(hook)


@pytest.fixture(scope="module")
def qwen3_data(tiny_qwen3, other_tiny_qwen3):
    """Real tokens (Qwen3 tokenizer, chat template, answer rows as the engine's collate marks
    them) and the top-d of a second tiny Qwen3 over the full 151,936-token vocabulary."""
    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    batch = collate([encode(tok, m, a) for m, a in CHATS], tok.pad_token_id)
    teacher = Qwen3ForCausalLM.from_pretrained(other_tiny_qwen3)
    return batch, {t: teacher_entries(teacher, batch, t) for t in (1.0, 2.0)}


def load_qwen3(path):
    return Qwen3ForCausalLM.from_pretrained(path).eval()


# ------------------------------------------------------------------------ the loss


@pytest.mark.parametrize("tail,temperature", [("renorm", 1.0), ("bucket", 1.0), ("none", 2.0)])
def test_qwen3_loss_matches_float64_reference(tiny_qwen3, qwen3_data, tail, temperature):
    batch, entries = qwen3_data
    idx, lp = entries[temperature]
    ref = load_qwen3(tiny_qwen3)
    model = apply_topd_kl(copy.deepcopy(ref))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    handle = no_logits(model)
    out = model(**inputs, teacher_indices=idx, teacher_logprobs=lp, teacher_mask=batch["target_mask"],
                tail=tail, temperature=temperature)
    handle.remove()
    assert out.logits is None
    with torch.no_grad():
        want = reference_loss(ref(**inputs).logits, idx, lp, batch["target_mask"], tail=tail,
                              temperature=temperature)
    assert rel_err(out.loss, want) < REL


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_every_supported_family_matches_the_reference(model_type):
    batch = small_batch()
    idx, lp = teacher_entries(tiny_lm(model_type, seed=1), batch)
    ref = tiny_lm(model_type, seed=0)
    model = apply_topd_kl(copy.deepcopy(ref), tail="bucket")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        out = model(**inputs, teacher_indices=idx, teacher_logprobs=lp, teacher_mask=batch["target_mask"])
        logits = ref(**inputs).logits
        assert torch.equal(model(**inputs).logits, logits)
    want = reference_loss(logits, idx, lp, batch["target_mask"], tail="bucket")
    assert out.logits is None and rel_err(out.loss, want) < REL


def test_ce_weight_with_labels(tiny_qwen3, qwen3_data):
    batch, entries = qwen3_data
    idx, lp = entries[1.0]
    ref = load_qwen3(tiny_qwen3)
    model = apply_topd_kl(copy.deepcopy(ref), ce_weight=0.5)  # the default, set when patching
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    labels[0, 3] = -100  # an ignored label inside the teacher span must add no CE term
    teacher = {"teacher_indices": idx, "teacher_logprobs": lp, "teacher_mask": batch["target_mask"]}
    out = model(**inputs, **teacher, labels=labels)
    with torch.no_grad():
        logits = ref(**inputs).logits
    want = reference_loss(logits, idx, lp, batch["target_mask"], labels=labels, ce_weight=0.5)
    kl_only = reference_loss(logits, idx, lp, batch["target_mask"])
    assert rel_err(out.loss, want) < REL and abs(float(want - kl_only)) > 0.1
    # already-shifted labels (transformers' shift_labels) give the same loss
    shifted = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], 1)
    assert rel_err(model(**inputs, **teacher, shift_labels=shifted).loss, want) < REL
    # a per-call ce_weight overrides the default
    assert rel_err(model(**inputs, **teacher, labels=labels, ce_weight=2.0).loss,
                   reference_loss(logits, idx, lp, batch["target_mask"], labels=labels, ce_weight=2.0)) < REL
    with pytest.raises(ValueError, match="labels"):
        model(**inputs, **teacher)


def test_reductions_and_num_items_in_batch():
    batch = small_batch()
    idx, lp = teacher_entries(tiny_lm("llama", seed=1), batch)
    ref = tiny_lm("llama", seed=0)
    model = apply_topd_kl(copy.deepcopy(ref), reduction="sum")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    teacher = {"teacher_indices": idx, "teacher_logprobs": lp, "teacher_mask": batch["target_mask"]}
    with torch.no_grad():
        logits = ref(**inputs).logits
        rows = model(**inputs, **teacher, reduction="none").loss
        total = model(**inputs, **teacher).loss
        per_item = model(**inputs, **teacher, reduction="mean", num_items_in_batch=torch.tensor(40)).loss
        as_tuple = model(**inputs, **teacher, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1 and torch.equal(as_tuple[0], total)
    want_rows = reference_loss(logits, idx, lp, batch["target_mask"], reduction="none")
    assert rows.shape == (2, 12) and rel_err(rows, want_rows) < REL
    assert bool((rows[~batch["target_mask"]] == 0).all())
    assert rel_err(total, want_rows.sum()) < REL
    assert rel_err(per_item, want_rows.sum() / 40) < REL


def test_autocast_runs_the_head_in_its_own_dtype():
    batch = small_batch()
    idx, lp = teacher_entries(tiny_lm("qwen3", seed=1), batch)
    ref = tiny_lm("qwen3", seed=0)
    model = apply_topd_kl(copy.deepcopy(ref))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**inputs, teacher_indices=idx, teacher_logprobs=lp, teacher_mask=batch["target_mask"])
        hidden = ref.get_decoder()(**inputs).last_hidden_state
    out.loss.backward()
    logits = hidden.double() @ ref.lm_head.weight.double().T
    assert rel_err(out.loss, reference_loss(logits, idx, lp, batch["target_mask"])) < REL


# ------------------------------------------------------------------------ gradients


def test_peft_lora_gets_the_reference_gradient_and_a_frozen_head_none(tiny_qwen3, qwen3_data):
    from peft import LoraConfig, get_peft_model

    batch, entries = qwen3_data
    idx, lp = entries[1.0]
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(0)
    ref = get_peft_model(load_qwen3(tiny_qwen3), lora)
    torch.manual_seed(0)
    model = apply_topd_kl(get_peft_model(load_qwen3(tiny_qwen3), lora))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    out = model(**inputs, teacher_indices=idx, teacher_logprobs=lp, teacher_mask=batch["target_mask"])
    assert out.logits is None
    out.loss.backward()
    reference_loss(ref(**inputs).logits, idx, lp, batch["target_mask"]).backward()
    head = model.get_base_model().lm_head.weight
    assert not head.requires_grad and head.grad is None
    want = {n: p.grad for n, p in ref.named_parameters() if p.requires_grad}
    got = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert set(got) == set(want) and len(got) == 8 and all("lora_" in n for n in got)
    for name, grad in got.items():
        assert grad is not None and float(grad.abs().max()) > 0, name
        assert rel_err(grad, want[name]) < REL, name


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_trainable_head_gets_the_reference_gradient(tie):
    batch = small_batch()
    idx, lp = teacher_entries(tiny_lm("llama", seed=1, tie=tie), batch)
    ref = tiny_lm("llama", seed=0, tie=tie)
    model = apply_topd_kl(copy.deepcopy(ref))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    model(**inputs, teacher_indices=idx, teacher_logprobs=lp, teacher_mask=batch["target_mask"]).loss.backward()
    reference_loss(ref(**inputs).logits, idx, lp, batch["target_mask"]).backward()
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    want = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert rel_err(p.grad, want[name].grad) < REL, name


# ------------------------------------------------------------------------ unchanged without teacher


def test_without_teacher_arguments_the_model_is_unchanged():
    batch = small_batch()
    ref = tiny_lm("qwen3", seed=0).eval()
    model = apply_topd_kl(copy.deepcopy(ref))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        a, b = ref(**inputs, labels=labels), model(**inputs, labels=labels)
        assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)
        assert torch.equal(model(**inputs, logits_to_keep=1).logits, ref(**inputs, logits_to_keep=1).logits)
        as_tuple = model(**inputs, return_dict=False)
        assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], a.logits)
    params = inspect.signature(model.forward).parameters
    assert {"logits_to_keep", "cache", "teacher_indices", "teacher_mask", "tail"} <= set(params)
    prompt = batch["input_ids"][:1, :6]
    want = ref.generate(prompt, max_new_tokens=5, do_sample=False)
    assert torch.equal(model.generate(prompt, max_new_tokens=5, do_sample=False), want)
    assert want.shape == (1, 11)


def test_patching_twice_is_harmless_and_remove_restores():
    from peft import LoraConfig, get_peft_model

    batch = small_batch()
    idx, lp = teacher_entries(tiny_lm("llama", seed=1), batch)
    base = tiny_lm("llama", seed=0)
    ref = copy.deepcopy(base)
    apply_topd_kl(base, tail="none")
    shim = base.forward.__func__
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"]))  # patched, then wrapped
    apply_topd_kl(model)  # again, through the peft wrapper: new defaults, same forward
    assert base.forward.__func__ is shim
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    teacher = {"teacher_indices": idx, "teacher_logprobs": lp, "teacher_mask": batch["target_mask"]}
    with torch.no_grad():
        loss = model(**inputs, **teacher).loss  # LoRA B starts at zero: the base model's loss
        want = reference_loss(ref(**inputs).logits, idx, lp, batch["target_mask"], tail="renorm")
    assert rel_err(loss, want) < REL
    remove_topd_kl(model)
    remove_topd_kl(model)  # removing twice is harmless too
    assert "forward" not in base.__dict__ and base.forward.__func__ is type(base).forward
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, ref(**inputs).logits)


# ------------------------------------------------------------------------ bad input


def _bad_cases(batch, idx, lp):
    mask = batch["target_mask"]
    return [
        ({"teacher_indices": idx[..., 0], "teacher_logprobs": lp, "teacher_mask": mask}, "teacher_indices"),
        ({"teacher_indices": idx[:, :-1], "teacher_logprobs": lp[:, :-1], "teacher_mask": mask[:, :-1]},
         "teacher_indices"),
        ({"teacher_indices": idx, "teacher_mask": mask}, "teacher_logprobs"),
        ({"teacher_indices": idx, "teacher_logprobs": lp[..., :-1], "teacher_mask": mask}, "teacher_logprobs"),
        ({"teacher_indices": idx, "teacher_logprobs": lp}, "teacher_mask"),
        ({"teacher_indices": idx, "teacher_logprobs": lp, "teacher_mask": mask[:, :-1]}, "teacher_mask"),
        ({"teacher_indices": idx, "teacher_logprobs": lp, "teacher_mask": mask.long()}, "teacher_mask"),
        ({"teacher_logprobs": lp, "teacher_mask": mask}, "teacher_logprobs: given without teacher_indices"),
        ({"tail": "renorm"}, "tail: given without teacher_indices"),
        ({"teacher_indices": idx, "teacher_logprobs": lp, "teacher_mask": mask, "tail": "tails"}, "tail"),
        ({"teacher_indices": idx, "teacher_logprobs": lp, "teacher_mask": mask, "temperature": 0.0},
         "temperature"),
        ({"teacher_indices": idx + SMALL_V, "teacher_logprobs": lp, "teacher_mask": mask}, "teacher_indices"),
    ]


def test_bad_input_names_the_argument():
    batch = small_batch()
    idx, lp = teacher_entries(tiny_lm("llama", seed=1), batch)
    model = apply_topd_kl(tiny_lm("llama", seed=0))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    for extra, name in _bad_cases(batch, idx, lp):
        with pytest.raises(ValueError, match=name):
            model(**inputs, **extra)
    with pytest.raises(ValueError, match="reduction"):
        apply_topd_kl(model, reduction="avg")


def test_unsupported_models_are_refused():
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    with pytest.raises(ValueError, match="model: GPT2LMHeadModel .*'gpt2'.* not supported"):
        apply_topd_kl(gpt2)
    with pytest.raises(ValueError, match="model: expected a transformers causal LM"):
        apply_topd_kl(torch.nn.Linear(2, 2))
    lora_head = get_peft_model(tiny_lm("llama", seed=0), LoraConfig(r=2, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(ValueError, match="model: its lm_head is a Linear.*plain floating-point nn.Linear"):
        apply_topd_kl(lora_head)
