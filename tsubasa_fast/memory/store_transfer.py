"""Export and import of a memory store as JSON lines (no embeddings: import re-embeds).

One line per record version (``"kind": "record"``: the :class:`Record` fields plus the
deciding event's op, time and payload, and the record's ``origin``), then one line per
decision that wrote no record (``"kind": "event"``, e.g. IGNORE; ``status`` is ``"event"``
and ``text`` the observation, so a reader that filters on ``status`` keeps working).

Import is

* validated first, line by line, by pydantic models (an error names ``file:line`` and the
  field), and for structure (a rewrite's target is an earlier line; a superseded line is
  superseded by a later one), before anything is written;
* all-or-nothing: one SQLite transaction;
* idempotent: each record carries its origin (the store and id it was first written in),
  so importing a file twice, or an export into the store it came from, writes nothing;
* faithful: decision source, created_at, observed_at, the op (ADD / UPDATE / RECONCILE)
  and the record-less decisions (IGNORE, ...) survive; a soft-deleted record is a record
  line with status ``deleted`` plus its DELETE event line, which deletes it again on import.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, TypeAdapter, ValidationError

from ..fileio import atomic_write_bytes
from .store_db import RecordNotFoundError, StaleTargetError
from .store_writes import (DECISION_SOURCES, DELETE_OP, WRITE_OPS, apply_delete, apply_write, check_user,
                           observation_of, plan_write)


class ImportFormatError(ValueError):
    """A malformed or inconsistent import file; the message names the file and line."""


def _non_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must be a non-empty string")
    return v


def _iso_time(v: str | None) -> str | None:
    if v is not None:
        try:
            _dt.datetime.fromisoformat(v)
        except ValueError:
            raise ValueError(f"expected an ISO 8601 date-time, got {v!r}") from None
    return v


def _dia_ids(v: dict) -> dict:
    dia = v.get("dia_ids", [])
    if not isinstance(dia, list) or not all(isinstance(d, str) for d in dia):
        raise ValueError(f"dia_ids must be a list of strings, got {dia!r}")
    return v


def _record_less_op(v: str) -> str:
    if v in WRITE_OPS:
        raise ValueError(f"{v} writes a record; it belongs on a record line")
    return v


Text = Annotated[StrictStr, AfterValidator(_non_blank)]
IsoTime = Annotated[StrictStr | None, AfterValidator(_iso_time)]
RecordId = Annotated[StrictInt, Field(ge=1)]


class RecordOrigin(BaseModel):
    store_id: Text
    id: RecordId


class EventOrigin(BaseModel):
    store_id: Text
    seq: RecordId


class RecordLine(BaseModel):
    """One exported record version (older exports: no kind / op / origin / event fields)."""
    model_config = ConfigDict(extra="ignore")
    kind: Literal["record"] = "record"
    id: RecordId
    user_id: Text
    text: Text
    status: Literal["live", "superseded", "deleted"]
    supersedes: RecordId | None
    observed_at: StrictStr | None = None
    created_at: IsoTime = None
    source: Annotated[dict[str, Any], AfterValidator(_dia_ids)] = Field(default_factory=dict)
    decision_source: Literal[DECISION_SOURCES] = "import"
    store_id: StrictStr | None = None
    op: Literal["ADD", "UPDATE", "RECONCILE"] | None = None
    event_ts: IsoTime = None
    event_payload: dict[str, Any] = Field(default_factory=dict)
    origin: RecordOrigin | None = None


class EventLine(BaseModel):
    """One exported decision that wrote no record (IGNORE, EXTRACTION_SKIPPED, ...)."""
    model_config = ConfigDict(extra="ignore")
    kind: Literal["event"]
    seq: RecordId
    ts: IsoTime = None
    user_id: Text
    op: Annotated[Text, AfterValidator(_record_less_op)]
    record_id: RecordId | None = None
    target_id: RecordId | None = None
    decision_source: StrictStr | None = None
    op_key: StrictStr | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    store_id: StrictStr | None = None
    origin: EventOrigin | None = None


_LINE = TypeAdapter(Annotated[Union[RecordLine, EventLine], Field(discriminator="kind")])


@dataclass
class ImportResult:
    records: int = 0
    events: int = 0
    records_present: int = 0
    events_present: int = 0


# ---------------------------------------------------------------------- export
def export_jsonl(store, path: str | os.PathLike, user_id: str | None = None) -> int:
    """Writes ``store`` (or one user) to ``path`` atomically; returns the number of records."""
    where, args = ("", ()) if user_id is None else ("user_id=?", (check_user(user_id),))
    with store.db.read():  # one snapshot: records and events agree
        records = store.db.records(where, args)
        events = store.db.events(where, args)
    creating: dict[int, dict] = {}
    for e in events:
        if e["record_id"] is not None and e["op"] in WRITE_OPS:
            creating.setdefault(e["record_id"], e)
    created = {id(e) for e in creating.values()}
    out = []
    for r in records:
        ev = creating.get(r.id, {})
        payload = dict(ev.get("payload", {}))
        origin = payload.pop("origin", None) or {"store_id": store.store_id, "id": r.id}
        out.append(dict(kind="record", **r.to_dict(), store_id=store.store_id,
                        op=ev.get("op") or ("ADD" if r.supersedes is None else "UPDATE"),
                        event_ts=ev.get("ts"), event_payload=payload, origin=origin))
    for e in events:
        if id(e) in created:
            continue
        payload = dict(e["payload"])
        origin = payload.pop("origin", None) or {"store_id": store.store_id, "seq": e["seq"]}
        text = payload.get("observation") or payload.get("text") or ""
        out.append(dict(kind="event", status="event", text=text if isinstance(text, str) else "",
                        **dict(e, payload=payload), store_id=store.store_id, origin=origin))
    atomic_write_bytes(Path(path), "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in out).encode())
    return len(records)


# ---------------------------------------------------------------------- import
def _parse(path: Path) -> list[tuple[int, RecordLine | EventLine]]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ImportFormatError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    lines = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ImportFormatError(f"{path}:{n}: not valid JSON ({e})") from None
        except RecursionError:
            raise ImportFormatError(f"{path}:{n}: JSON nested too deeply") from None
        if isinstance(obj, dict) and "kind" not in obj:
            obj = dict(obj, kind="record")
        try:
            lines.append((n, _LINE.validate_python(obj)))
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"][1:] if p not in ("record", "event")) or "line"
            if err["type"] == "missing":
                raise ImportFormatError(f"{path}:{n}: missing field {loc!r}") from None
            msg = err["msg"].removeprefix("Value error, ")
            raise ImportFormatError(f"{path}:{n}: field {loc!r}: {msg} (got {err.get('input')!r:.60})") from None
    return lines


def _check_structure(path: Path, lines) -> None:
    """Every rewrite targets an earlier record line; statuses agree with the chains."""
    seen: dict[int, tuple[int, RecordLine]] = {}
    superseded_by: dict[int, int] = {}
    deleted_by: dict[int, int] = {}
    for n, ln in lines:
        if isinstance(ln, EventLine):
            for name in ("record_id", "target_id"):
                ref = getattr(ln, name)
                if ref is not None and ref not in seen:
                    raise ImportFormatError(f"{path}:{n}: field {name!r}: record {ref} is not on an earlier line")
            if ln.op == DELETE_OP:
                if ln.record_id is None:
                    raise ImportFormatError(f"{path}:{n}: field 'record_id': a {DELETE_OP} event names the record")
                if ln.record_id in deleted_by:
                    raise ImportFormatError(f"{path}:{n}: field 'record_id': record {ln.record_id} is already "
                                            f"deleted on line {deleted_by[ln.record_id]}")
                if seen[ln.record_id][1].status != "deleted":
                    raise ImportFormatError(f"{path}:{n}: field 'record_id': record {ln.record_id} is deleted here "
                                            f"but its line {seen[ln.record_id][0]} has status "
                                            f"{seen[ln.record_id][1].status!r}")
                deleted_by[ln.record_id] = n
            continue
        if ln.id in seen:
            raise ImportFormatError(f"{path}:{n}: record id {ln.id} already on line {seen[ln.id][0]}")
        op = ln.op or ("ADD" if ln.supersedes is None else "UPDATE")
        if (op == "ADD") != (ln.supersedes is None):
            raise ImportFormatError(f"{path}:{n}: field 'op': {op} does not match supersedes={ln.supersedes}")
        if ln.supersedes is not None:
            if ln.supersedes not in seen:
                raise ImportFormatError(f"{path}:{n}: field 'supersedes': record {ln.supersedes} is not on "
                                        f"an earlier line")
            if ln.supersedes in superseded_by:
                raise ImportFormatError(f"{path}:{n}: field 'supersedes': record {ln.supersedes} is already "
                                        f"superseded on line {superseded_by[ln.supersedes]}")
            tn, target = seen[ln.supersedes]
            if target.user_id != ln.user_id:
                raise ImportFormatError(f"{path}:{n}: field 'user_id': {ln.user_id!r} rewrites a record of "
                                        f"{target.user_id!r} (line {tn})")
            superseded_by[ln.supersedes] = n
        seen[ln.id] = (n, ln)
    for rid, (n, ln) in seen.items():
        if ln.status == "deleted" and rid not in deleted_by:
            raise ImportFormatError(f"{path}:{n}: field 'status': 'deleted', but no {DELETE_OP} event line "
                                    f"deletes record {rid}")
        if (ln.status == "superseded") != (rid in superseded_by):
            raise ImportFormatError(
                f"{path}:{n}: field 'status': {ln.status!r}, but record {rid} is "
                f"{'superseded on line ' + str(superseded_by[rid]) if rid in superseded_by else 'superseded by no line'}")


def _record_origin(ln: RecordLine) -> tuple[str, int]:
    if ln.origin is not None:
        return ln.origin.store_id, ln.origin.id
    return ln.store_id or "unknown", ln.id


def _event_origin(ln: EventLine) -> tuple[str, int]:
    if ln.origin is not None:
        return ln.origin.store_id, ln.origin.seq
    return ln.store_id or "unknown", ln.seq


def _present_record(store, ln: RecordLine) -> int | None:
    """The local id of this line's record if this store already has it (None if not)."""
    o_store, o_id = _record_origin(ln)
    if o_store == store.store_id:
        rec = store.db.get_record(o_id)
        if rec is None or rec.text != ln.text or rec.user_id != ln.user_id:
            raise ImportFormatError(f"line claims to be this store's record {o_id}, which "
                                    f"{'does not exist' if rec is None else 'differs'} here")
        return rec.id
    ev = store.db.event_for_key(f"import:{o_store}:{o_id}")
    if ev is None:
        return None
    rec = store.db.get_record(ev["record_id"])
    if rec.text != ln.text:
        raise ImportFormatError(f"record {o_store}:{o_id} was imported before with different text "
                                f"{rec.text!r:.60}")
    return rec.id


