"""Chat generation with a local causal LM (greedy by default, deterministic).

`ChatLM` wraps a ``(model, tokenizer)`` pair from :mod:`tsubasa_fast.models` behind one
call, ``chat(messages) -> str``, so the memory pipeline (extractor, LLM manager) can take
any ``Callable[[list[dict]], str]`` and tests can pass a scripted fake instead.
``ChatLM.structured(messages, schema)`` decodes under a JSON-schema grammar
(:mod:`tsubasa_fast.structured`): stages that need structure use it whenever they hold a
ChatLM, so their replies cannot be malformed.
"""

from __future__ import annotations

import os
from typing import Any


class ChatLM:
    """Chat-template generation with a local transformers causal LM: the one generation path of
    every stage (free text with :meth:`chat`, grammar-constrained with :meth:`structured`), with a
    peft model's adapter on or off per call (``adapter``; default: off when ``adapter_off``)."""

    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int = 256,
                 temperature: float = 0.0, name: str = "llm", adapter_off: bool = False):
        if max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.name = name
        self.adapter_off = adapter_off  # generate with a peft model's adapter disabled (the base model)
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"{name}: the tokenizer has no chat template")

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, dtype: Any = None, device: str | None = None,
             load_in_4bit: bool | None = None, **kwargs) -> "ChatLM":
        """Load a local model folder (None = SmolLM2-135M-Instruct) for chat, with the student's
        device / 4-bit policy (:func:`.models.load_policy`)."""
        from .models import load_causal_lm

        model, tok = load_causal_lm(path, dtype=dtype, device=device, load_in_4bit=load_in_4bit)
        return cls(model, tok, name=str(path or "SmolLM2-135M-Instruct"), **kwargs)

    def __call__(self, messages: list[dict], max_new_tokens: int | None = None, adapter: bool | None = None) -> str:
        return self.chat(messages, max_new_tokens, adapter=adapter)

    def _context(self, adapter: bool | None = None):
        """Where the model generates: with its adapter disabled (the base model) unless asked for.
        A model with no adapter is the base model already."""
        import contextlib

        off = self.adapter_off if adapter is None else not adapter
        return self.model.disable_adapter() if off and hasattr(self.model, "disable_adapter") else \
            contextlib.nullcontext()

    def structured(self, messages: list[dict], schema: Any, max_new_tokens: int | None = None, **gen) -> Any:
        """The reply decoded under ``schema``'s grammar, validated (see :func:`structured.generate`)."""
        return self.structured_batch([messages], schema, max_new_tokens, **gen)[0]

    def structured_batch(self, batch: list[list[dict]], schema: Any, max_new_tokens: int | None = None,
                         **gen) -> list:
        """:meth:`structured` for several chats at once (one padded batch); ``gen``: e.g. repetition_penalty."""
        from .structured import generate_batch

        with self._context():
            return generate_batch(self.model, self.tokenizer, batch, schema,
                                  max_new_tokens=max_new_tokens or self.max_new_tokens,
                                  temperature=self.temperature, **gen)

    def chat(self, messages: list[dict], max_new_tokens: int | None = None, adapter: bool | None = None) -> str:
        from .generation import encode_chats, generate_replies

        enc = encode_chats(self.tokenizer, [messages], self.model.device)
        with self._context(adapter):
            return generate_replies(self.model, self.tokenizer, enc, temperature=self.temperature,
                                    max_new_tokens=max_new_tokens or self.max_new_tokens)[0]
