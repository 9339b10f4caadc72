"""Chat prompts rendered the same way for every stage: synthesis, teacher, student, answering.

Qwen3's chat template opens a thinking block after the assistant header unless it is rendered
with ``enable_thinking=False``, which writes an empty ``<think>\\n\\n</think>\\n\\n`` instead; our
answers are short phrases, so thinking is always off. Templates without the variable (SmolLM2,
plain ChatML) ignore it.
"""

from __future__ import annotations


def chat_prompt_ids(tokenizer, messages: list[dict], *, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of ``messages`` in the model's chat template, thinking off, ending with the
    assistant header (and Qwen3's empty thinking block) when ``add_generation_prompt``."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                        tokenize=True, return_dict=False, enable_thinking=False)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # some tokenizers return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)
