"""Self-learning data (TSUBASA wing 2, step 1): factoid QA pairs written from a user's memories.

For each group of ``group_size`` live memories of a user, a question writer produces short
question-answer pairs that keep their provenance (the observation text(s) as ``context``,
the record ids, dia_ids and observed_at). Two writers behind one interface:

* ``llm`` (the paper): the base LLM, any ``chat(messages) -> str`` callable (e.g.
  :class:`tsubasa_fast.llm.ChatLM`), prompted with one worked example. Its reply is parsed
  tolerantly: a JSON list / object, or ``Q: ... A: ...`` lines (SmolLM2-135M rarely writes
  valid JSON). A reply with no usable pair is counted as malformed and skipped, never fatal.
* ``rule`` (ours, METHOD.md: the pipeline degrades gracefully with small models or no LLM):
  deterministic templates over an observation's subject / verb / object / date / place.

Filters, applied in this order and each counted in the report: answers longer than
``max_answer_words``; questions about when a conversation took place; duplicates (a
normalised question already kept, from any observation: one question with several answers
would teach the student a coin toss); malformed pairs (:mod:`.pair_check`: the question must
name the user in the third person, the answer must be short, complete, supported by the
context and of the kind the question asks for; each broken rule is counted); pairs the model
cannot answer from their own context
(the model is re-asked with the context + question and its reply is compared with the
pair's answer by token F1 against ``f1_threshold``; ours: the F1 of both sides without the
question's own words also counts, so a reply restating the question is scored on what it
adds; a re-ask that fails is counted as an error, not as unanswerable). The last one needs an
LLM: with the rule writer and no LLM it is skipped, and the skipped pairs are counted.

This module is the pipeline; the filters' text tests are in :mod:`.synth_filters`, the
unconstrained reply parser in :mod:`.synth_parsing`, the prompts in :mod:`.synth_prompts`, the
writers in :mod:`.writer` (llm) and :mod:`.rule_writer` (rule).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..errors import InputError
from ..fileio import atomic_write_text
from ..memory.store import MemoryStore, Record
from ..progress import progress_bar
from .configs import SynthConfig
from .data import pair_key
from .pair_check import RULES as PAIR_RULES
from .pair_check import pair_problems
from .rule_writer import rule_pairs
from .synth_filters import (answer_f1, clean_reply_answer, context_overlap, is_conversation_time_question,
                            normalize_answer, normalize_question)
from .synth_parsing import parse_pairs
from .synth_prompts import answer_messages, generation_messages

log = logging.getLogger(__name__)

ChatFn = Callable[[list[dict]], str]
SYNTH_VERSION = "tsubasa-synth-1"


# --------------------------------------------------------------------------- text utils
def _call(chat: ChatFn, messages: list[dict], max_new_tokens: int) -> str:
    """Call ``chat``, passing ``max_new_tokens`` only when it accepts it."""
    try:
        params = inspect.signature(chat).parameters
    except (TypeError, ValueError):
        params = {}
    if "max_new_tokens" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return str(chat(messages, max_new_tokens=max_new_tokens))
    return str(chat(messages))


# ----------------------------------------------------------------------------- pipeline
_RAW_UTTERANCE = re.compile(r"^(?:\[[^\]]*\]\s*)?[A-Z][\w .'-]{0,40}:\s")


def is_raw_utterance(record: Record) -> bool:
    """True for a memory that is a speaker's raw turn ("[date] Maya: I ..."), not an observation."""
    return (record.source or {}).get("kind") == "utterances" or bool(_RAW_UTTERANCE.match(record.text))


def _groups(records: Sequence[Record], size: int) -> list[list[Record]]:
    return [list(records[i:i + size]) for i in range(0, len(records), size)]


def _provenance(user: str, group: Sequence[Record]) -> dict:
    dates = sorted({r.observed_at for r in group if r.observed_at})
    return {"user": user,
            "record_ids": [r.id for r in group],
            "dia_ids": list(dict.fromkeys(d for r in group for d in r.dia_ids)),
            "observed_at": dates[-1] if dates else None,
            "sessions": sorted({r.source.get("session") for r in group if r.source.get("session") is not None})}


