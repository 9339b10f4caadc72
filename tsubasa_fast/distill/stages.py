"""The distillation stages that personalize, eval qa and the demo share: QA (synthesis, the
evidence check against the student's top-k, saved), the teacher cache, training.

Each stage reads and writes the standard files of one run folder (``qa.jsonl`` and
``qa.report.json``, ``cache/``, ``adapter/``), so a pipeline is these calls in order, and a
rerun of one stage sees what the one before it left.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from ..errors import InputError, StageError
from .data import load_qa
from .prompts import without_hint

QA_FILE = "qa.jsonl"
QA_REPORT = "qa.report.json"
CACHE_DIR = "cache"
ADAPTER_DIR = "adapter"


def synth_stage(store, users: Sequence[str], chat, config, text_of=None) -> tuple[list[dict], dict]:
    """Writes and filters QA pairs from each user's live memories; returns ``(pairs, report)``.
    ``text_of``: the text of a memory as the student's prompt shows it (:func:`.synth.synthesize`).

    ``report``: ``generated``, ``kept`` and ``dropped`` summed over the users, and each user's
    full filter report under ``users``. With ``config.abstain_share`` > 0, abstention pairs
    (:mod:`.abstain`, which needs two or more users) are added after the filters and counted
    under ``abstain``. Raises StageError (with the filters' counts) when no
    pair survives: there is nothing to distil, and answering with the base instead would be a
    silent fallback.
    """
    from .synth import synthesize

    pairs: list[dict] = []
    reports: dict[str, dict] = {}
    for user in users:
        got, reports[user] = synthesize(store, user, chat, config, text_of=text_of)
        pairs.extend(got)
    dropped: dict[str, int] = {}
    for rep in reports.values():
        for k, v in rep["dropped"].items():
            dropped[k] = dropped.get(k, 0) + v
    report = {"generated": sum(r["generated"] for r in reports.values()), "kept": len(pairs),
              "dropped": dropped, "users": reports}
    if not pairs:
        raise StageError(f"no synthesised QA pair survived the filters (dropped {dropped}): nothing to distil; "
                         "try the rule question writer, no answerability check, or a larger model")
    if config.abstain_share > 0:
        from .abstain import add_abstention_pairs

        if len(users) < 2:
            raise InputError(f"abstention pairs ask one user what another did: they need two or more users, "
                             f"got {list(users)}", field="abstain_share")
        memories = {u: [r.text for r in store.all(u)] for u in users}
        pairs, report["abstain"] = add_abstention_pairs(pairs, memories, config.abstain_share, config.seed)
        report["kept"] = len(pairs)
    return pairs, report


def evidence_stage(pairs: list[dict], report: dict, retrieve: Callable[[str], list[str]], k: int,
                   policy: str) -> list[dict]:
    """Marks each pair whose evidence (every line of its context) is among the student's top-k
    memories for its question (``pair["evidence_in_topk"]``): the teacher knows more than the
    student only on the others. Adds the count and share to ``report["evidence_in_topk"]``;
    ``policy`` "exclude" drops the marked pairs (counted under ``dropped``), "include" keeps
    them. Raises StageError when excluding leaves nothing."""
    hits = 0
    for p in pairs:
        seen = set(retrieve(without_hint(p["question"])))
        p["evidence_in_topk"] = all(line in seen for line in p["context"].splitlines() if line.strip())
        hits += p["evidence_in_topk"]
    report["evidence_in_topk"] = {"k": k, "pairs": len(pairs), "in_topk": hits,
                                  "share": round(hits / len(pairs), 3) if pairs else None, "policy": policy}
    if policy == "exclude":
        pairs = [p for p in pairs if not p["evidence_in_topk"]]
        report["dropped"]["evidence_in_topk"] = hits
        report["kept"] = len(pairs)
        if not pairs:
            raise StageError(f"every pair's evidence is already in the student's top-{k}; keep them "
                             "(evidence_in_topk='include')")
    return pairs


def save_qa(out: Path, pairs: list[dict], report: dict) -> None:
    """``qa.jsonl`` and ``qa.report.json`` in ``out``, each written atomically."""
    from .synth import write_qa_jsonl, write_report

    write_qa_jsonl(Path(out) / QA_FILE, pairs)
    write_report(Path(out) / QA_REPORT, report)


def qa_stage(store, users: Sequence[str], chat, config, retrieve: Callable[[str], list[str]], k: int,
             out: Path, text_of=None) -> tuple[list[dict], dict]:
    """The QA stage of every pipeline: :func:`synth_stage`, :func:`evidence_stage` (with the
    policy ``config.evidence_in_topk``, against the student's top-``k``), then :func:`save_qa`
    into ``out``; returns the saved ``(pairs, report)``, the report with the saved pairs' ``facts``
    and ``phrasings`` (:func:`.synth.count_facts`)."""
    from .synth import count_facts

    pairs, report = synth_stage(store, users, chat, config, text_of=text_of)
    pairs = evidence_stage(pairs, report, retrieve, k, config.evidence_in_topk)
    report["facts"], report["phrasings"] = count_facts(pairs)  # of the pairs saved (abstention ones too)
    save_qa(out, pairs, report)
    return pairs, report


def teacher_stage(student, out: Path, config) -> dict:
    """The teacher's top-d cache of ``out/qa.jsonl`` in ``out/cache`` (resumes after its last shard)."""
    from .cache import TeacherCache
    from .teacher import build_teacher_cache

    out = Path(out)
    stats = build_teacher_cache(student, load_qa(out / QA_FILE), out / CACHE_DIR, config)
    return {**stats, "bytes_per_token": round(TeacherCache(out / CACHE_DIR).bytes_per_token(), 2)}


def train_stage(student, out: Path, config, retrieve: Callable[[str], list[str]] | None, user: str) -> dict:
    """Trains the adapter into ``out/adapter`` from ``out/qa.jsonl`` and ``out/cache`` (resumes
    from its last checkpoint); returns steps, first / last loss and the counts a report shows
    (the step it resumed from, padding examples per epoch, truncated prompts, a reused adapter)."""
    from .train import train

    out = Path(out)
    summary = train(student, load_qa(out / QA_FILE), out / CACHE_DIR, out / ADAPTER_DIR, config,
                    retrieve=retrieve, user=user)
    keys = ("steps", "first_loss", "last_loss", "first_epoch_loss", "last_epoch_loss", "resumed_from",
            "padded_per_epoch", "truncated")
    return {**{k: summary[k] for k in keys if k in summary}, "reused": bool(summary.get("reused"))}
