"""Memory evolution: one decision per new observation (ADD, UPDATE i, RECONCILE i, IGNORE).

Three managers behind one interface, ``decide(store, obs) -> Decision``:

* :class:`RuleManager` - deterministic, embedding similarity, no LLM (ours, METHOD.md):
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

from ..llm import json_in_reply
from .store import MemoryStore, Record

OPS = ("ADD", "UPDATE", "RECONCILE", "IGNORE")
_WORD = re.compile(r"[a-z0-9']+")
_STOP = set("""a an the and or but of to in on at for with from by as is are was were be been being it its
this that these those he she they them his her their i you we my our your has have had do does did not no
so very just also about into over after before during than then there here who what when where which how
recently currently now""".split())
# Words that signal a change of state rather than added detail.
_CHANGE = re.compile(
    r"\b(no longer|not anymore|anymore|stopped|quit|quits|moved|moves|switched|changed|instead|"
    r"broke up|divorced|sold|gave up|used to|formerly|now has|now lives|now works)\b", re.I)
_NUM = re.compile(r"\b\d+(?:[.,]\d+)?\b")


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


def _content(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1}


def _strip_end(text: str) -> str:
    return text.strip().rstrip(".")


class StaticManager:
    """Append every observation (the paper's static-accumulation ablation)."""

    name = "static"

    def __init__(self):
        self.stats: dict = {"ADD": 0}

    def decide(self, store: MemoryStore, obs: Observation) -> Decision:
        self.stats["ADD"] += 1
        return Decision("ADD", reason="static accumulation", decision_source="static")


class RuleManager:
    """Deterministic similarity-based evolution (no LLM).

    Thresholds are cosine similarities of the store's embedder; the defaults suit
    all-MiniLM-L6-v2. ``max_len`` caps merged texts (a longer merge becomes an ADD), so one
    record never swallows a whole topic.
    """

    name = "rule"

    def __init__(self, duplicate: float = 0.92, same_subject: float = 0.80, max_len: int = 600):
        if not 0 < same_subject <= duplicate <= 1:
            raise ValueError(f"need 0 < same_subject ({same_subject}) <= duplicate ({duplicate}) <= 1")
        self.duplicate, self.same_subject, self.max_len = duplicate, same_subject, max_len
        self.stats: dict = {op: 0 for op in OPS}

    def _nearest(self, store: MemoryStore, obs: Observation) -> tuple[Record | None, float]:
        hits = store.search(obs.user_id, obs.vec if obs.vec is not None else obs.text, k=1)
        if not hits:
            return None, -1.0
        return hits[0].record, hits[0].score

    def decide(self, store: MemoryStore, obs: Observation) -> Decision:
        d = self._decide(store, obs)
        self.stats[d.op] += 1
        return d

    def _decide(self, store: MemoryStore, obs: Observation) -> Decision:
        old, sim = self._nearest(store, obs)
        if old is None or sim < self.same_subject:
            return Decision("ADD", reason="no similar memory", similarity=sim if old else None)
        new_c, old_c = _content(obs.text), _content(old.text)
        if sim >= self.duplicate or (new_c and new_c <= old_c):
            return Decision("IGNORE", old.id, reason="near-duplicate", similarity=sim)
        changed = bool(_CHANGE.search(obs.text)) or (
            set(_NUM.findall(obs.text)) and set(_NUM.findall(old.text))
            and set(_NUM.findall(obs.text)) != set(_NUM.findall(old.text)))
        if changed:
            text = reconcile_text(old.text, old.observed_at, obs.text, obs.date_label or obs.observed_at)
            op, reason = "RECONCILE", "same subject, changed state"
        else:
            text = update_text(old.text, obs.text)
            op, reason = "UPDATE", "same subject, new detail"
        if len(text) > self.max_len:
            return Decision("ADD", reason=f"{op.lower()} would exceed {self.max_len} chars", similarity=sim)
        return Decision(op, old.id, text, reason=reason, similarity=sim)


def update_text(old: str, new: str) -> str:
    """Merged observation: the new text if it covers the old one, else both."""
    old_c, new_c = _content(old), _content(new)
    if old_c and len(old_c & new_c) / len(old_c) >= 0.8:
        return new.strip()
    return f"{_strip_end(old)}; {new.strip()}"


def reconcile_text(old: str, old_date: str | None, new: str, new_date: str | None) -> str:
    """Dated narrative keeping both states."""
    def dated(text, date):
        return f"On {date}: {text.strip()}" if date and not text.startswith("On ") else text.strip()
    first = old.strip() if old.startswith("On ") else dated(old, _human(old_date))
    return f"{_strip_end(first)}. {dated(new, _human(new_date))}"


def _human(date: str | None) -> str | None:
    if not date:
        return None
    m = re.match(r"(\d{4})-(\d{2})-(\d{2})", date)
    if not m:
        return date
    import calendar
    return f"{int(m.group(3))} {calendar.month_name[int(m.group(2))]} {m.group(1)}"


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
        return store.rewrite(d.target_id, d.text, op=d.op, **common)
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
            raise ValueError("--manager llm needs a chat model")
        return LLMManager(chat, **kwargs)
    raise ValueError(f"--manager: unknown manager {name!r}; expected llm, rule or static")
