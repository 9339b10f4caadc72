"""One device / 4-bit policy for every causal LM the project loads (student, chat model, judge)."""

import torch

from tsubasa_fast.distill.student import Student, StudentConfig
from tsubasa_fast.llm import ChatLM
from tsubasa_fast.models import load_policy


def _four_bit_layers(model) -> int:
    import bitsandbytes as bnb

    return sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def test_load_policy():
    cuda = torch.cuda.is_available()
    assert load_policy() == (torch.device("cuda" if cuda else "cpu"), cuda, torch.bfloat16 if cuda else torch.float32)
    assert load_policy("cpu") == (torch.device("cpu"), False, torch.float32)
    assert load_policy("cpu", True) == (torch.device("cpu"), True, torch.float32)
    assert load_policy("cuda:1", False) == (torch.device("cuda:1"), False, torch.bfloat16)


def test_chat_model_and_student_load_alike(tiny_qwen3):
    chat = ChatLM.load(tiny_qwen3, device="cpu", load_in_4bit=True)
    st = Student(StudentConfig(model=tiny_qwen3, device="cpu", load_in_4bit=True, lora_r=2))
    assert st.four_bit and _four_bit_layers(chat.model) == _four_bit_layers(st.model) > 0
    plain = ChatLM.load(tiny_qwen3, device="cpu")
    assert _four_bit_layers(plain.model) == 0 and next(plain.model.parameters()).dtype == torch.float32
