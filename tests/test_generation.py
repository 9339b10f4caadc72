"""The one generate call: chats encoded with the shared template, left-padded, decoded greedily,
checked against a hand-written greedy loop over the model's forward pass."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tsubasa_fast.chat import chat_prompt_ids
from tsubasa_fast.generation import encode_chats, generate_replies

SHORT = [{"role": "user", "content": "Hi"}]
LONG = [{"role": "system", "content": "Answer with a short phrase."},
        {"role": "user", "content": "Where did Maya move after she changed her job last spring?"}]


@pytest.fixture(scope="module")
def lm(tiny_qwen3):
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3, dtype=torch.float32).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # larger residual writes: the reply depends on the prompt (not a run of newlines)
        for name, p in model.named_parameters():
            if "down_proj" in name or "o_proj" in name:
                p.normal_(0, 0.5)
    return model, AutoTokenizer.from_pretrained(tiny_qwen3)


def greedy_reference(model, tok, messages, n):
    """argmax of the last position, fed back, until an eos id of the model's generation config."""
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    ids = torch.tensor([chat_prompt_ids(tok, messages)])
    new = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            if nxt in eos:
                break
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return tok.decode(new, skip_special_tokens=True).strip()


def test_encode_pads_on_the_left(lm):
    _, tok = lm
    enc = encode_chats(tok, [SHORT, LONG])
    short, long_ = chat_prompt_ids(tok, SHORT), chat_prompt_ids(tok, LONG)
    assert len(short) < len(long_)
    pad = len(long_) - len(short)
    assert enc["input_ids"][0].tolist() == [tok.pad_token_id] * pad + short
    assert enc["input_ids"][1].tolist() == long_
    assert enc["attention_mask"][0].tolist() == [0] * pad + [1] * len(short)
    assert enc["attention_mask"][1].tolist() == [1] * len(long_)


def test_greedy_replies_match_a_hand_written_loop(lm):
    model, tok = lm
    want = [greedy_reference(model, tok, m, 8) for m in (SHORT, LONG)]
    assert all(want) and want[0] != want[1]  # two real replies: the comparison is not of empty strings
    alone = [generate_replies(model, tok, encode_chats(tok, [m]), max_new_tokens=8)[0] for m in (SHORT, LONG)]
    batched = generate_replies(model, tok, encode_chats(tok, [SHORT, LONG]), max_new_tokens=8)
    assert alone == want
    assert batched == want  # the padded row continues exactly as it does alone


def test_sampling_is_seeded_and_differs_from_greedy(lm):
    model, tok = lm
    enc = encode_chats(tok, [LONG])
    torch.manual_seed(3)
    a = generate_replies(model, tok, enc, max_new_tokens=12, temperature=5.0)
    torch.manual_seed(3)
    b = generate_replies(model, tok, enc, max_new_tokens=12, temperature=5.0)
    assert a == b
    assert a != generate_replies(model, tok, enc, max_new_tokens=12)


@pytest.mark.parametrize("kw, word", [(dict(max_new_tokens=0), "max_new_tokens"),
                                      (dict(max_new_tokens=4, temperature=-1.0), "temperature")])
def test_bad_settings_are_named(lm, kw, word):
    model, tok = lm
    with pytest.raises(ValueError, match=word):
        generate_replies(model, tok, encode_chats(tok, [SHORT]), **kw)


def test_an_empty_batch_is_an_error(lm):
    with pytest.raises(ValueError, match="batch"):
        encode_chats(lm[1], [])
