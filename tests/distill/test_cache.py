"""The teacher top-d cache: round trip, size per token, refusal of mismatches and damage, resume."""

import json

import pytest
import torch

from tsubasa_fast.distill.cache import CacheError, CacheSpec, TeacherCache, TeacherCacheWriter

SPEC = CacheSpec(model_fingerprint="m1", tokenizer_hash="t1", vocab_size=151_936, d=5,
                 temperature=1.0, template_version="v1")


def _example(seed, tokens):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, SPEC.vocab_size, (tokens, 5), generator=g, dtype=torch.int32)
    lp = torch.log_softmax(torch.randn(tokens, 5, generator=g), -1) - 0.5
    return idx, lp


def _fill(path, n=20, shard_tokens=40, spec=SPEC):
    with TeacherCacheWriter(path, spec, shard_tokens=shard_tokens) as w:
        for i in range(n):
            w.add(f"qa-{i}", *_example(i, 3 + i % 7))


def test_round_trip_and_bytes_per_token(tmp_path):
    # short factoid answers: 8-15 tokens each (answers are capped at 15 words)
    with TeacherCacheWriter(tmp_path, SPEC, shard_tokens=4096) as w:
        for i in range(200):
            w.add(f"qa-{i}", *_example(i, 8 + i % 8))
    cache = TeacherCache(tmp_path, expect=SPEC)
    assert len(cache) == 200
    for i in (0, 57, 199):
        idx, lp = cache.get(f"qa-{i}")
        want_idx, want_lp = _example(i, 8 + i % 8)
        assert torch.equal(idx, want_idx)
        torch.testing.assert_close(lp, want_lp.half().float())
    assert cache.bytes_per_token() <= 32, cache.bytes_per_token()


def test_mismatched_student_is_refused(tmp_path):
    _fill(tmp_path)
    for change, field in [(dict(model_fingerprint="other"), "model_fingerprint"),
                          (dict(tokenizer_hash="x"), "tokenizer_hash"), (dict(d=8), "d"),
                          (dict(temperature=2.0), "temperature"),
                          (dict(template_version="v2"), "template_version"),
                          (dict(vocab_size=151_000), "vocab_size")]:
        spec = CacheSpec(**{**SPEC.__dict__, **change})
        with pytest.raises(CacheError, match=field):
            TeacherCache(tmp_path, expect=spec)
    # a student with a larger vocabulary can use a smaller teacher's ids
    TeacherCache(tmp_path, expect=CacheSpec(**{**SPEC.__dict__, "vocab_size": 152_064}))


def test_damaged_shard_is_detected(tmp_path):
    _fill(tmp_path)
    shard = sorted(tmp_path.glob("shard-*.safetensors"))[1]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="damaged"):
        TeacherCache(tmp_path)


def test_interrupted_run_resumes_after_last_complete_shard(tmp_path):
    w = TeacherCacheWriter(tmp_path, SPEC, shard_tokens=20)
    for i in range(9):
        w.add(f"qa-{i}", *_example(i, 3 + i % 7))
    # the process dies here: queued examples of the unfinished shard are lost, nothing else
    stored = set(w.done)
    assert stored and len(stored) < 9
    with pytest.raises(CacheError, match="incomplete"):
        TeacherCache(tmp_path)
    w2 = TeacherCacheWriter(tmp_path, SPEC, shard_tokens=20)
    assert w2.done == stored
    for i in range(20):
        if f"qa-{i}" not in w2.done:
            w2.add(f"qa-{i}", *_example(i, 3 + i % 7))
    w2.close()
    cache = TeacherCache(tmp_path, expect=SPEC)
    assert len(cache) == 20
    torch.testing.assert_close(cache.get("qa-4")[1], _example(4, 3 + 4 % 7)[1].half().float())
    with pytest.raises(CacheError, match="model_fingerprint"):
        TeacherCacheWriter(tmp_path, CacheSpec(**{**SPEC.__dict__, "model_fingerprint": "m2"}))


def test_bad_examples_are_refused(tmp_path):
    w = TeacherCacheWriter(tmp_path, SPEC)
    idx, lp = _example(0, 4)
    with pytest.raises(ValueError, match="outside"):
        w.add("a", idx + SPEC.vocab_size, lp)
    with pytest.raises(ValueError, match=r"\[T, 5\]"):
        w.add("a", idx[:, :4], lp[:, :4])
    lp[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        w.add("a", idx, lp)
    w.add("b", *_example(1, 4))
    with pytest.raises(ValueError, match="already"):
        w.add("b", *_example(1, 4))


def test_manifest_is_readable_json(tmp_path):
    _fill(tmp_path, n=3)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert raw["d"] == 5 and raw["complete"] is True
    assert all(len(s["sha256"]) == 64 for s in raw["shards"])
