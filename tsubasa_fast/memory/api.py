"""A Mem0-shaped memory: ``Memory(path).add(messages, user_id=...)``, ``search``, ``get_all``, ...

For people who know Mem0: the same calls and return shapes, over TSUBASA's store.

* ``add(messages, user_id=..., date=None, infer=True)``: with ``infer=True`` the LLM extracts
  dated observations about the user (:mod:`.extraction`, decoded under its JSON grammar) and
  the memory manager (:mod:`.evolution`, rule manager by default) decides ADD, UPDATE,
  RECONCILE (a dated narrative keeping the earlier state) or IGNORE for each; with
  ``infer=False`` every non-system message is stored as it is (as Mem0 does). The messages
  themselves are always kept (the store's raw sessions). Returns ``{"results": [{"id",
  "memory", "event"}, ...]}``.
* ``search(query, user_id=..., limit=3)``: the project's default ranking
  (:data:`.retrieval.DEFAULT_MODE`: dense + BM25 + date match).
* ``get``, ``get_all``, ``history`` (the version chain, oldest first), ``update``, ``delete``.

What differs from Mem0: a memory's id is an integer and stays the same through every
rewrite (it is the id of the chain's first version); memories carry the date they were
said (``observed_at``; ``date=`` defaults to today, UTC); RECONCILE is an event of its
own; ``delete`` is soft (the memory leaves every search, its history stays); ``add`` is
idempotent (the same messages for the same user, date and ``infer`` are applied once, so a
retry after a crash duplicates nothing); everything runs locally.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core import Session, Turn
from ..errors import InputError
from .evolution import Manager, Observation, apply_decision, make_manager
from .extraction import ObservationExtractor
from .retrieval import DEFAULT_MODE, Retriever
from .store import MemoryStore, Record, open_store
from .store_writes import DELETE_OP, RECORD_OPS

ROLES = ("user", "assistant", "system")


# ------------------------------------------------------------------ validation
def _user(user_id: Any) -> str:
    if not isinstance(user_id, str) or not user_id.strip():
        raise InputError(f"must be a non-empty string, got {user_id!r}", field="user_id")
    return user_id


def _memory_id(memory_id: Any) -> int:
    if isinstance(memory_id, (bool, np.bool_)) or not isinstance(memory_id, (int, np.integer)):
        raise InputError(f"must be an integer memory id (as add() and search() return it), got {memory_id!r}",
                         field="memory_id")
    return int(memory_id)


def _text(text: Any, field: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"must be a non-empty string, got {text!r}", field=field)
    return text.strip()


def normalize_messages(messages: Any) -> list[dict]:
    """``messages`` as Mem0 takes them (a string, one message dict or a list of them) ->
    ``[{"role", "content", "name"?}]``; raises InputError naming the bad element."""
    if isinstance(messages, str):
        return [{"role": "user", "content": _text(messages, "messages")}]
    if isinstance(messages, dict):
        messages = [messages]
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError(f"must be a string or a non-empty list of {{'role', 'content'}} dicts, got "
                         f"{type(messages).__name__ if messages else messages!r}", field="messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise InputError(f"must be a dict with 'role' and 'content', got {type(m).__name__}", field=where)
        if m.get("role") not in ROLES:
            raise InputError(f"must be one of {ROLES}, got {m.get('role')!r}", field=f"{where}.role")
        msg = {"role": m["role"], "content": _text(m.get("content"), f"{where}.content")}
        if m.get("name") is not None:
            msg["name"] = _text(m["name"], f"{where}.name")
        out.append(msg)
    if not any(m["role"] != "system" for m in out):
        raise InputError("has only system messages: nothing the user or assistant said", field="messages")
    return out


def _date(date: Any) -> _dt.date:
    if date is None:
        return _dt.datetime.now(_dt.timezone.utc).date()
    if isinstance(date, _dt.datetime):
        return date.date()
    if isinstance(date, _dt.date):
        return date
    if isinstance(date, str):
        try:
            return _dt.datetime.fromisoformat(date.strip()).date()
        except ValueError:
            pass
    raise InputError(f"must be None, a date or an ISO date string like '2023-05-08', got {date!r}", field="date")


def _metadata(metadata: Any) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InputError(f"must be a dict or None, got {type(metadata).__name__}", field="metadata")
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as e:
        raise InputError(f"must be JSON-serialisable ({e})", field="metadata") from None
    return dict(metadata)


def _human(d: _dt.date) -> str:
    return f"{d.day} {d.strftime('%B %Y')}"


# ---------------------------------------------------------------------- Memory
class Memory:
    """A user memory on a local directory, with Mem0's calls (see the module docstring).

    ``path``: the store directory (created if missing). ``embedder``: ``minilm`` (default,
    bundled), ``hashing``, or an embedder object; an existing store keeps the embedder it was
    built with. ``chat``: the LLM for ``infer=True`` (a :class:`tsubasa_fast.llm.ChatLM` or a
    ``messages -> str`` callable); None loads the bundled SmolLM2-135M-Instruct on first use.
    ``manager``: ``rule`` (default), ``llm`` (uses ``chat``), ``static`` or a manager object.
    ``store_options`` go to :class:`MemoryStore`.
    """

    def __init__(self, path: str | os.PathLike, *, embedder: Any = None, chat: Callable | None = None,
                 manager: str | Manager = "rule", retrieval: str = DEFAULT_MODE, **store_options):
        if isinstance(manager, str) and manager not in ("rule", "llm", "static"):
            raise InputError(f"must be 'rule', 'llm', 'static' or a manager object, got {manager!r}", field="manager")
        if not isinstance(manager, str) and not callable(getattr(manager, "decide", None)):
            raise InputError(f"must be 'rule', 'llm', 'static' or have decide(store, obs), got "
                             f"{type(manager).__name__}", field="manager")
        if embedder is None or isinstance(embedder, str):
            self.store = open_store(Path(path), embedder, **store_options)
        else:
            self.store = MemoryStore(Path(path), embedder, **store_options)
        try:
            self.retriever = Retriever(self.store, retrieval)
        except BaseException:
            self.store.close()
            raise
        self._chat, self._manager_spec, self._manager, self._extractor = chat, manager, None, None

    # ------------------------------------------------------------- plumbing
    @property
    def chat(self) -> Callable:
        """The LLM for ``infer=True`` (loaded on first use when none was given)."""
        if self._chat is None:
            from ..llm import ChatLM

            self._chat = ChatLM.load(max_new_tokens=256)
        return self._chat

    @property
    def manager(self) -> Manager:
        if self._manager is None:
            spec = self._manager_spec
            self._manager = spec if not isinstance(spec, str) else \
                make_manager(spec, chat=self.chat) if spec == "llm" else make_manager(spec)
        return self._manager

    @property
    def extractor(self) -> ObservationExtractor:
        if self._extractor is None:
            self._extractor = ObservationExtractor(self.chat, name="memory-api")
        return self._extractor

    def _chain(self, memory_id: Any) -> list[Record]:
        """Every version of the memory ``memory_id`` (any version's id), oldest first."""
        rid = _memory_id(memory_id)
        rec = self.store.db.get_record(rid)
        if rec is None:
            raise InputError(f"no memory with id {rid} in {self.store.path}", field="memory_id")
        return self.store.history(rid)

    def _item(self, rec: Record, chain_head: Record | None = None, score: float | None = None) -> dict:
        """A record as Mem0 shows a memory (plus TSUBASA's fields)."""
        head = chain_head or (rec if rec.version == 1 else self.store.get(rec.root_id))
        item = {"id": rec.root_id, "memory": rec.text}
        if score is not None:
            item["score"] = score
        item.update({"user_id": rec.user_id, "observed_at": rec.observed_at,
                     "metadata": dict(rec.source.get("metadata", {})), "created_at": head.created_at,
                     "updated_at": rec.created_at if rec.version > 1 else None, "version": rec.version,
                     "record_id": rec.id, "status": rec.status, "role": rec.source.get("role"),
                     "decision_source": rec.decision_source})
        return item

    def _session_key(self, user_id: str, date: _dt.date, messages: list[dict], infer: bool, metadata: dict) -> str:
        blob = json.dumps([user_id, date.isoformat(), messages, infer, metadata], ensure_ascii=False, sort_keys=True)
        return f"mem:{hashlib.sha256(blob.encode()).hexdigest()[:24]}"

    # ----------------------------------------------------------------- add
    def add(self, messages: Any, *, user_id: str, date: Any = None, infer: bool = True,
            metadata: dict | None = None) -> dict:
        """Remember what was said (see the module docstring). Returns ``{"results": [...]}``
        with one ``{"id", "memory", "event"}`` per decision (``previous_memory`` for UPDATE /
        RECONCILE), ``observations`` (how many ``infer=True`` extracted) and
        ``extraction_skipped`` (True when the LLM gave no valid reply: nothing was inferred)."""
        user_id = _user(user_id)
        msgs = normalize_messages(messages)
        day = _date(date)
        if not isinstance(infer, bool):
            raise InputError(f"must be True or False, got {infer!r}", field="infer")
        meta = _metadata(metadata)
        key = self._session_key(user_id, day, msgs, infer, meta)
        speaker = next((m["name"] for m in msgs if m["role"] == "user" and "name" in m), user_id)
        turns = []
        for i, m in enumerate(msgs):
            if m["role"] != "system":
                who = speaker if m["role"] == "user" else m.get("name", "assistant")
                turns.append({"dia_id": f"{key}:{i}", "speaker": who, "text": m["content"], "role": m["role"]})
        self.store.put_raw_session(key, user_id, {"date_time": day.isoformat(), "turns": turns, "messages": msgs,
                                                  "metadata": meta, "infer": infer},
                                   observed_at=day.isoformat())
        base = {"kind": "llm" if infer else "utterances", "session": key}
        if meta:
            base["metadata"] = meta
        if infer:
            obs, skipped = self._infer(user_id, day, key, turns, speaker, base)
        else:
            obs, skipped = [Observation(user_id, t["text"], day.isoformat(), dict(base, dia_ids=[t["dia_id"]],
                                                                                  role=t["role"]),
                                        f"{t['dia_id']}:0", date_label=_human(day)) for t in turns], False
        results = [self._apply(o, infer) for o in obs]
        self.store.flush()
        return {"results": results, "observations": len(obs), "extraction_skipped": skipped}

    def _infer(self, user_id: str, day: _dt.date, key: str, turns: list[dict], speaker: str,
               base: dict) -> tuple[list[Observation], bool]:
        """The LLM's observations about ``speaker`` (cached in the store, so a retry does not
        rerun the LLM); a skipped extraction is logged as an EXTRACTION_SKIPPED event."""
        cache_key = f"extract:memory-api:{key}"
        cached = self.store.kv_get(cache_key)
        skipped = False
        if cached is None:
            when = _dt.datetime(day.year, day.month, day.day)
            session = Session(0, _human(day), when, tuple(Turn(t["speaker"], t["dia_id"], t["text"]) for t in turns))
            got = self.extractor.extract(session, speaker)
            if got is None:
                skipped = True
                self.store.log_decision(user_id, "EXTRACTION_SKIPPED", decision_source="llm", op_key=f"{key}:skipped",
                                        payload={"session": key, "observation": None})
                got = []
            cached = [[e.text, list(e.dia_ids)] for e in got]
            if not skipped:
                self.store.kv_put(cache_key, cached)
        obs = [Observation(user_id, text, day.isoformat(), dict(base, dia_ids=ids), f"{key}:obs:{i}",
                           date_label=_human(day)) for i, (text, ids) in enumerate(cached)]
        return obs, skipped

    def _apply(self, obs: Observation, infer: bool) -> dict:
        """One observation -> its decision written (or the one an earlier identical add wrote)."""
        done = self.store.op_result(obs.key)
        if done is not None:
            return self._result(*done, obs, replayed=True)
        obs.vec = self.store.embedder.embed([obs.text])[0]
        if infer:
            d = self.manager.decide(self.store, obs)
            rec = apply_decision(self.store, obs, d)
            return self._result(d.op, rec.id if rec is not None else None, obs, target=d.target_id)
        rec = self.store.add(obs.user_id, obs.text, observed_at=obs.observed_at, source=obs.source,
                             decision_source="user", op_key=obs.key, embedding=obs.vec,
                             payload={"observation": obs.text})
        return self._result("ADD", rec.id, obs)

    def _result(self, op: str, record_id: int | None, obs: Observation, target: int | None = None,
                replayed: bool = False) -> dict:
        if record_id is None:  # IGNORE: the memory it matched (if any) stays as it is
            if target is None and replayed:
                ev = self.store.db.event_for_key(obs.key)
                target = ev["target_id"] if ev else None
            tid = self.store.get(target).root_id if target is not None else None
            out = {"id": tid, "memory": obs.text, "event": op}
        else:
            rec = self.store.get(record_id)
            out = {"id": rec.root_id, "memory": rec.text, "event": op}
            if rec.supersedes is not None:
                out["previous_memory"] = self.store.get(rec.supersedes).text
        if replayed:
            out["replayed"] = True
        return out

    # -------------------------------------------------------------- reads
    def search(self, query: str, *, user_id: str, limit: int = 3) -> dict:
        """Top-``limit`` live memories of ``user_id`` for ``query``: ``{"results": [{"id",
        "memory", "score", "observed_at", ...}]}``, best first, always min(limit, live) of them."""
        user_id = _user(user_id)
        query = _text(query, "query")
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise InputError(f"must be a positive integer, got {limit!r}", field="limit")
        hits = self.retriever.search_records([user_id], query, int(limit))
        return {"results": [self._item(r, score=s) for r, s in hits]}

    def get(self, memory_id: int) -> dict:
        """The memory (its current version: live, or the deleted one) with this id."""
        chain = self._chain(memory_id)
        return self._item(chain[-1], chain[0])

    def get_all(self, *, user_id: str, limit: int = 100) -> dict:
        """The user's live memories, oldest first: ``{"results": [...]}`` (at most ``limit``)."""
        user_id = _user(user_id)
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise InputError(f"must be a positive integer, got {limit!r}", field="limit")
        live = self.store.all(user_id)
        live.sort(key=lambda r: r.root_id)
        return {"results": [self._item(r) for r in live[:int(limit)]]}

    def history(self, memory_id: int) -> list[dict]:
        """The memory's changes, oldest first, as Mem0 lists them (``old_memory``,
        ``new_memory``, ``event``, ``is_deleted``): one entry per version, and a DELETE entry
        when it was deleted. Nothing is ever dropped from it."""
        chain = self._chain(memory_id)
        by_record = {r.id: r for r in chain}
        events = [e for e in self.store.events(chain[0].user_id)
                  if e["record_id"] in by_record and e["op"] in RECORD_OPS]
        out = []
        for e in events:
            rec = by_record[e["record_id"]]
            deleted = e["op"] == DELETE_OP
            old = rec.text if deleted else (by_record[rec.supersedes].text if rec.supersedes else None)
            out.append({"id": e["seq"], "memory_id": chain[0].id, "record_id": rec.id, "version": rec.version,
                        "event": e["op"], "old_memory": old, "new_memory": None if deleted else rec.text,
                        "observed_at": rec.observed_at, "created_at": e["ts"], "is_deleted": deleted,
                        "decision_source": e["decision_source"]})
        return out

    # ------------------------------------------------------------- writes
    def update(self, memory_id: int, text: str) -> dict:
        """Rewrite the memory (a new version; the old one stays in its history)."""
        text = _text(text, "text")
        live = self._live(memory_id, "update")
        rec = self.store.rewrite(live.id, text, op="UPDATE", decision_source="user",
                                 payload={"via": "Memory.update"})
        self.store.flush()
        return {"message": "Memory updated successfully!", "id": rec.root_id, "memory": rec.text,
                "previous_memory": live.text}

    def delete(self, memory_id: int) -> dict:
        """Soft delete: the memory leaves ``search`` and ``get_all``; ``get`` and ``history``
        still show it (status ``deleted``), and the event log records the deletion."""
        live = self._live(memory_id, "delete")
        self.store.delete(live.id, decision_source="user", payload={"via": "Memory.delete"})
        self.store.flush()
        return {"message": "Memory deleted successfully!", "id": live.root_id}

    def _live(self, memory_id: Any, what: str) -> Record:
        chain = self._chain(memory_id)
        last = chain[-1]
        if last.status != "live":
            raise InputError(f"memory {chain[0].id} was deleted; there is nothing to {what}", field="memory_id")
        return last

    # ------------------------------------------------------------ closing
    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Memory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
