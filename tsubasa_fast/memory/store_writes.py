"""The memory store's one write path for record versions, shared by add, rewrite and import.

``plan_write`` validates every argument (before anything is embedded or written),
``find_replay`` makes a write with an ``op_key`` idempotent (a key reused for another
operation, user, target or text is :class:`OpKeyConflictError`, never a silent no-op), and
``apply_write`` writes the version, the superseded old one and the event inside an open
write transaction; ``apply_delete`` is the soft delete (the live version becomes ``deleted``,
stays in its history, leaves every index) and its event.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import InputError
from .store_db import OpKeyConflictError, Record, RecordNotFoundError, StaleTargetError, StoreDB, now

DECISION_SOURCES = ("llm", "rule", "user", "static", "import")
REWRITE_OPS = ("UPDATE", "RECONCILE")
WRITE_OPS = ("ADD",) + REWRITE_OPS   # ops that write a record version
DELETE_OP = "DELETE"                  # marks the live version deleted (no new version)
RECORD_OPS = WRITE_OPS + (DELETE_OP,)  # ops that change records: never a bare logged decision


def check_user(user_id: Any) -> str:
    if not isinstance(user_id, str) or not user_id.strip():
        raise InputError(f"must be a non-empty string, got {user_id!r}", field="user_id")
    return user_id


def check_text(text: Any, name: str = "text") -> str:
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"must be a non-empty string, got {text!r}", field=name)
    return text


def check_id(record_id: Any, name: str = "record_id") -> int:
    """A record id: an integer (a float, bool or string is a caller's bug, not an id)."""
    if isinstance(record_id, (bool, np.bool_)) or not isinstance(record_id, (int, np.integer)):
        raise InputError(f"must be an integer record id, got {record_id!r}", field=name)
    return int(record_id)


def check_source(source: Any) -> dict:
    if source is None:
        return {}
    if not isinstance(source, dict):
        raise InputError(f"must be a dict (conversation, session, dia_ids), got {type(source).__name__}",
                         field="source")
    dia = source.get("dia_ids", [])
    if not isinstance(dia, (list, tuple)) or not all(isinstance(d, str) for d in dia):
        raise InputError(f"must be a list of strings, got {dia!r}", field="source.dia_ids")
    return dict(source, dia_ids=list(dia)) if "dia_ids" in source else dict(source)


def check_decision_source(value: Any) -> str:
    if value not in DECISION_SOURCES:
        raise InputError(f"must be one of {DECISION_SOURCES}, got {value!r}", field="decision_source")
    return value


def check_op_key(op_key: Any) -> str | None:
    if op_key is not None and (not isinstance(op_key, str) or not op_key):
        raise InputError(f"must be a non-empty string or None, got {op_key!r}", field="op_key")
    return op_key


@dataclass
class WritePlan:
    """One validated record version to write: ADD (``target_id`` None) or a rewrite."""
    op: str
    user_id: str | None
    target_id: int | None
    text: str
    observed_at: str | None
    source: dict
    decision_source: str
    op_key: str | None
    vec: np.ndarray
    payload: dict
    created_at: str | None = None
    ts: str | None = None
    obs_vec: np.ndarray | None = None  # the vector of payload['observation'] when it differs from text


def observation_of(payload: dict | None, text: str) -> str | None:
    """The observation a write absorbed (``payload['observation']``) when it differs from the
    written text: the write then stores its vector too (table observation_vectors)."""
    obs = (payload or {}).get("observation")
    return obs if isinstance(obs, str) and obs.strip() and obs != text else None


def plan_write(op: str, embed: Callable[[str, np.ndarray | None], np.ndarray], *, user_id=None, target_id=None,
               text, observed_at=None, source=None, decision_source="user", op_key=None, embedding=None,
               payload=None, created_at=None, ts=None, observation_embedding=None) -> WritePlan:
    """Validates a write; ``embed(text, embedding)`` gives (or checks) its vector, last, and the
    vector of the observation it absorbed (``observation_embedding``, or embedded here)."""
    if op not in WRITE_OPS:
        raise InputError(f"must be one of {WRITE_OPS}, got {op!r}", field="op")
    if op == "ADD":
        check_user(user_id)
    else:
        target_id = check_id(target_id, "target_id")
    check_text(text)
    if observed_at is not None and not isinstance(observed_at, str):
        raise InputError(f"must be a string or None, got {observed_at!r}", field="observed_at")
    if payload is not None and not isinstance(payload, dict):
        raise InputError(f"must be a dict or None, got {type(payload).__name__}", field="payload")
    source, decision_source, op_key = check_source(source), check_decision_source(decision_source), \
        check_op_key(op_key)
    vec = embed(text, embedding)
    obs = observation_of(payload, text)
    obs_vec = None if obs is None else embed(obs, observation_embedding)
    return WritePlan(op, user_id, target_id, text, observed_at, source, decision_source, op_key,
                     vec, dict(payload or {}), created_at, ts, obs_vec)


def find_replay(db: StoreDB, plan: WritePlan) -> Record | None:
    """The record an earlier write with this op_key made, or None if the key is new."""
    if plan.op_key is None:
        return None
    ev = db.event_for_key(plan.op_key)
    if ev is None:
        return None
    what = f"op_key {plan.op_key!r} was already used for {ev['op']}"
    if ev["op"] != plan.op:
        raise OpKeyConflictError(f"{what}; refusing to reuse it for {plan.op}")
    rec = db.get_record(ev["record_id"])
    if plan.op == "ADD" and rec.user_id != plan.user_id:
        raise OpKeyConflictError(f"{what} of user {rec.user_id!r}; refusing to reuse it for {plan.user_id!r}")
    if plan.op != "ADD" and ev["target_id"] != plan.target_id:
        raise OpKeyConflictError(f"{what} of record {ev['target_id']}; refusing to reuse it for "
                                 f"record {plan.target_id}")
    if rec.text != plan.text:
        raise OpKeyConflictError(f"{what} with text {rec.text!r:.80}; refusing to reuse it for "
                                 f"different text {plan.text!r:.80}")
    return rec


def check_live(rec: Record, what: str) -> None:
    """A rewrite or delete must target the live version of a chain."""
    if rec.status == "superseded":
        raise StaleTargetError(f"record {rec.id} is superseded by {rec.superseded_by}; {what} the live version")
    if rec.status == "deleted":
        raise StaleTargetError(f"record {rec.id} was deleted; there is no live version to {what}")


def find_delete_replay(db: StoreDB, record_id: int, op_key: str | None) -> Record | None:
    """The record an earlier delete with this op_key deleted, or None if the key is new."""
    if op_key is None:
        return None
    ev = db.event_for_key(op_key)
    if ev is None:
        return None
    if ev["op"] != DELETE_OP:
        raise OpKeyConflictError(f"op_key {op_key!r} was already used for {ev['op']}; refusing to reuse it "
                                 f"for {DELETE_OP}")
    if ev["record_id"] != record_id:
        raise OpKeyConflictError(f"op_key {op_key!r} was already used for {DELETE_OP} of record "
                                 f"{ev['record_id']}; refusing to reuse it for record {record_id}")
    return db.get_record(record_id)


def apply_delete(db: StoreDB, conn: sqlite3.Connection, record_id: int, seq: int, *, decision_source: str,
                 op_key: str | None, payload: dict | None, ts: str | None = None) -> Record:
    """Soft-deletes the live version ``record_id`` inside the open write transaction ``conn``;
    returns the record as it was (its text goes into the event, so the log alone tells it)."""
    rec = db.get_record(record_id)
    if rec is None:
        raise RecordNotFoundError(f"no memory record with id {record_id} in {db.path.parent}")
    check_live(rec, "delete")
    db.mark_deleted(conn, rec.id, seq)
    db.insert_event(conn, seq=seq, user_id=rec.user_id, op=DELETE_OP, record_id=rec.id, target_id=rec.id,
                    decision_source=decision_source, op_key=op_key,
                    payload=dict(payload or {}, text=rec.text), ts=ts)
    return rec


def apply_write(db: StoreDB, conn: sqlite3.Connection, plan: WritePlan, seq: int) -> tuple[int, str, int | None]:
    """Writes ``plan`` inside the open write transaction ``conn``: ``(new id, user, superseded id)``."""
    if plan.target_id is None:
        rid = db.insert_record(
            conn, user_id=plan.user_id, text=plan.text, observed_at=plan.observed_at,
            created_at=plan.created_at or now(), version=1, supersedes=None, root_id=None,
            source=plan.source, decision_source=plan.decision_source, embedding=plan.vec.tobytes(), chg=seq)
        if plan.obs_vec is not None:
            db.insert_observation_vector(conn, rid, plan.obs_vec.tobytes())
        db.insert_event(conn, seq=seq, user_id=plan.user_id, op="ADD", record_id=rid, target_id=None,
                        decision_source=plan.decision_source, op_key=plan.op_key,
                        payload=dict(plan.payload, text=plan.text), ts=plan.ts)
        return rid, plan.user_id, None
    old = db.get_record(plan.target_id)
    if old is None:
        raise RecordNotFoundError(f"no memory record with id {plan.target_id} in {db.path.parent}")
    check_live(old, "rewrite")
    merged_src = dict(old.source)
    merged_src.update({k: v for k, v in plan.source.items() if k != "dia_ids"})
    merged_src["dia_ids"] = list(dict.fromkeys(old.dia_ids + plan.source.get("dia_ids", [])))
    rid = db.insert_record(
        conn, user_id=old.user_id, text=plan.text, observed_at=plan.observed_at or old.observed_at,
        created_at=plan.created_at or now(), version=old.version + 1, supersedes=old.id,
        root_id=old.root_id, source=merged_src, decision_source=plan.decision_source,
        embedding=plan.vec.tobytes(), chg=seq)
    if plan.obs_vec is not None:
        db.insert_observation_vector(conn, rid, plan.obs_vec.tobytes())
    db.insert_event(conn, seq=seq, user_id=old.user_id, op=plan.op, record_id=rid, target_id=old.id,
                    decision_source=plan.decision_source, op_key=plan.op_key,
                    payload=dict(plan.payload, text=plan.text, previous=old.text), ts=plan.ts)
    return rid, old.user_id, old.id
