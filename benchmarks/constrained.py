"""Constrained decoding libraries compared on observation extraction with SmolLM2-135M.

    python -m benchmarks.constrained --prompts 10 --json benchmarks/results/constrained.json

For each of the first N (session, speaker) extraction prompts of the LoCoMo dev file (the
prompts and JSON schemas of tsubasa_fast.memory.extraction), every backend decodes greedily
(repetition penalty 1.2, as the extractor does), prompt by prompt in turn so that machine noise
hits all backends alike. Per backend: schema-valid replies (parsed JSON checked by jsonschema,
an independent validator), generated tokens per second, the time spent inside the backend's
logits processor per generated token (the constraint's own overhead), and the one-off setup
(tokenizer vocabulary) and per-schema compile times. ``none`` is unconstrained generation
(its reply validated with the JSON found in the text). Not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo" / "locomo_dev.json"
if not DEV.is_file():
    DEV = Path("/work/shared/data/locomo/locomo_dev.json")


class Timed:
    """Wraps a logits processor (or prefix_allowed_tokens_fn) and sums the seconds spent inside."""

    def __init__(self, fn):
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, *args):
        t = time.perf_counter()
        out = self.fn(*args)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return out


def backends(model, tok):
    """name -> (setup seconds, make(schema) -> (generate kwargs, Timed) )."""
    import llguidance.hf

    from tsubasa_fast import structured as S

    n_vocab = model.get_output_embeddings().weight.shape[0]
    out = {}

    t = time.perf_counter()
    llt = llguidance.hf.from_tokenizer(tok, n_vocab=n_vocab)

    def make_llg(schema, prompt_len):
        g = S.Grammar(schema)
        p = Timed(S.GrammarLogitsProcessor(g, llt, 1, prompt_len, tok.eos_token_id))
        return {"logits_processor": [p]}, p
    out["llguidance"] = (time.perf_counter() - t, make_llg)

    import xgrammar as xgr
    import xgrammar.contrib.hf as xhf

    t = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=n_vocab)
    compiler = xgr.GrammarCompiler(info)

    def make_xgr(schema, prompt_len):
        compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(", ", ": "))
        p = Timed(xhf.LogitsProcessor(compiled))
        return {"logits_processor": [p]}, p
    out["xgrammar"] = (time.perf_counter() - t, make_xgr)

    import outlines
    from outlines.backends.outlines_core import OutlinesCoreBackend

    t = time.perf_counter()
    ocb = OutlinesCoreBackend(outlines.from_transformers(model, tok))

    def make_outlines(schema, prompt_len):
        p = Timed(ocb.get_json_schema_logits_processor(json.dumps(schema)))
        return {"logits_processor": [p]}, p
    out["outlines"] = (time.perf_counter() - t, make_outlines)

    import sys

    import transformers.tokenization_utils_base as tub

    # lm-format-enforcer 0.11.3 imports transformers.tokenization_utils, which transformers 5
    # removed; alias the module it moved to so the library can be measured at all.
    sys.modules.setdefault("transformers.tokenization_utils", tub)
    from lmformatenforcer import JsonSchemaParser
    from lmformatenforcer.integrations.transformers import (build_token_enforcer_tokenizer_data,
                                                            build_transformers_prefix_allowed_tokens_fn)

    t = time.perf_counter()
    lmfe_data = build_token_enforcer_tokenizer_data(tok)

    def make_lmfe(schema, prompt_len):
        p = Timed(build_transformers_prefix_allowed_tokens_fn(lmfe_data, JsonSchemaParser(schema)))
        return {"prefix_allowed_tokens_fn": p}, p
    out["lm-format-enforcer"] = (time.perf_counter() - t, make_lmfe)

    out["none"] = (0.0, lambda schema, prompt_len: ({}, None))
    return out


def main(argv=None):
    import jsonschema
    import torch

    from tsubasa_fast.memory.extraction import REPETITION_PENALTY, build_prompt, extraction_schema
    from tsubasa_fast.memory.locomo import load_locomo
    from tsubasa_fast.models import load_causal_lm
    from tsubasa_fast.structured import StructuredOutputError, parse_reply

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="+", default=None, help="backends to run")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, tok = load_causal_lm(None)
    convs = load_locomo(DEV)
    jobs = [(s, sp) for c in convs for s in c.sessions for sp in c.speakers][: args.prompts]
    names = backends(model, tok)
    if args.only:
        names = {k: v for k, v in names.items() if k in args.only}
    rows = {k: {"setup_s": v[0], "compile_s": [], "valid": 0, "n": 0, "tokens": 0, "wall_s": 0.0,
                "inside_s": 0.0, "errors": []} for k, v in names.items()}
    samples = {}
    for i, (session, speaker) in enumerate(jobs):
        schema = extraction_schema(session, speaker)
        msgs = build_prompt(session, speaker)
        enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        plen = enc["input_ids"].shape[1]
        for name, (_, make) in names.items():
            r = rows[name]
            r["n"] += 1
            try:
                t = time.perf_counter()
                kw, timed = make(schema, plen)
                r["compile_s"].append(time.perf_counter() - t)
                t = time.perf_counter()
                with torch.inference_mode():
                    out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                                         temperature=None, top_p=None, top_k=None,
                                         repetition_penalty=REPETITION_PENALTY,
                                         pad_token_id=tok.eos_token_id, **kw)
                r["wall_s"] += time.perf_counter() - t
                new = out[0, plen:]
                r["tokens"] += int(new.numel())
                r["inside_s"] += timed.seconds if timed else 0.0
                text = tok.decode(new, skip_special_tokens=True).strip()
            except Exception as e:  # a backend that breaks on this schema counts as invalid
                r["errors"].append(f"{type(e).__name__}: {str(e)[:160]}")
                continue
            try:
                if name == "none":
                    parse_reply(text, schema)
                else:
                    jsonschema.validate(json.loads(text), schema)
                r["valid"] += 1
            except (ValueError, StructuredOutputError, jsonschema.ValidationError):
                r["invalid"] = r.get("invalid", 0) + 1  # counted: the table reports valid / prompts
            if i < 2:
                samples.setdefault(name, []).append(text[:300])
        print(f"prompt {i + 1}/{len(jobs)} done", flush=True)
    table = []
    for name, r in rows.items():
        table.append({
            "backend": name, "valid": f"{r['valid']}/{r['n']}",
            "tokens_per_s": round(r["tokens"] / r["wall_s"], 2) if r["wall_s"] else None,
            "ms_inside_per_token": round(1e3 * r["inside_s"] / r["tokens"], 3) if r["tokens"] else None,
            "setup_s": round(r["setup_s"], 2),
            "compile_ms_median": round(1e3 * statistics.median(r["compile_s"]), 1) if r["compile_s"] else None,
            "tokens": r["tokens"], "errors": r["errors"][:3]})
    for row in table:
        print(json.dumps(row))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "table": table,
                                         "samples": samples}, indent=1))


if __name__ == "__main__":
    main()
