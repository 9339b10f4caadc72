"""Structured generation: a chat reply decoded under a JSON-schema grammar, then validated.

Every LLM stage that must return structure (observation extraction, the LLM memory manager,
the QA writer) calls :func:`generate` (or :func:`generate_batch`): the JSON schema (from a
pydantic model or given as a dict) is compiled by llguidance into a token grammar, and at each
step of ``model.generate`` the tokens the grammar forbids get ``-inf``. The reply is therefore
schema-valid by construction, whatever the model; it is still parsed and validated afterwards
(pydantic or jsonschema), so a reply cut off by ``max_new_tokens`` raises
:class:`StructuredOutputError` instead of passing. Bound every string (``maxLength``) and
array (``maxItems``) so the longest valid reply fits the token budget.

Chats that are plain ``messages -> str`` callables (scripted fakes in tests, remote models)
cannot be constrained; :func:`parse_reply` validates their text against the same schema.

llguidance was chosen over xgrammar, outlines and lm-format-enforcer by measurement
(benchmarks/README.md, "Constrained decoding"): fastest per token on CPU, 100 % valid,
JSON-schema ``pattern`` / ``maxLength`` support, batched masks, wheels for every platform.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Sequence

from .generation import encode_chats, generate_replies

__all__ = ["SchemaError", "StructuredOutputError", "Grammar", "grammar_for", "generate",
           "generate_batch", "json_in_reply", "parse_reply"]

# Compact JSON (no free whitespace): a small model otherwise can spend its budget on newlines.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class SchemaError(ValueError):
    """The schema itself is unusable (not a JSON schema, or a feature the grammar lacks)."""


class StructuredOutputError(ValueError):
    """A reply is not valid for its schema (cut off by the token limit, or an unconstrained chat)."""


def _is_pydantic_model(schema: Any) -> bool:
    try:
        from pydantic import BaseModel
    except ImportError:  # pragma: no cover - pydantic comes with the memory extra
        return False
    return isinstance(schema, type) and issubclass(schema, BaseModel)


class Grammar:
    """A schema compiled once: its JSON schema, llguidance grammar and validator."""

    def __init__(self, schema: Any):
        import llguidance

        if _is_pydantic_model(schema):
            self.model = schema
            self.json_schema = schema.model_json_schema()
        elif isinstance(schema, dict):
            import jsonschema

            try:
                jsonschema.validators.validator_for(schema).check_schema(schema)
            except jsonschema.SchemaError as e:
                raise SchemaError(f"schema: not a valid JSON schema: {e.message}") from None
            self.model = None
            self.json_schema = schema
            self._validator = jsonschema.validators.validator_for(schema)(schema)
        else:
            raise SchemaError(f"schema: expected a pydantic model class or a JSON-schema dict, "
                              f"got {type(schema).__name__}")
        try:
            self.grammar = llguidance.LLMatcher.grammar_from_json_schema(
                json.dumps(self.json_schema), overrides=_JSON_OPTIONS)
        except ValueError as e:
            raise SchemaError(f"schema: {e}") from None
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(self.grammar)
        if is_error:
            raise SchemaError(f"schema: the grammar compiler rejects it: {messages[0]}")

    def validate(self, text: str) -> Any:
        """The reply parsed and validated (a model instance for pydantic schemas, else JSON)."""
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise StructuredOutputError(f"reply is not complete JSON ({e.msg} at char {e.pos}): "
                                        f"{text[:80]!r}") from None
        if self.model is not None:
            from pydantic import ValidationError

            try:
                return self.model.model_validate(value)
            except ValidationError as e:
                raise StructuredOutputError(f"reply does not match the schema: {e}") from None
        errors = sorted(self._validator.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            where = "/".join(str(p) for p in errors[0].path) or "(root)"
            raise StructuredOutputError(f"reply does not match the schema at {where}: {errors[0].message}")
        return value


_grammars: dict[str, Grammar] = {}
_tokenizers: dict[tuple[int, int], Any] = {}
_lock = threading.Lock()


def grammar_for(schema: Any) -> Grammar:
    """The compiled :class:`Grammar` of a schema (cached by its JSON schema text)."""
    if isinstance(schema, Grammar):
        return schema
    key = (f"pydantic:{schema.__module__}.{schema.__qualname__}:{id(schema)}" if _is_pydantic_model(schema)
           else json.dumps(schema, sort_keys=True, default=str))
    with _lock:
        g = _grammars.get(key)
    if g is None:
        g = Grammar(schema)
        with _lock:
            if len(_grammars) > 256:
                _grammars.clear()
            _grammars[key] = g
    return g


def _ll_tokenizer(tokenizer: Any, n_vocab: int) -> Any:
    """llguidance's view of a HF fast tokenizer (about 1 s to build, so cached)."""
    import llguidance.hf

    key = (id(tokenizer), n_vocab)
    with _lock:
        tok = _tokenizers.get(key)
    if tok is None:
        try:
            tok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=n_vocab)
        except ValueError as e:
            raise SchemaError(f"tokenizer: {e}") from None
        with _lock:
            _tokenizers[key] = tok
    return tok


