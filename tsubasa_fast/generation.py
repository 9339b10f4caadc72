"""The project's one ``model.generate`` call: chats in, reply texts out.

Free-text chat (:class:`.llm.ChatLM`) and grammar-constrained decoding (:mod:`.structured`)
both run here, so every stage's prompt goes through the same template (thinking off,
:func:`.chat.chat_prompt_ids`), the same left padding and the same decoding settings: greedy
(the default, deterministic) or plain sampling at a temperature (no top-k / top-p cut, so a
grammar's mask is the only restriction).
"""

from __future__ import annotations

from typing import Any, Sequence

from .chat import chat_prompt_ids


def encode_chats(tokenizer: Any, batch: Sequence[list[dict]], device: Any = None) -> dict:
    """``input_ids`` and ``attention_mask`` of ``batch`` (one chat per row, each ending with the
    assistant header), left-padded to the longest: generation continues every row at the end."""
    import torch

    if not batch:
        raise ValueError("batch: no chats to encode")
    rows = [chat_prompt_ids(tokenizer, messages) for messages in batch]
    width = max(map(len, rows))
    pad = pad_token_id(tokenizer)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long, device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long, device=device)
    return {"input_ids": ids, "attention_mask": mask}


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its eos id (models trained without padding)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer: neither a pad_token_id nor an eos_token_id to pad a batch with")
    return pad


def generate_replies(model: Any, tokenizer: Any, enc: dict, *, max_new_tokens: int, temperature: float = 0.0,
                     logits_processor: list | None = None, eos_token_id: int | None = None,
                     repetition_penalty: float | None = None) -> list[str]:
    """The reply text of each row of ``enc`` (from :func:`encode_chats`): the new tokens only,
    special tokens dropped, stripped. ``eos_token_id``: where a reply ends (default: the model's
    generation config); ``logits_processor``: e.g. a grammar's mask, applied at every step."""
    import torch

    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    gen: dict = dict(max_new_tokens=max_new_tokens, pad_token_id=pad_token_id(tokenizer))
    if eos_token_id is not None:
        gen["eos_token_id"] = eos_token_id
    if logits_processor:
        gen["logits_processor"] = list(logits_processor)
    if temperature > 0:
        gen.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    else:
        gen.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    if repetition_penalty:
        gen["repetition_penalty"] = repetition_penalty
    with torch.inference_mode():
        out = model.generate(**enc, **gen)
    start = enc["input_ids"].shape[1]
    return [tokenizer.decode(row[start:], skip_special_tokens=True).strip() for row in out]
