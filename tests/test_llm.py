"""ChatLM, the one generation path: a peft model's adapter on or off per call."""

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tsubasa_fast.llm import ChatLM

MSG = [{"role": "user", "content": "Where does Maya live?"}]


def test_adapter_on_or_off_per_call(tiny_qwen3):
    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen3, dtype=torch.float32).eval()
    plain = ChatLM(base, tok, max_new_tokens=6).chat(MSG)  # the base model, no peft around it
    # a LoRA whose B is large moves every logit: with it on, the greedy reply changes
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_qwen3, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"])).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1.0)
    on, off = ChatLM(model, tok, max_new_tokens=6), ChatLM(model, tok, max_new_tokens=6, adapter_off=True)
    assert off(MSG) == on(MSG, adapter=False) == plain  # adapter off: exactly the base model
    assert on(MSG) == off(MSG, adapter=True) != plain
    assert ChatLM(base, tok, max_new_tokens=6)(MSG, adapter=False) == plain  # no adapter: the base already
