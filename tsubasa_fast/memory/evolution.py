"""Memory evolution: one decision per new observation (ADD, UPDATE i, RECONCILE i, IGNORE).

Three managers behind one interface, ``decide(store, obs) -> Decision``:

* :class:`RuleManager` - deterministic, slot-aware (slots.py) + embedding similarity, no LLM (ours):
  near-duplicate -> IGNORE; same subject with a changed state -> RECONCILE (dated narrative
  keeping both states); same subject with new detail -> UPDATE (merged text); else ADD.
* :class:`LLMManager` - the paper's manager: the LLM sees the numbered live memories (the
  top-s most similar when the user has many) and answers under a JSON-schema grammar
  (:func:`manager_schema`), so a ChatLM's decision is always valid; an unconstrained chat's
  invalid reply falls back to the rule manager (counted in ``stats``).
* :class:`StaticManager` - append everything (the paper's ablation).

:func:`apply_decision` writes the decision to the store; every decision, IGNORE included,
lands in the event log under the observation's idempotency key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from ..errors import InputError
from ..structured import json_in_reply
from .slots import (Segment, Slot, content_stems, extract_slots, human_date, informative, names,
                    past_tense, render, segments, strip_prefix, subject_of, subjects_compatible, words)
from .store import MemoryStore, Record

OPS = ("ADD", "UPDATE", "RECONCILE", "IGNORE")
# Words that signal a change of state rather than added detail.
_CHANGE = re.compile(
    r"\b(no longer|not anymore|anymore|stopped|quit|quits|moved|moves|switched|changed|instead|"
    r"broke up|divorced|sold|gave up|used to|formerly|now has|now lives|now works)\b", re.I)


@dataclass
class Observation:
    """A new fact about a user, ready for a manager."""
    user_id: str
    text: str
    observed_at: str | None            # ISO date of the session / event
    source: dict                       # conversation, session, dia_ids, kind
    key: str                           # idempotency key (event log op_key)
    vec: np.ndarray | None = None      # embedding, computed once by the pipeline
    date_label: str | None = None      # human date for narratives, e.g. "8 May 2023"


@dataclass
class Decision:
    op: str
    target_id: int | None = None
    text: str | None = None            # the rewritten memory for UPDATE / RECONCILE
    reason: str = ""
    decision_source: str = "rule"
    similarity: float | None = None

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"op must be one of {OPS}, got {self.op!r}")
        if self.op in ("UPDATE", "RECONCILE") and (self.target_id is None or not self.text):
            raise ValueError(f"{self.op} needs a target_id and a text")


class Manager(Protocol):
    name: str
    stats: dict

    def decide(self, store: MemoryStore, obs: Observation) -> Decision: ...


class StaticManager:
    """Append every observation (the paper's static-accumulation ablation)."""

    name = "static"

    def __init__(self):
        self.stats: dict = {"ADD": 0}

    def decide(self, store: MemoryStore, obs: Observation) -> Decision:
        self.stats["ADD"] += 1
        return Decision("ADD", reason="static accumulation", decision_source="static")


class RuleManager:
    """Deterministic slot-aware evolution (no LLM).

    1. What the observation is about: its slots (slots.py: residence, job, count of X,
       preference towards X, habit, relationship, diet, education, age, favourite X). A live
       memory whose current clause holds the same slot is the target, however far apart the
       embeddings are ("moved to Bristol" vs "lives in Leeds": cosine 0.76). A changed field
       (another place, count, polarity, partner, a habit stopped) -> RECONCILE: one dated
       narrative that keeps the earlier state in the past tense and ends on the current one.
       The same state -> IGNORE when nothing new (number, name, date, slot or, below the
       duplicate threshold, content word), else UPDATE.
    2. No slot in common: the nearest memory by cosine. Below ``same_subject`` -> ADD; a
       different fact of the same kind (loves swimming vs loves running), or another person's
       ("Maya's sister ...") -> ADD; nothing new -> IGNORE; change words ("no longer",
       "moved") -> RECONCILE; else UPDATE (merged, dates of both kept).

    Thresholds are cosine similarities of the store's embedder; the defaults suit
    all-MiniLM-L6-v2. ``max_len`` caps merged texts: an UPDATE beyond it becomes an ADD, a
    RECONCILE drops its oldest clauses (they stay in the record's version history).
    ``dated=False`` (ours, for the ablation) writes merged texts without their clauses' dates:
    dates cost MiniLM some evidence recall (benchmarks/README.md, Evolution).
    """

    name = "rule"

    def __init__(self, duplicate: float = 0.92, same_subject: float = 0.80, max_len: int = 600,
                 neighbours: int = 20, dated: bool = True):
        if not 0 < same_subject <= duplicate <= 1:
            raise ValueError(f"need 0 < same_subject ({same_subject}) <= duplicate ({duplicate}) <= 1")
        if neighbours < 1:
            raise ValueError(f"neighbours must be >= 1, got {neighbours}")
        self.duplicate, self.same_subject, self.max_len = duplicate, same_subject, max_len
        self.neighbours, self.dated = neighbours, dated
        self.stats: dict = {op: 0 for op in OPS}
        self._slots: dict[int, list[Slot]] = {}  # record id -> slots (a record id's text never changes)

    def decide(self, store: MemoryStore, obs: Observation) -> Decision:
        d = self._decide(store, obs)
        self.stats[d.op] += 1
        return d

    def slots_of(self, rec: Record) -> list[Slot]:
        got = self._slots.get(rec.id)
        if got is None:
            got = self._slots[rec.id] = extract_slots(rec.text)
        return got

    def _decide(self, store: MemoryStore, obs: Observation) -> Decision:
        live = store.all(obs.user_id)
        if not live:
            return Decision("ADD", reason="no memory yet")
        hits = store.search(obs.user_id, obs.vec if obs.vec is not None else obs.text,
                            k=min(self.neighbours, len(live)))
        sims = {h.record.id: h.score for h in hits}
        new_slots = extract_slots(obs.text)
        matched = self._slot_match(live, sims, obs, new_slots)
        if matched is not None:
            old, slot, conflict = matched
            sim = sims.get(old.id)
            if conflict:
                return self._rewrite("RECONCILE", old, obs, sim, f"{slot.kind} changed ({slot})", slot)
            if not novelty(obs.text, old.text, new_slots, self.slots_of(old), sim, self.duplicate):
                return Decision("IGNORE", old.id, reason=f"same {slot.kind}, nothing new", similarity=sim)
            return self._rewrite("UPDATE", old, obs, sim, f"same {slot.kind}, new detail")
        old = self._entity_match(live, obs)
        if old is not None:
            sim, old_slots = sims.get(old.id), self.slots_of(old)
        elif not hits or hits[0].score < self.same_subject:
            return Decision("ADD", reason="no similar memory", similarity=hits[0].score if hits else None)
        else:
            old, sim = hits[0].record, hits[0].score
            old_slots = self.slots_of(old)
            if {s.kind for s in new_slots} & {s.kind for s in old_slots}:
                return Decision("ADD", reason="another fact of the same kind", similarity=sim)
            if _other_person(subject_of(obs.text), subject_of(old.text)):
                return Decision("ADD", reason="about someone else", similarity=sim)
        if not novelty(obs.text, old.text, new_slots, old_slots, sim, self.duplicate):
            return Decision("IGNORE", old.id, reason="near-duplicate, nothing new", similarity=sim)
        if _CHANGE.search(strip_prefix(obs.text)):
            return self._rewrite("RECONCILE", old, obs, sim, "same subject, changed state")
        return self._rewrite("UPDATE", old, obs, sim, "same subject, new detail")

    def _slot_match(self, live: list[Record], sims: dict, obs: Observation, new_slots: list[Slot]):
        """(record, slot, conflict) for the live memory holding one of the observation's slots."""
        best = None
        for slot in new_slots:
            cands = [(r, any(slot.conflicts(t) for t in self.slots_of(r) if slot.same_slot(t)))
                     for r in live if any(slot.same_slot(t) for t in self.slots_of(r))]
            if not cands and slot.kind == "habit" and slot.get("active") == "no":
                # "no longer volunteers at the shelter" ends a habit that no frequency announced
                cands = [(r, True) for r in live
                         if subjects_compatible(slot.subject, subject_of(r.text))
                         and slot.topic <= content_stems(r.text)]
            for r, conflict in cands:
                key = (conflict, sims.get(r.id, -2.0), r.id)
                if best is None or key > best[0]:
                    best = (key, r, slot, conflict)
        return None if best is None else best[1:]

    @staticmethod
    def _entity_match(live: list[Record], obs: Observation) -> Record | None:
        """The one live memory naming every name of the observation (two or more besides its
        subject): "Ann's cat Tom in Denver ..." is about the memory with Tom and Denver."""
        subj = (subject_of(obs.text) or "").split("'s")[0]
        wanted = names(obs.text) - {subj}
        if len(wanted) < 2:
            return None
        found = [r for r in live if wanted <= names(r.text) | words(r.text)]
        return found[0] if len(found) == 1 else None

    def _rewrite(self, op: str, old: Record, obs: Observation, sim, reason: str,
                 slot: Slot | None = None) -> Decision:
        old_date, new_date = human_date(old.observed_at), human_date(obs.observed_at) or obs.date_label
        if op == "RECONCILE":
            past = None
            if slot is not None:  # the clause that held the changed state becomes history
                held = [i for i, seg in enumerate(segments(old.text)) if any(
                    slot.same_slot(t) for t in extract_slots(seg.clause))]
                past = held[-1] if held else None
            text = reconcile_text(old.text, old_date, obs.text, new_date, max_len=self.max_len, past=past,
                                  dated=self.dated)
        else:
            text = update_text(old.text, obs.text, old_date, new_date, dated=self.dated)
            if len(text) > self.max_len:
                return Decision("ADD", reason=f"update would exceed {self.max_len} chars", similarity=sim)
        return Decision(op, old.id, text, reason=reason, similarity=sim)


def _other_person(a: str | None, b: str | None) -> bool:
    """``maya's sister`` vs ``maya``: a possessive subject is someone (something) else."""
    if a is None or b is None or a == b:
        return False
    return "'s " in a or "'s " in b


_FILLER = {"really", "truly", "enjoy", "love", "like", "adore", "fond", "keen", "passionate", "big", "huge",
           "fan", "still", "continu", "keep", "kept", "absolutely", "definitely", "very", "great", "lot",
           "deeply", "always", "mention", "said", "say", "share", "tell", "told", "express"}


def novelty(new: str, old: str, new_slots: list[Slot], old_slots: list[Slot], sim: float | None,
            duplicate: float) -> set[str]:
    """What ``new`` adds to ``old``: numbers, names, dates, slots old lacks and, when the two are
    not near-duplicates (cosine below ``duplicate``), content words. Empty -> IGNORE."""
    out = informative(new) - informative(old) - content_stems(old) - words(old)
    out |= {str(s) for s in new_slots if not any(s.same_slot(t) for t in old_slots)}
    if sim is None or sim < duplicate:
        old_c = content_stems(old)
        out |= {w for w in content_stems(strip_prefix(new)) if w not in old_c and w not in _FILLER}
    return out


def update_text(old: str, new: str, old_date: str | None = None, new_date: str | None = None,
                dated: bool = True) -> str:
    """Merged observation keeping the dates of both: the new text replaces the current clause
    when it covers it, slots included (``<new> (D1, D2)``), else it is appended
    (``<old> (D1); <new> (D2)``)."""
    segs = segments(old, old_date)
    new_clause = strip_prefix(new).rstrip(".").strip()
    last_c, new_c = content_stems(segs[-1].clause), content_stems(new_clause)
    new_slots = extract_slots(new_clause)
    keeps_state = all(any(t.same_slot(n) for n in new_slots) for t in extract_slots(segs[-1].clause))
    if last_c and len(last_c & new_c) / len(last_c) >= 0.8 and keeps_state:
        segs[-1] = Segment(segs[-1].dates + ([new_date] if new_date else []), new_clause)
    else:
        segs.append(Segment([new_date] if new_date else [], new_clause))
    if not any(s.dates for s in segs):  # undated memories merge as before: "old; new"
        return "; ".join(s.clause for s in segs) + "."
    return render(segs, dated)


def reconcile_text(old: str, old_date: str | None, new: str, new_date: str | None,
                   max_len: int | None = None, past: int | None = None, dated: bool = True) -> str:
    """Dated narrative keeping both states, ending on the current one:
    ``Priya lived in Manchester (14 January 2023); Priya moved to Glasgow (2 June 2023).``
    The clause that held the earlier state (``past``, an index into the old text's clauses;
    default the last) is put in the past tense; ``max_len`` drops the oldest clauses."""
    segs = segments(old, old_date)
    i = len(segs) - 1 if past is None else past
    segs[i] = Segment(segs[i].dates, past_tense(segs[i].clause))
    segs.append(Segment([new_date] if new_date else [], strip_prefix(new).rstrip(".").strip()))
    text = render(segs, dated)
    while max_len is not None and len(text) > max_len and len(segs) > 2:
        segs = segs[1:]
        text = render(segs, dated)
    return text


_MANAGER_SYSTEM = (
    "You maintain a list of numbered memories about a person. For a new observation choose exactly "
    "one operation: ADD (new information), UPDATE (it adds detail to memory number target; text is the "
    "merged memory, keeping the dates of both), RECONCILE (it changes the state in memory number target; "
    "text is a dated narrative keeping the earlier and the current state), IGNORE (already captured). "
    'Answer with JSON {"op": ..., "target": number or null, "text": ...}, for example '
    '{"op": "RECONCILE", "target": 2, "text": "On 3 May 2023 Ann lived in Leeds; on 9 June 2023 she '
    'moved to Bristol."} or {"op": "ADD", "target": null, "text": ""}.')
MANAGER_TEXT_CHARS = 400  # the longest UPDATE / RECONCILE text the grammar lets the model write


def manager_schema(n_memories: int, max_text_chars: int = MANAGER_TEXT_CHARS) -> dict:
    """JSON schema of one decision over ``n_memories`` numbered candidates (the grammar of the LLM manager).

    ADD carries no target and no text (the observation is stored as is); UPDATE / RECONCILE name a
    candidate 1..n and give the rewritten memory; IGNORE may name the memory that already holds it.
    """
    if n_memories < 1:
        raise ValueError(f"n_memories must be >= 1, got {n_memories}")
    target = {"type": "integer", "minimum": 1, "maximum": n_memories}
    empty = {"type": "string", "maxLength": 0}

    def choice(op, tgt, text):
        return {"type": "object", "additionalProperties": False, "required": ["op", "target", "text"],
                "properties": {"op": op, "target": tgt, "text": text}}

    return {"anyOf": [
        choice({"const": "ADD"}, {"type": "null"}, empty),
        choice({"enum": ["UPDATE", "RECONCILE"]}, target,
               {"type": "string", "pattern": '^[^"\\\\\\n]{8,%d}$' % max_text_chars}),
        choice({"const": "IGNORE"}, {"anyOf": [target, {"type": "null"}]}, empty),
    ]}


class LLMManager:
    """The paper's LLM memory manager: decides under the grammar of :func:`manager_schema`.

    ``chat``: a :class:`tsubasa_fast.llm.ChatLM` (constrained decoding: the reply is always a
    valid decision) or a plain ``messages -> str`` callable (validated; an invalid reply falls
    back to the rule manager). ``stats``: decisions per op, ``constrained`` / ``unconstrained``
    calls and ``fallback`` (replies that were invalid, or cut off by the token limit).
    The token budget is ``max_text_chars`` + 48, so a reply can only be cut off if the model
    spends more than one token per character of its text.
    """

    name = "llm"

    def __init__(self, chat: Callable[[list[dict]], str], top_s: int = 10,
                 fallback: RuleManager | None = None, max_text_chars: int = MANAGER_TEXT_CHARS):
        if top_s < 1:
            raise ValueError(f"top_s must be >= 1, got {top_s}")
        if not 8 <= max_text_chars <= 4000:
            raise ValueError(f"max_text_chars must be in 8..4000, got {max_text_chars}")
        self.chat, self.top_s, self.max_text_chars = chat, top_s, max_text_chars
        self.fallback = fallback or RuleManager()
        self.stats: dict = {**{op: 0 for op in OPS}, "constrained": 0, "unconstrained": 0, "fallback": 0}

    def prompt(self, memories: list[Record], obs: Observation) -> list[dict]:
        lines = [f"{i}. [{m.observed_at or 'undated'}] {m.text}" for i, m in enumerate(memories, 1)]
        body = ("Memories:\n" + ("\n".join(lines) if lines else "(none)") +
                f"\n\nNew observation [{obs.observed_at or 'undated'}]: {obs.text}\n\nJSON:")
        return [{"role": "system", "content": _MANAGER_SYSTEM}, {"role": "user", "content": body}]

    def decide(self, store: MemoryStore, obs: Observation) -> Decision:
        live = store.count(obs.user_id)
        if live == 0:
            self.stats["ADD"] += 1
            return Decision("ADD", reason="empty memory", decision_source="llm")
        if live <= self.top_s:
            memories = store.all(obs.user_id)
        else:
            memories = [h.record for h in store.search(
                obs.user_id, obs.vec if obs.vec is not None else obs.text, k=self.top_s)]
        messages = self.prompt(memories, obs)
        try:
            if callable(getattr(self.chat, "structured", None)):
                self.stats["constrained"] += 1
                obj = self.chat.structured(messages, manager_schema(len(memories), self.max_text_chars),
                                           max_new_tokens=self.max_text_chars + 48)
                d = decision_from_reply(obj, memories)
            else:
                self.stats["unconstrained"] += 1
                d = parse_manager_reply(self.chat(messages), memories, obs)
        except ValueError as e:  # StructuredOutputError is a ValueError
            self.stats["fallback"] += 1
            d = self.fallback._decide(store, obs)
            d.reason = f"llm output invalid ({e}); rule: {d.reason}"
        self.stats[d.op] += 1
        return d


def parse_manager_reply(reply: str, memories: list[Record], obs: Observation) -> Decision:
    """Validate an unconstrained chat's reply (the JSON object in it); raises ValueError naming what is wrong."""
    return decision_from_reply(json_in_reply(reply, dict), memories)


def decision_from_reply(obj: dict, memories: list[Record]) -> Decision:
    """A decision object (``op``, ``target`` - or ``index`` - and ``text``) -> :class:`Decision`."""
    op = str(obj.get("op", "")).strip().upper()
    if op not in OPS:
        raise ValueError(f"op {obj.get('op')!r} is not one of {OPS}")
    if op == "ADD":
        return Decision("ADD", reason="llm", decision_source="llm")
    index = obj.get("target", obj.get("index"))
    if not isinstance(index, int) or isinstance(index, bool) or not 1 <= index <= len(memories):
        if op == "IGNORE" and index is None:
            return Decision("IGNORE", reason="llm", decision_source="llm")
        raise ValueError(f"target {index!r} is not in 1..{len(memories)}")
    target = memories[index - 1]
    if op == "IGNORE":
        return Decision("IGNORE", target.id, reason="llm", decision_source="llm")
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{op} needs a non-empty 'text'")
    return Decision(op, target.id, text.strip(), reason="llm", decision_source="llm")


def apply_decision(store: MemoryStore, obs: Observation, d: Decision):
    """Write one decision; idempotent through ``obs.key``. Returns the new Record or None."""
    payload = {"reason": d.reason, "similarity": d.similarity, "observation": obs.text}
    common = dict(observed_at=obs.observed_at, source=obs.source, decision_source=d.decision_source,
                  op_key=obs.key, payload=payload)
    if d.op == "ADD":
        return store.add(obs.user_id, obs.text, embedding=obs.vec, **common)
    if d.op in ("UPDATE", "RECONCILE"):
        return store.rewrite(d.target_id, d.text, op=d.op, observation_embedding=obs.vec, **common)
    store.log_decision(obs.user_id, "IGNORE", target_id=d.target_id, decision_source=d.decision_source,
                       op_key=obs.key, payload=dict(payload, source=obs.source))
    return None


def make_manager(name: str, chat: Callable | None = None, **kwargs) -> Manager:
    """Manager by name: ``rule``, ``static`` or ``llm`` (needs ``chat``)."""
    if name == "rule":
        return RuleManager(**kwargs)
    if name == "static":
        return StaticManager()
    if name == "llm":
        if chat is None:
            raise InputError("llm needs a chat model", field="manager")
        return LLMManager(chat, **kwargs)
    raise InputError(f"unknown manager {name!r}; expected llm, rule or static", field="manager")