def synthesize(store: MemoryStore, user: str, chat: ChatFn | None, config: SynthConfig | None = None,
               progress: bool = True, text_of: Callable[[Record], str] | None = None) -> tuple[list[dict], dict]:
    """Write and filter QA pairs from ``user``'s live memories; returns ``(pairs, report)``.

    ``text_of`` gives a memory's text as the student's prompt will show it (default the stored
    text; eval qa dates undated observations there): the writer, the filters and the pair's
    ``context`` (the teacher's evidence) use it, so the teacher sees what the student is shown.

    ``chat`` is required for the ``llm`` generator; with the ``rule`` generator it is used
    only for the answerability filter (skipped, and counted, when ``chat`` is None).
    Raises ValueError for an unknown user (no live memories).
    """
    cfg = config or SynthConfig()
    if cfg.generator != "rule" and chat is None:
        raise ValueError(f"the {cfg.generator} generator needs a chat model (or use generator='rule')")
    records = store.all(user)
    if not records:
        users = ", ".join(store.users()[:10]) or "none"
        raise InputError(f"no live memories for user {user!r} in {store.path} (users: {users})", field="user")
    if cfg.generator == "rule":
        raw = [r for r in records if is_raw_utterance(r)]
        if raw and (any((r.source or {}).get("kind") == "utterances" for r in raw) or 2 * len(raw) >= len(records)):
            raise InputError(
                f"the rule question writer needs parsed observations (third-person sentences about the user), "
                f"but {len(raw)} of {len(records)} memories of {user!r} are raw utterances (e.g. {raw[0].text[:60]!r}); "
                "write the memory from observations or LLM extraction, or use the llm question writer",
                field="generator")
    if chat is not None and cfg.seed is not None:
        try:
            import torch

            torch.manual_seed(cfg.seed)
        except ImportError:  # pragma: no cover
            pass
    text_of = text_of or (lambda r: r.text)
    groups = _groups(records, cfg.group_size)
    if cfg.limit is not None:
        groups = groups[: cfg.limit]
    check = cfg.check_answerable and chat is not None
    writer_stats: dict = {}
    written = None
    if cfg.generator == "llm":
        from .writer import WRITER_VERSION, write_pairs

        written = write_pairs(chat, ["\n".join(text_of(r) for r in g) for g in groups], user, cfg.pairs_per_prompt,
                              stats=writer_stats, round_trip=cfg.round_trip)
    report = {
        "version": SYNTH_VERSION, "user": user, "generator": cfg.generator,
        "writer_version": WRITER_VERSION if cfg.generator == "llm" else None, "writer": writer_stats,
        "live_memories": len(records), "observations": sum(len(g) for g in groups),
        "prompts": len(groups), "generated": 0, "kept": 0,
        "malformed_generations": 0, "malformed_items": 0,
        "dropped": {"too_long": 0, "ungrounded": 0, "conversation_time": 0, "duplicate": 0,
                    "unanswerable": 0, "answer_check_error": 0, "malformed": 0},
        "malformed_rules": dict.fromkeys(PAIR_RULES, 0),
        "well_formed_check": "on" if cfg.check_well_formed else "skipped",
        "answerability": "llm" if check else "skipped", "answerability_skipped": 0,
        "answer_f1_mean": None, "config": asdict(cfg),
        "dropped_examples": {k: [] for k in ("too_long", "ungrounded", "conversation_time", "duplicate",
                                             "unanswerable", "answer_check_error", "malformed")},
    }

    def drop(reason: str, question: str, answer: str, **extra) -> None:
        report["dropped"][reason] += 1
        if len(report["dropped_examples"][reason]) < cfg.report_examples:
            report["dropped_examples"][reason].append({"question": question, "answer": answer, **extra})

    seen: set[str] = set()
    reasks: dict[tuple[str, str], str] = {}
    f1s: list[float] = []
    kept: list[dict] = []
    started = time.perf_counter()
    bar = None
    if progress:
        bar = progress_bar(total=len(groups), desc=f"synth ({cfg.generator})", unit="prompt")
    try:
        for gi, group in enumerate(groups):
            texts = [text_of(r) for r in group]
            context = "\n".join(texts)
            if written is not None:
                cands = written[gi]
                if not cands:
                    report["malformed_generations"] += 1
            elif cfg.generator == "llm-text":
                try:
                    reply = _call(chat, generation_messages(texts, cfg.pairs_per_prompt), cfg.max_new_tokens)
                except Exception as exc:  # a failed generation is skipped, never fatal
                    log.warning("generation failed for records %s: %s", [r.id for r in group], exc)
                    reply = ""
                cands, bad = parse_pairs(reply)
                report["malformed_items"] += bad
                if not cands:
                    report["malformed_generations"] += 1
                    log.info("malformed generation for records %s: %r", [r.id for r in group], reply[:200])
            else:
                cands = [p for t in texts for p in rule_pairs(t, cfg.pairs_per_prompt, cfg.max_answer_words, user=user)]
            report["generated"] += len(cands)
            for question, answer in cands:
                if len(answer.split()) > cfg.max_answer_words:
                    drop("too_long", question, answer)
                    continue
                overlap = context_overlap(answer, context)
                if overlap < cfg.min_context_overlap:
                    drop("ungrounded", question, answer, overlap=round(overlap, 3))
                    continue
                if is_conversation_time_question(question):
                    drop("conversation_time", question, answer)
                    continue
                qnorm = normalize_question(question)
                if not qnorm or qnorm in seen:
                    drop("duplicate", question, answer)
                    continue
                problems = (pair_problems(question, answer, context, user, max_words=cfg.max_answer_words)
                            if cfg.check_well_formed else [])
                if problems:
                    for rule in problems:
                        report["malformed_rules"][rule] += 1
                    drop("malformed", question, answer, problems=problems)
                    continue
                f1 = None
                reanswer = None
                if check:
                    if (context, qnorm) not in reasks:
                        try:
                            reasks[(context, qnorm)] = clean_reply_answer(
                                _call(chat, answer_messages(context, question), cfg.answer_max_new_tokens))
                        except Exception as exc:  # an error, not a verdict on the pair: counted apart
                            log.warning("answerability re-ask failed: %s", exc)
                            reasks[(context, qnorm)] = None
                    reanswer = reasks[(context, qnorm)]
                    if reanswer is None:
                        drop("answer_check_error", question, answer)
                        continue
                    f1 = answer_f1(reanswer, answer, question, cfg.strip_question_words)
                    f1s.append(f1)
                    if f1 < cfg.f1_threshold:
                        drop("unanswerable", question, answer, reply=reanswer, f1=round(f1, 4))
                        continue
                else:
                    report["answerability_skipped"] += 1
                key = pair_key(question, answer, context)
                seen.add(qnorm)
                pair = {"key": key, "question": question, "answer": answer, "context": context,
                        **_provenance(user, group), "generator": cfg.generator}
                if f1 is not None:
                    pair["answer_check"] = {"reply": reanswer, "f1": round(f1, 4)}
                kept.append(pair)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(kept=len(kept), generated=report["generated"])
    finally:
        if bar is not None:
            bar.close()
    report["kept"] = len(kept)
    report["facts"], report["phrasings"] = count_facts(kept)
    report["answer_f1_mean"] = round(sum(f1s) / len(f1s), 4) if f1s else None
    report["seconds"] = round(time.perf_counter() - started, 2)
    return kept, report


def count_facts(pairs: Iterable[dict]) -> tuple[int, int]:
    """``(facts, phrasings)`` of kept pairs: a fact is one answer from one context; its phrasings are
    the questions beyond its first (several per fact are allowed: the duplicate filter drops only
    one question with two answers)."""
    pairs = list(pairs)
    facts = len({(p["context"], normalize_answer(p["answer"])) for p in pairs})
    return facts, len(pairs) - facts


def write_qa_jsonl(path: str | os.PathLike, pairs: Iterable[dict]) -> int:
    """Write pairs as JSONL atomically (fileio: temp file + fsync + os.replace); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(p, ensure_ascii=False) + "\n" for p in pairs]
    atomic_write_text(path, "".join(lines))
    return len(lines)


def write_report(path: str | os.PathLike, report: dict) -> None:
    """Write the filter report as JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=1, ensure_ascii=False, default=str) + "\n")