def _present_event(store, ln: EventLine) -> bool:
    o_store, o_seq = _event_origin(ln)
    if o_store == store.store_id:
        evs = store.db.events("seq=?", (o_seq,))
        if not evs or evs[0]["op"] != ln.op:
            raise ImportFormatError(f"line claims to be this store's event {o_seq} ({ln.op}), which "
                                    f"{'does not exist' if not evs else 'differs'} here")
        return True
    return store.db.event_for_key(f"import:{o_store}:event:{o_seq}") is not None


def _import_record(store, db, ln: RecordLine, vec, obs_vec, mapping: dict, applied: list,
                   result: ImportResult) -> None:
    local = _present_record(store, ln)
    if local is not None:
        mapping[ln.id] = local
        result.records_present += 1
        return
    o_store, o_id = _record_origin(ln)
    plan = plan_write(
        ln.op or ("ADD" if ln.supersedes is None else "UPDATE"), store._embed_one, user_id=ln.user_id,
        target_id=None if ln.supersedes is None else mapping[ln.supersedes], text=ln.text,
        observed_at=ln.observed_at, source=ln.source, decision_source=ln.decision_source,
        op_key=f"import:{o_store}:{o_id}", embedding=vec, observation_embedding=obs_vec,
        created_at=ln.created_at, ts=ln.event_ts,
        payload=dict(ln.event_payload, origin={"store_id": o_store, "id": o_id}, imported_from=ln.store_id,
                     original_id=ln.id))
    seq = store.db.next_seq(db)
    rid, user, removed = apply_write(store.db, db, plan, seq)
    mapping[ln.id] = rid
    applied.append((user, seq, rid, plan.vec, removed))
    result.records += 1


