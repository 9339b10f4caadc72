"""Writing pipelines: a LoCoMo conversation -> per-speaker memories in a store.

Sources: ``utterances`` (raw turns, the RAG baseline), ``observations`` (the dataset's own
per-session observations, no LLM) and ``llm`` (the extractor). Each observation goes
through a manager (rule / llm / static) and :func:`apply_decision`. With ``observations`` and
``llm``, a turn that no observation of its session cites follows them as an observation of its
own (in the third person; ``uncited_turns``, on by default): the dataset's observations cite 3
of 4 evidence turns, and what the extraction missed is still remembered and evolved.

Idempotent and crash-safe: every observation carries a key derived from its source ids
(``obs:conv-26:3:Caroline:4``); keys already in the event log are skipped, so replaying a
conversation, or resuming one killed half-way, adds nothing twice. Extractor outputs are
cached in the store (kv) so a replay does not rerun the LLM, and every raw session is stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from .config import SOURCES  # noqa: F401  (re-exported)
from .evolution import Manager, Observation, StaticManager, apply_decision
from .extraction import ObservationExtractor, resolve_relative_dates, utterance_observations
from ..core import Conversation, Session
from ..errors import InputError
from .store import MemoryStore

log = logging.getLogger(__name__)
UNCITED_TURN = "uncited_turn"  # source kind of a turn no observation of its session cites


@dataclass
class IngestStats:
    observations: int = 0
    applied: int = 0
    replayed: int = 0
    ops: dict = field(default_factory=dict)
    skipped_sessions: int = 0
    uncited_turns: int = 0  # of ``observations``: turns no observation cites (``uncited_turns``)

    def as_dict(self) -> dict:
        return {"observations": self.observations, "applied": self.applied, "replayed": self.replayed,
                "ops": dict(self.ops), "skipped_sessions": self.skipped_sessions,
                "uncited_turns": self.uncited_turns}


def memory_text(text: str, session: Session, date_prefix: bool) -> str:
    return f"[{session.date_str}] {text}" if date_prefix else text


def session_observations(conv: Conversation, session: Session, source: str, *,
                         extractor: ObservationExtractor | None = None, store: MemoryStore | None = None,
                         date_prefix: bool = True, resolve_dates: bool = True,
                         speakers: tuple[str, ...] | None = None,
                         utterance_fallback: bool = False,
                         uncited_turns: bool = True) -> tuple[list[Observation], int]:
    """The observations one session contributes, in order; and the count of skipped extractions.

    ``speakers`` limits the work to those speakers' memories (default: both).
    ``uncited_turns`` (ours; ``observations`` and ``llm``): a speaker's turns that none of their
    observations of the session cites follow those observations, in the third person
    (:func:`.extraction.third_person`), through the same manager, so what the extraction missed
    is still remembered, and a changed state in it is still RECONCILEd. Keys ``turn:conv:dia_id``.
    ``utterance_fallback`` (ours): when the LLM's extraction of a session stays malformed, the
    speaker's own utterances of that session, in the third person
    (:func:`.extraction.utterance_observations`), become its observations instead of nothing;
    counted in the extractor's ``fallback_sessions`` / ``fallback_observations``.
    """
    obs: list[Observation] = []
    skipped = 0
    base = {"conversation": conv.sample_id, "session": session.number, "kind": source}
    iso = session.date.date().isoformat()
    wanted = conv.speakers if speakers is None else tuple(x for x in conv.speakers if x in speakers)
    if source == "utterances":
        for t in session.turns:
            if t.speaker not in wanted:
                continue
            text = memory_text(f"{t.speaker}: {t.full_text()}", session, date_prefix)
            obs.append(Observation(conv.user_id(t.speaker), text, iso, dict(base, dia_ids=[t.dia_id]),
                                   f"utt:{conv.sample_id}:{t.dia_id}", date_label=session.date_str))
        return obs, 0
    for speaker in wanted:
        user = conv.user_id(speaker)
        if source == "observations":
            items = conv.observations.get(session.number, {}).get(speaker, [])
            pairs = [(text, list(ids)) for text, ids in items]
        elif source == "llm":
            if extractor is None:
                raise InputError("llm needs an extractor (a chat model)", field="source")
            cache_key = f"extract:{extractor.name}:{conv.sample_id}:{session.number}:{speaker}"
            cached = store.kv_get(cache_key) if store is not None else None
            if cached is None:
                got = extractor.extract(session, speaker)
                if got is None:
                    skipped += 1
                    if store is not None:
                        store.log_decision(user, "EXTRACTION_SKIPPED", decision_source="llm",
                                           payload={"conversation": conv.sample_id, "session": session.number,
                                                    "fallback": "utterances" if utterance_fallback else None})
                    if not utterance_fallback:
                        continue
                    got = utterance_observations(session, speaker)
                    extractor.stats["fallback_sessions"] += 1
                    extractor.stats["fallback_observations"] += len(got)
                cached = [[e.text, list(e.dia_ids)] for e in got]
                if store is not None:
                    store.kv_put(cache_key, cached)
            pairs = [(t, ids) for t, ids in cached]
        else:
            raise InputError(f"unknown source {source!r}; expected one of {SOURCES}", field="source")
        keyed = [(text, ids, f"{source}:{conv.sample_id}:{session.number}:{speaker}:{i}", source)
                 for i, (text, ids) in enumerate(pairs)]
        if uncited_turns:
            cited = {d for _, ids in pairs for d in ids}
            keyed += [(e.text, list(e.dia_ids), f"turn:{conv.sample_id}:{e.dia_ids[0]}", UNCITED_TURN)
                      for e in utterance_observations(session, speaker) if e.dia_ids[0] not in cited]
        for text, ids, key, kind in keyed:
            if resolve_dates:
                text = resolve_relative_dates(text, session.date)
            obs.append(Observation(user, memory_text(text, session, date_prefix), iso,
                                   dict(base, kind=kind, dia_ids=ids), key, date_label=session.date_str))
    return obs, skipped


def ingest_conversation(store: MemoryStore, conv: Conversation, source: str, manager: Manager | None = None,
                        *, extractor: ObservationExtractor | None = None, date_prefix: bool = True,
                        resolve_dates: bool = True, progress=None, stats: IngestStats | None = None,
                        on_decision: Callable[[Observation, object], None] | None = None,
                        speakers: tuple[str, ...] | None = None, utterance_fallback: bool = False,
                        uncited_turns: bool = True) -> IngestStats:
    """Write one conversation into ``store`` (see the module docstring). Returns counters.

    ``on_decision(observation, decision)`` is called after each applied decision (e.g. to
    print ADD / UPDATE / RECONCILE / IGNORE as they happen).
    """
    if source not in SOURCES:
        raise InputError(f"unknown source {source!r}; expected one of {SOURCES}", field="source")
    manager = manager or StaticManager()
    stats = stats or IngestStats()
    for session in conv.sessions:
        for speaker in (conv.speakers if speakers is None else speakers):
            turns = [{"dia_id": t.dia_id, "speaker": t.speaker, "text": t.text, "blip_caption": t.blip_caption}
                     for t in session.turns]
            store.put_raw_session(f"raw:{conv.sample_id}:{session.number}:{speaker}", conv.user_id(speaker),
                                  {"date_time": session.date_time, "turns": turns},
                                  observed_at=session.date.isoformat())
        obs, skipped = session_observations(conv, session, source, extractor=extractor, store=store,
                                            date_prefix=date_prefix, resolve_dates=resolve_dates,
                                            speakers=speakers, utterance_fallback=utterance_fallback,
                                            uncited_turns=uncited_turns)
        stats.skipped_sessions += skipped
        todo = [o for o in obs if store.op_result(o.key) is None]
        stats.observations += len(obs)
        stats.uncited_turns += sum(o.source["kind"] == UNCITED_TURN for o in obs)
        stats.replayed += len(obs) - len(todo)
        if todo:
            vecs = store.embedder.embed([o.text for o in todo])
            for o, v in zip(todo, vecs):
                o.vec = v
        for o in todo:
            decision = manager.decide(store, o)
            apply_decision(store, o, decision)
            if on_decision is not None:
                on_decision(o, decision)
            stats.applied += 1
            stats.ops[decision.op] = stats.ops.get(decision.op, 0) + 1
        if progress is not None:
            progress.update(1)
    store.flush()
    return stats
