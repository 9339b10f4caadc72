"""Export / import: scoped, idempotent (also into the exporting store), faithful and
all-or-nothing, with errors naming the line (issue 9, section 3 item 5)."""

import json

import pytest

from tsubasa_fast.cli import main
from tsubasa_fast.memory import HashingEmbedder, MemoryStore
from tsubasa_fast.memory.store_transfer import ImportFormatError


@pytest.fixture
def evolved(tmp_path):
    """A store whose history has every kind of decision, each from a known source."""
    s = MemoryStore(tmp_path / "src", HashingEmbedder(64))
    a = s.add("maya", "Maya lives in Leeds.", observed_at="2023-01-14", source={"dia_ids": ["D1:1"]},
              decision_source="rule", op_key="obs:1")
    s.rewrite(a.id, "On 14 January 2023 Maya lived in Leeds; in June 2023 she moved to Bristol.",
              op="RECONCILE", source={"dia_ids": ["D4:2"]}, decision_source="llm", op_key="obs:2")
    b = s.add("maya", "Maya has 2 cats.", decision_source="rule", op_key="obs:3")
    s.rewrite(b.id, "Maya has 2 cats, Miso and Tofu.", op="UPDATE", decision_source="rule", op_key="obs:4")
    s.log_decision("maya", "IGNORE", target_id=b.id, decision_source="rule", op_key="obs:5",
                   payload={"observation": "Maya has two cats."})
    s.add("omar", "Omar plays chess on Sundays.", decision_source="user")
    yield s
    s.close()


def _decisions(store, user):
    """(op, decision_source, text-or-observation) per event, ids left out (they are remapped)."""
    return [(e["op"], e["decision_source"], e["payload"].get("text") or e["payload"].get("observation"))
            for e in store.events(user)]


def test_export_of_an_empty_user_is_an_error(evolved, tmp_path, capsys):
    with pytest.raises(ValueError, match="user_id: must be a non-empty string"):
        evolved.export_jsonl(tmp_path / "x.jsonl", user_id="")
    assert not (tmp_path / "x.jsonl").exists()
    assert main(["memory", "export", "--store", str(evolved.path), "--user", "", str(tmp_path / "y.jsonl")]) == 2
    assert "--user" in capsys.readouterr().err and not (tmp_path / "y.jsonl").exists()
    n = evolved.export_jsonl(tmp_path / "m.jsonl", user_id="maya")
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert n == 4 and {r["user_id"] for r in rows} == {"maya"}


def test_import_into_its_own_store_writes_nothing(evolved, tmp_path):
    out = tmp_path / "e.jsonl"
    evolved.export_jsonl(out)
    before = (evolved.count(live_only=False), len(evolved.events()))
    r = evolved.import_file(out)
    assert (r.records, r.events, r.records_present, r.events_present) == (0, 0, 5, 1)
    assert (evolved.count(live_only=False), len(evolved.events())) == before
    assert evolved.count("maya") == 2


def test_import_keeps_sources_times_and_decisions(evolved, tmp_path):
    out = tmp_path / "e.jsonl"
    evolved.export_jsonl(out)
    other = MemoryStore(tmp_path / "dst", HashingEmbedder(64))
    r = other.import_file(out)
    assert (r.records, r.events) == (5, 1)
    for user in ("maya", "omar"):
        mine, theirs = evolved.all(user, include_superseded=True), other.all(user, include_superseded=True)
        keep = ("text", "status", "version", "observed_at", "created_at", "decision_source", "source")
        assert [[getattr(x, k) for k in keep] for x in theirs] == [[getattr(x, k) for k in keep] for x in mine]
        assert _decisions(other, user) == _decisions(evolved, user)
    assert [e["op"] for e in other.events("maya")] == ["ADD", "RECONCILE", "ADD", "UPDATE", "IGNORE"]
    ignore = other.events("maya")[-1]
    assert other.get(ignore["target_id"]).text == "Maya has 2 cats."  # target remapped
    # idempotent here too, and a round trip back into the source store adds nothing
    assert other.import_jsonl(out) == 0
    back = tmp_path / "back.jsonl"
    other.export_jsonl(back)
    n_before = (evolved.count(live_only=False), len(evolved.events()))
    assert evolved.import_jsonl(back) == 0
    assert (evolved.count(live_only=False), len(evolved.events())) == n_before
    other.close()


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("line,edit,match", [
    (1, lambda d: d.pop("text"), r":2: missing field 'text'"),
    (1, lambda d: d.update(text=["not", "text"]), r":2: field 'text'"),
    (1, lambda d: d.update(supersedes="one"), r":2: field 'supersedes'"),
    (1, lambda d: d.update(created_at="yesterday"), r":2: field 'created_at': expected an ISO 8601"),
    (1, lambda d: d.update(decision_source="robot"), r":2: field 'decision_source'"),
    (1, lambda d: d.update(supersedes=99), r":2: field 'supersedes': record 99 is not on an earlier line"),
    (0, lambda d: d.update(status="live"), r":1: field 'status': 'live', but record 1 is superseded on line 2"),
    (5, lambda d: d.update(op="ADD"), r":6: field 'op'"),
])
def test_bad_import_lines_are_named_and_nothing_is_written(evolved, tmp_path, line, edit, match):
    out = tmp_path / "e.jsonl"
    evolved.export_jsonl(out)
    rows = _lines(out)
    edit(rows[line])
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    other = MemoryStore(tmp_path / "dst", HashingEmbedder(64))
    with pytest.raises(ImportFormatError, match=match):
        other.import_jsonl(out)
    assert other.count(live_only=False) == 0 and other.events() == []
    other.close()


def test_import_failing_midway_rolls_back(evolved, tmp_path):
    """A line that only fails while writing (its target is no longer live here) undoes the
    lines before it."""
    out = tmp_path / "e.jsonl"
    evolved.export_jsonl(out)
    other = MemoryStore(tmp_path / "dst", HashingEmbedder(64))
    rows = _lines(out)
    first = tmp_path / "first.jsonl"
    first.write_text(json.dumps(rows[0] | {"status": "live"}) + "\n")
    assert other.import_jsonl(first) == 1
    local = other.all("maya")[0]
    other.rewrite(local.id, "Maya lives in York.")  # diverged here
    n = (other.count(live_only=False), len(other.events()))
    with pytest.raises(ImportFormatError, match=r"e\.jsonl:2: .*superseded"):
        other.import_jsonl(out)
    assert (other.count(live_only=False), len(other.events())) == n
    assert [r.text for r in other.all("omar")] == []  # line 6 (after the failure) not written either
    other.close()


def test_import_cli_reports_counts(evolved, tmp_path, capsys):
    out = tmp_path / "e.jsonl"
    evolved.export_jsonl(out)
    argv = ["memory", "import", "--store", str(tmp_path / "dst"), "--embedder", "hashing", str(out)]
    assert main(argv) == 0
    assert "imported 5 records and 1 decisions" in capsys.readouterr().out
    assert main(argv) == 0
    assert "imported 0 records and 0 decisions" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "user_id": "u", "text": "x", "status": "live", "supersedes": null}\n{"id": 2}\n')
    assert main(argv[:-1] + [str(bad)]) == 2
    assert "bad.jsonl:2: missing field 'user_id'" in capsys.readouterr().err
