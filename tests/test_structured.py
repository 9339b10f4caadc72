"""Constrained decoding (tsubasa_fast.structured): schema-valid output from any model, clear errors.

A tiny random Qwen3 (real Qwen tokenizer, random weights) writes garbage when unconstrained; under
the grammar every reply must pass an independent validator (jsonschema / pydantic / re).
"""

import json
import re

import jsonschema
import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

from tsubasa_fast.structured import (SchemaError, StructuredOutputError, generate, generate_batch, json_in_reply,
                                     parse_reply)

MSG = [{"role": "user", "content": "Describe Ann as JSON."}]
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "pets"],
          "properties": {
              "name": {"type": "string", "pattern": "^Ann [a-z ]{2,20}$"},
              "age": {"type": "integer", "minimum": 0, "maximum": 120},
              "mood": {"enum": ["happy", "sad"]},
              "pets": {"type": "array", "minItems": 1, "maxItems": 3,
                       "items": {"type": "string", "maxLength": 12}}}}


class Fact(BaseModel):
    model_config = ConfigDict(extra="forbid")  # else any extra key (of unbounded length) is valid
    op: str = Field(pattern="^(ADD|IGNORE)$")
    target: int | None = Field(ge=1, le=4)
    text: str = Field(max_length=30)


@pytest.fixture(scope="module")
def tiny(tiny_qwen3):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3).eval()
    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    return model, tok


def test_random_model_output_is_schema_valid_greedy_sampled_and_batched(tiny):
    model, tok = tiny
    enc = tok.apply_chat_template(MSG, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    plain = tok.decode(model.generate(**enc, max_new_tokens=40, do_sample=False)[0, enc["input_ids"].shape[1]:])
    with pytest.raises(json.JSONDecodeError):  # the model alone does not write JSON
        json.loads(plain)
    got = [generate(model, tok, MSG, SCHEMA, max_new_tokens=200)]
    for seed in range(2):
        torch.manual_seed(seed)
        got.append(generate(model, tok, MSG, SCHEMA, max_new_tokens=200, temperature=1.5))
    other = [{"role": "user", "content": "A much longer prompt, so that the batch needs left padding: "
                                         "who is Ann and what pets does she have?"}]
    got += generate_batch(model, tok, [MSG, other], SCHEMA, max_new_tokens=200)
    for obj in got:
        jsonschema.validate(obj, SCHEMA)
        assert re.fullmatch(r"Ann [a-z ]{2,20}", obj["name"])
    fact, desc = generate_batch(model, tok, [MSG, other], [Fact, SCHEMA], max_new_tokens=200)  # one per row
    assert isinstance(fact, Fact) and fact.op in ("ADD", "IGNORE") and len(fact.text) <= 30
    jsonschema.validate(desc, SCHEMA)


def test_bad_schemas_are_rejected_before_generation(tiny):
    model, tok = tiny
    with pytest.raises(SchemaError, match="schema: not a valid JSON schema"):
        generate(model, tok, MSG, {"type": "strnig"})
    with pytest.raises(SchemaError, match="schema: expected a pydantic model class or a JSON-schema dict"):
        generate(model, tok, MSG, "a string")
    with pytest.raises(ValueError, match="schema: 2 schemas for a batch of 1 chats"):
        generate_batch(model, tok, [MSG], [SCHEMA, SCHEMA])
    with pytest.raises(SchemaError, match="schema"):  # valid JSON schema, but a regex the grammar lacks
        generate(model, tok, MSG, {"type": "string", "pattern": "(?<=a)b"})
    with pytest.raises(ValueError, match="max_new_tokens must be positive"):
        generate(model, tok, MSG, SCHEMA, max_new_tokens=0)


def test_reply_cut_off_by_the_token_limit_raises(tiny):
    model, tok = tiny
    with pytest.raises(StructuredOutputError, match="cut off at max_new_tokens=3"):
        generate(model, tok, MSG, SCHEMA, max_new_tokens=3)


def test_parse_reply_validates_unconstrained_text():
    ok = 'Sure! {"name": "Ann lee", "age": 30, "pets": ["cat"]} hope that helps'
    assert parse_reply(ok, SCHEMA) == {"name": "Ann lee", "age": 30, "pets": ["cat"]}
    with pytest.raises(StructuredOutputError, match="at age: 130 is greater than the maximum of 120"):
        parse_reply('{"name": "Ann lee", "age": 130, "pets": ["cat"]}', SCHEMA)
    with pytest.raises(StructuredOutputError, match="no JSON"):
        parse_reply("I cannot help", SCHEMA)
    with pytest.raises(StructuredOutputError, match="not complete JSON"):
        parse_reply('{"name": "Ann', SCHEMA)
    assert parse_reply('{"op": "ADD", "target": null, "text": ""}', Fact) == Fact(op="ADD", target=None, text="")
    with pytest.raises(StructuredOutputError, match="target"):
        parse_reply('{"op": "ADD", "target": 9, "text": ""}', Fact)


def test_json_in_reply_finds_the_asked_kind_in_prose():
    reply = 'Pairs [1] below: {"q": "Where?", "a": ["Bristol"]} done'
    assert json_in_reply(reply, dict) == {"q": "Where?", "a": ["Bristol"]}  # from the first "{"
    assert json_in_reply('Here: [{"q": "Who?"}] ok', list) == [{"q": "Who?"}]
    assert json_in_reply('x {"a": 1} y') == {"a": 1}
    with pytest.raises(StructuredOutputError, match="no JSON object"):
        json_in_reply("[1, 2]", dict)
    with pytest.raises(StructuredOutputError, match="unparsable JSON"):
        json_in_reply('{"a": 1', dict)
    with pytest.raises(StructuredOutputError, match="no JSON list"):
        json_in_reply('{"a": 1}', list)