class GrammarLogitsProcessor:
    """transformers logits processor: one llguidance matcher per batch row.

    Rows whose grammar is complete may only emit end-of-sequence. The token mask is built on
    the CPU (bitmask from llguidance) and applied on the logits' device, so CPU and GPU both work.
    """

    def __init__(self, grammars: Grammar | Sequence[Grammar], ll_tokenizer: Any, batch_size: int,
                 prompt_len: int, eos_id: int):
        import llguidance

        if isinstance(grammars, Grammar):
            grammars = [grammars] * batch_size
        if len(grammars) != batch_size:
            raise ValueError(f"{len(grammars)} grammars for a batch of {batch_size}")
        self.matchers = [llguidance.LLMatcher(ll_tokenizer, g.grammar, log_level=0) for g in grammars]
        for m in self.matchers:
            if m.is_error():
                raise SchemaError(f"schema: {m.get_error()}")
        self.prompt_len, self.eos_id = prompt_len, eos_id
        self.steps = 0
        self._bits = None

    def __call__(self, input_ids, scores):
        import torch

        if input_ids.shape[1] > self.prompt_len:  # consume the tokens chosen at the last step
            for row, m in enumerate(self.matchers):
                if not m.is_stopped() and not m.is_error():
                    m.consume_token(int(input_ids[row, -1]))
        self.steps += 1
        vocab = scores.shape[-1]
        words = (vocab + 31) // 32
        mask = torch.empty((len(self.matchers), words * 4), dtype=torch.uint8)
        for row, m in enumerate(self.matchers):
            if m.is_stopped() or m.is_error():
                mask[row].zero_()
                mask[row].view(torch.int32)[self.eos_id // 32] = 1 << (self.eos_id % 32)
            else:
                mask[row] = torch.frombuffer(bytearray(m.compute_bitmask()), dtype=torch.uint8)[: words * 4]
        if self._bits is None or self._bits.device != scores.device:
            self._bits = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8, device=scores.device)
        allowed = (mask.to(scores.device).unsqueeze(-1) & self._bits).ne(0).view(len(self.matchers), -1)[:, :vocab]
        return scores.masked_fill(~allowed, float("-inf"))


def generate_batch(model: Any, tokenizer: Any, batch: Sequence[list[dict]], schema: Any, *,
                   max_new_tokens: int = 256, temperature: float = 0.0,
                   repetition_penalty: float | None = None) -> list[Any]:
    """One validated object per chat in ``batch`` (left-padded, decoded together under the grammar).

    ``schema``: one schema for every row, or a list of schemas, one per row. Raises :class:`SchemaError` for an unusable schema (before any generation) and
    :class:`StructuredOutputError` if a reply did not finish within ``max_new_tokens``.
    """
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if not batch:
        return []
    if isinstance(schema, (list, tuple)):
        if len(schema) != len(batch):
            raise ValueError(f"schema: {len(schema)} schemas for a batch of {len(batch)} chats")
        grammars = [grammar_for(s) for s in schema]
    else:
        grammars = [grammar_for(schema)] * len(batch)
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise SchemaError("tokenizer: no eos_token_id to end a constrained reply with")
    n_vocab = model.get_output_embeddings().weight.shape[0]
    ll_tok = _ll_tokenizer(tokenizer, n_vocab)
    enc = encode_chats(tokenizer, batch, model.device)
    proc = GrammarLogitsProcessor(grammars, ll_tok, len(batch), enc["input_ids"].shape[1], eos_id)
    texts = generate_replies(model, tokenizer, enc, max_new_tokens=max_new_tokens, temperature=temperature,
                             logits_processor=[proc], eos_token_id=eos_id, repetition_penalty=repetition_penalty)
    results = []
    for row, (m, text) in enumerate(zip(proc.matchers, texts)):
        if m.is_error():
            raise StructuredOutputError(f"grammar matcher failed: {m.get_error()}")
        if not m.is_accepting():
            raise StructuredOutputError(f"reply cut off at max_new_tokens={max_new_tokens} before the "
                                        f"schema was complete: {text[-80:]!r}")
        results.append(grammars[row].validate(text))
    return results


def generate(model: Any, tokenizer: Any, messages: list[dict], schema: Any, **kwargs) -> Any:
    """The model's reply to one chat, decoded under ``schema``'s grammar and validated.

    ``schema``: a pydantic model class (returns an instance) or a JSON-schema dict (returns
    the parsed JSON). Keyword arguments as in :func:`generate_batch`.
    """
    return generate_batch(model, tokenizer, [messages], schema, **kwargs)[0]


def _json_span(reply: str | None, kind: type | None = None) -> str:
    """The text of the one JSON value a reply holds: from its first opening bracket (``{`` for
    ``kind=dict``, ``[`` for ``list``, whichever comes first for None) to the last closing one."""
    text = (reply or "").strip()
    pairs = {dict: "{}", list: "[]"}
    opens = [pairs[kind]] if kind is not None else list(pairs.values())
    starts = [(text.find(o), c) for o, c in opens if text.find(o) >= 0]
    if not starts:
        what = {dict: "JSON object", list: "JSON list", None: "JSON"}[kind]
        raise StructuredOutputError(f"no {what} in the reply: {text[:80]!r}")
    start, close = min(starts)
    end = text.rfind(close) if kind is not None else max(text.rfind("}"), text.rfind("]"))
    return text[start:end + 1] if end > start else text[start:]


def json_in_reply(reply: str | None, kind: type | None = None) -> Any:
    """The JSON value (a ``kind``: dict or list, or either) in an unconstrained chat's reply,
    surrounding prose ignored, with no schema: for replies whose shape the caller checks itself.
    Raises :class:`StructuredOutputError` saying what is wrong."""
    try:  # the span opens with the kind's bracket: parsed, it is of that kind
        return json.loads(_json_span(reply, kind))
    except json.JSONDecodeError as e:
        raise StructuredOutputError(f"unparsable JSON: {e}") from None


def parse_reply(reply: str | None, schema: Any) -> Any:
    """Validate an unconstrained chat's text reply against ``schema`` (the JSON it contains).

    For chats that cannot be constrained; surrounding prose around one JSON value is ignored.
    Raises :class:`StructuredOutputError` saying what is wrong.
    """
    return grammar_for(schema).validate(_json_span(reply))