def _import_event(store, db, ln: EventLine, mapping: dict, applied: list, result: ImportResult) -> None:
    if _present_event(store, ln):
        result.events_present += 1
        return
    o_store, o_seq = _event_origin(ln)
    if ln.op == DELETE_OP:  # the soft delete itself, through the store's one delete path
        seq = store.db.next_seq(db)
        rec = apply_delete(store.db, db, mapping[ln.record_id], seq, decision_source=ln.decision_source or "import",
                           op_key=f"import:{o_store}:event:{o_seq}", ts=ln.ts,
                           payload=dict(ln.payload, origin={"store_id": o_store, "seq": o_seq},
                                        original_op_key=ln.op_key))
        applied.append((rec.user_id, seq, None, None, rec.id))
        result.events += 1
        return
    store.db.insert_event(
        db, seq=store.db.next_seq(db), user_id=ln.user_id, op=ln.op, record_id=mapping.get(ln.record_id),
        target_id=mapping.get(ln.target_id), decision_source=ln.decision_source,
        op_key=f"import:{o_store}:event:{o_seq}",
        payload=dict(ln.payload, origin={"store_id": o_store, "seq": o_seq}, original_op_key=ln.op_key), ts=ln.ts)
    result.events += 1


@contextlib.contextmanager
def _naming_line(path: Path, n: int):
    """Re-raises a bad line's error (not a locked or corrupt store) as ImportFormatError naming it."""
    try:
        yield
    except (ImportFormatError, StaleTargetError, RecordNotFoundError, ValueError) as e:
        raise ImportFormatError(f"{path}:{n}: {str(e).removeprefix(f'{path}:{n}: ')}") from e


