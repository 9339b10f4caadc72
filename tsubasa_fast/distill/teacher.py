"""Building the teacher top-d cache: the frozen base model sees the gold context.

For each QA pair the teacher (base model, adapter disabled) is teacher-forced on
``evidence + question -> answer``; its final hidden states at the answer-predicting rows go
through ``fused_linear_select_topd`` with the lm_head, so the full logits are never stored
and never held beyond one chunk. The cache resumes after the last complete shard.
"""

from __future__ import annotations

import logging

import torch

from ..loss import fused_linear_select_topd
from ..progress import progress_bar
from .cache import CacheSpec, TeacherCacheWriter
from .configs import TeacherConfig  # noqa: F401 (re-exported)
from .data import QAPair, collate, encode
from .prompts import TEMPLATE_VERSION, teacher_messages

log = logging.getLogger(__name__)


def cache_spec(student, config: TeacherConfig) -> CacheSpec:
    """What a cache built by (and for) this student's base model must record."""
    return CacheSpec(model_fingerprint=student.fingerprint, tokenizer_hash=student.tokenizer_hash,
                     vocab_size=student.vocab_size, d=config.d, temperature=config.temperature,
                     template_version=TEMPLATE_VERSION, logprob_dtype=config.logprob_dtype)


def build_teacher_cache(student, pairs: list[QAPair], out_dir, config: TeacherConfig,
                        progress: bool = True) -> dict:
    """Caches the teacher's top-d entries of every pair not cached yet; returns counts."""
    writer = TeacherCacheWriter(out_dir, cache_spec(student, config), shard_tokens=config.shard_tokens)
    todo = [p for p in pairs if p.key not in writer.done]
    stats = {"pairs": len(pairs), "resumed": len(pairs) - len(todo), "cached": 0, "tokens": 0, "truncated": 0}
    tok = student.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    bar = progress_bar(total=len(todo), desc="teacher cache", unit="pair", disable=not progress)
    try:
        with student.teacher():
            for start in range(0, len(todo), config.batch_size):
                chunk = todo[start : start + config.batch_size]
                seqs = [encode(tok, teacher_messages(p.context, p.question), p.answer, config.max_length)
                        for p in chunk]
                batch = collate(seqs, pad)
                hidden = student.hidden_states(batch["input_ids"], batch["attention_mask"])
                rows = hidden[batch["target_mask"].to(hidden.device)]
                top = fused_linear_select_topd(rows, student.head_weight, config.d,
                                               bias=student.head_bias, temperature=config.temperature)
                offset = 0
                for pair, seq in zip(chunk, seqs):
                    n = seq.answer_len
                    writer.add(pair.key, top.indices[offset : offset + n], top.logprobs[offset : offset + n])
                    offset += n
                    stats["tokens"] += n
                    stats["truncated"] += seq.truncated > 0  # prompt cut to max_length: evidence may be lost
                stats["cached"] += len(chunk)
                bar.update(len(chunk))
    except BaseException:
        writer.flush()  # keep every finished example; the cache stays resumable
        raise
    finally:
        bar.close()
    writer.close()
    log.info("teacher cache %s: %s", out_dir, stats)
    return stats


def teacher_topd(student, pair: QAPair, config: TeacherConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's top-d entries for one pair, computed live (tests and diagnostics)."""
    tok = student.tokenizer
    seq = encode(tok, teacher_messages(pair.context, pair.question), pair.answer, config.max_length)
    batch = collate([seq], tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    with student.teacher():
        hidden = student.hidden_states(batch["input_ids"], batch["attention_mask"])
        rows = hidden[batch["target_mask"].to(hidden.device)]
        top = fused_linear_select_topd(rows, student.head_weight, config.d, bias=student.head_bias,
                                       temperature=config.temperature)
    return top.indices, top.logprobs