def import_jsonl(store, path: str | os.PathLike) -> ImportResult:
    """Imports an export into ``store`` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such import file {path}")
    lines = _parse(path)
    _check_structure(path, lines)
    result = ImportResult()
    with store._lock:
        todo = []  # records not here yet: embedded before the write transaction opens
        for n, ln in lines:
            with _naming_line(path, n):
                if isinstance(ln, RecordLine) and _present_record(store, ln) is None:
                    todo.append((n, ln))
        # the observations a record absorbed (when they differ from its text) in the same batch
        obs = [(n, o) for n, ln in todo if (o := observation_of(ln.event_payload, ln.text)) is not None]
        got = store.embedder.embed([ln.text for _, ln in todo] + [o for _, o in obs]) if todo else []
        vecs = dict(zip((n for n, _ in todo), got[:len(todo)]))
        obs_vecs = dict(zip((n for n, _ in obs), got[len(todo):]))
        mapping: dict[int, int] = {}  # exported id -> id here
        applied = []
        with store.db.write() as db:
            for n, ln in lines:
                with _naming_line(path, n):
                    if isinstance(ln, RecordLine):
                        _import_record(store, db, ln, vecs.get(n), obs_vecs.get(n), mapping, applied, result)
                    else:
                        _import_event(store, db, ln, mapping, applied, result)
        for user, seq, rid, vec, removed in applied:
            store.index.apply(user, seq, add=[(rid, vec)] if rid is not None else [],
                              remove=[removed] if removed else [])
        store.flush()
    return result
