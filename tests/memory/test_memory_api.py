"""tsubasa_fast.Memory: Mem0's calls over the store (real SQLite store in tmp_path).

Expected values are worked out by hand from the inputs: ids are assigned 1, 2, ... in
write order, a memory's id is its first version's, dates are the ``date=`` given.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tsubasa_fast
from tsubasa_fast.errors import InputError
from tsubasa_fast.memory import HashingEmbedder
from tsubasa_fast.memory.retrieval import DEFAULT_MODE, Retriever

ROOT = Path(__file__).resolve().parents[2]
V1 = Path(__file__).parent / "data" / "store_v1"


class ScriptedChat:
    """A ``messages -> str`` chat (unconstrained, so its replies are validated) that states
    the given facts, citing the first turn of the person the prompt asks about."""

    def __init__(self, *replies):
        self.replies, self.calls = list(replies), 0

    def __call__(self, messages):
        self.calls += 1
        prompt = messages[-1]["content"]
        who = re.search(r"List the facts about (.+) as JSON\.$", prompt).group(1)
        dia = re.search(rf"^\[([^\]]+)\] {re.escape(who)}: ", prompt, re.M).group(1)
        texts = self.replies.pop(0)
        return texts if isinstance(texts, str) else json.dumps([{"dia_id": dia, "text": t} for t in texts])


@pytest.fixture
def mem(tmp_path):
    m = tsubasa_fast.Memory(tmp_path / "mem", embedder=HashingEmbedder(64))
    yield m
    m.close()


def test_add_without_inference_stores_messages_as_given(mem):
    out = mem.add([{"role": "system", "content": "Be nice."},
                   {"role": "user", "content": "I adopted a dog named Rex."},
                   {"role": "assistant", "content": "Congratulations on Rex!"}],
                  user_id="ann", date="2023-05-08", infer=False)
    assert out["results"] == [{"id": 1, "memory": "I adopted a dog named Rex.", "event": "ADD"},
                              {"id": 2, "memory": "Congratulations on Rex!", "event": "ADD"}]
    assert mem.add("I work as a nurse in Boston.", user_id="ann", date="2023-06-01", infer=False)["results"] == \
        [{"id": 3, "memory": "I work as a nurse in Boston.", "event": "ADD"}]
    mem.add("Bob plays the guitar.", user_id="bob", date="2023-06-01", infer=False)
    got = mem.get_all(user_id="ann")["results"]
    assert [(g["id"], g["memory"], g["observed_at"], g["role"]) for g in got] == [
        (1, "I adopted a dog named Rex.", "2023-05-08", "user"),
        (2, "Congratulations on Rex!", "2023-05-08", "assistant"),
        (3, "I work as a nurse in Boston.", "2023-06-01", "user")]
    assert mem.get_all(user_id="ann", limit=2)["results"] == got[:2]
    # the messages themselves are kept, system message included
    raw = mem.store.raw_sessions("ann")[0]["payload"]
    assert [m["role"] for m in raw["messages"]] == ["system", "user", "assistant"]


def test_search_is_the_default_retrieval_with_ids(mem):
    for text, day in [("I adopted a dog named Rex.", "2023-05-08"), ("I work as a nurse in Boston.", "2023-06-01"),
                      ("I play tennis every Sunday.", "2023-06-02")]:
        mem.add(text, user_id="ann", date=day, infer=False)
    mem.add("Bob has a dog too.", user_id="bob", date="2023-05-08", infer=False)
    res = mem.search("Where does Ann work as a nurse?", user_id="ann", limit=2)["results"]
    # "work" and "nurse" are only in memory 2 (BM25 and the hashed words agree); 2 results asked
    assert len(res) == 2 and (res[0]["id"], res[0]["memory"], res[0]["observed_at"]) == \
        (2, "I work as a nurse in Boston.", "2023-06-01")
    assert set(res[0]) >= {"id", "memory", "score", "observed_at", "created_at", "updated_at", "metadata"}
    ref = Retriever(mem.store, DEFAULT_MODE).search("ann", "Where does Ann work as a nurse?", 3)
    full = mem.search("Where does Ann work as a nurse?", user_id="ann", limit=10)["results"]
    assert [(r["memory"], r["score"]) for r in full] == [(x.text, x.score) for x in ref]  # min(limit, live) = 3
    assert all(r["user_id"] == "ann" for r in full)


def test_update_delete_history(mem):
    mid = mem.add("I adopted a dog named Rex.", user_id="ann", date="2023-05-08", infer=False)["results"][0]["id"]
    mem.add("I play tennis.", user_id="ann", date="2023-05-08", infer=False)
    up = mem.update(mid, "Ann adopted a beagle named Rex.")
    assert up == {"message": "Memory updated successfully!", "id": 1, "memory": "Ann adopted a beagle named Rex.",
                  "previous_memory": "I adopted a dog named Rex."}
    got = mem.get(mid)
    assert (got["id"], got["memory"], got["version"], got["record_id"], got["status"]) == \
        (1, "Ann adopted a beagle named Rex.", 2, 3, "live")
    assert mem.get(3) == got  # any version's id names the memory
    assert [r["id"] for r in mem.search("beagle", user_id="ann", limit=5)["results"]] == [1, 2]
    assert mem.delete(mid) == {"message": "Memory deleted successfully!", "id": 1}
    assert [r["id"] for r in mem.search("beagle Rex", user_id="ann", limit=5)["results"]] == [2]
    assert [r["id"] for r in mem.get_all(user_id="ann")["results"]] == [2]
    assert mem.get(mid)["status"] == "deleted"
    hist = [(h["event"], h["record_id"], h["old_memory"], h["new_memory"], h["is_deleted"]) for h in mem.history(mid)]
    assert hist == [("ADD", 1, None, "I adopted a dog named Rex.", False),
                    ("UPDATE", 3, "I adopted a dog named Rex.", "Ann adopted a beagle named Rex.", False),
                    ("DELETE", 3, "Ann adopted a beagle named Rex.", None, True)]
    n_events = len(mem.store.events())
    for call in (lambda: mem.delete(mid), lambda: mem.update(mid, "Ann has no dog.")):
        with pytest.raises(InputError, match="memory_id: memory 1 was deleted") as e:
            call()
        assert e.value.field == "memory_id"
    assert len(mem.store.events()) == n_events


def test_bad_input_is_refused_before_anything_is_written(mem):
    mem.add("I play tennis.", user_id="ann", date="2023-05-08", infer=False)
    cases = [
        ("user_id", lambda: mem.add("hi", user_id="  ")), ("user_id", lambda: mem.add("hi", user_id=None)),
        ("user_id", lambda: mem.search("q", user_id=3)), ("user_id", lambda: mem.get_all(user_id="")),
        ("messages", lambda: mem.add([], user_id="ann")), ("messages", lambda: mem.add(5, user_id="ann")),
        ("messages", lambda: mem.add("   ", user_id="ann")),
        ("messages", lambda: mem.add([{"role": "system", "content": "x"}], user_id="ann")),
        ("messages[0]", lambda: mem.add(["hello"], user_id="ann")),
        ("messages[1].role", lambda: mem.add([{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}],
                                             user_id="ann")),
        ("messages[0].content", lambda: mem.add([{"role": "user", "content": ""}], user_id="ann")),
        ("messages[0].content", lambda: mem.add([{"role": "user"}], user_id="ann")),
        ("date", lambda: mem.add("hi", user_id="ann", date="yesterday")),
        ("date", lambda: mem.add("hi", user_id="ann", date="2023-05-08junk")),
        ("infer", lambda: mem.add("hi", user_id="ann", infer="no")),
        ("metadata", lambda: mem.add("hi", user_id="ann", metadata=["x"])),
        ("query", lambda: mem.search(" ", user_id="ann")), ("limit", lambda: mem.search("q", user_id="ann", limit=0)),
        ("memory_id", lambda: mem.get("1")), ("memory_id", lambda: mem.get(99)),
        ("memory_id", lambda: mem.history(True)), ("memory_id", lambda: mem.delete(99)),
        ("text", lambda: mem.update(1, "  ")), ("memory_id", lambda: mem.update(99, "x")),
    ]
    for field, call in cases:
        with pytest.raises(InputError) as e:
            call()
        assert e.value.field == field, (field, str(e.value))
        assert str(e.value).startswith(f"{field}: ") and "--" not in str(e.value)
    assert len(mem.store.events()) == 1 and len(mem.store.raw_sessions("ann")) == 1


def test_add_with_inference_extracts_and_evolves(mem):
    chat = ScriptedChat(["Ann lives in Boston.", "Ann adopted a dog named Rex yesterday."],
                        ["Ann moved to Leeds."], ["Ann adopted a dog named Rex yesterday."])
    mem._chat = chat
    msgs = [{"role": "user", "content": "I live in Boston, and yesterday I adopted a dog, Rex!", "name": "Ann"},
            {"role": "assistant", "content": "Nice!"}]
    first = mem.add(msgs, user_id="u-ann", date="2023-05-08")
    # relative dates resolved against the date given: 8 May 2023 - 1 day
    assert first == {"results": [{"id": 1, "memory": "Ann lives in Boston.", "event": "ADD"},
                                 {"id": 2, "memory": "Ann adopted a dog named Rex on 7 May 2023.", "event": "ADD"}],
                     "observations": 2, "extraction_skipped": False}
    second = mem.add([{"role": "user", "content": "I moved to Leeds.", "name": "Ann"}], user_id="u-ann",
                     date="2023-06-01")["results"]
    assert len(second) == 1 and second[0]["id"] == 1 and second[0]["event"] == "RECONCILE"
    assert second[0]["previous_memory"] == "Ann lives in Boston."
    # the narrative keeps both states with their dates
    assert "Boston (8 May 2023)" in second[0]["memory"] and "Leeds (1 June 2023)" in second[0]["memory"]
    assert [h["event"] for h in mem.history(1)] == ["ADD", "RECONCILE"]
    # (the fact must be grounded in the message: an invented one is dropped, see test_extraction_grounding)
    third = mem.add([{"role": "user", "content": "Yesterday I adopted Rex, my dog.", "name": "Ann"}], user_id="u-ann",
                    date="2023-05-08")["results"]
    assert third == [{"id": 2, "memory": "Ann adopted a dog named Rex on 7 May 2023.", "event": "IGNORE"}]
    assert [r["id"] for r in mem.get_all(user_id="u-ann")["results"]] == [1, 2]
    # the same add again is a replay: same answers, no LLM call, nothing written
    n_events, calls = len(mem.store.events()), chat.calls
    again = mem.add(msgs, user_id="u-ann", date="2023-05-08")["results"]
    assert again == [dict(r, replayed=True) for r in first["results"]]  # what that add did, flagged
    assert (len(mem.store.events()), chat.calls) == (n_events, calls)


def test_invalid_llm_replies_are_counted_not_hidden(mem):
    mem._chat = ScriptedChat("not json", "[{]")
    out = mem.add("I like tea.", user_id="ann", date="2023-05-08")
    assert out == {"results": [], "observations": 0, "extraction_skipped": True}
    assert [e["op"] for e in mem.store.events("ann")] == ["EXTRACTION_SKIPPED"]
    assert mem.extractor.stats["skipped"] == 1 and mem._chat.calls == 2  # one retry


def test_memory_opens_a_schema_1_store(tmp_path):
    path = tmp_path / "v1"
    shutil.copytree(V1, path)
    with tsubasa_fast.Memory(path) as m:  # the store's own embedder (hashing-v1-64)
        assert [(r["id"], r["memory"]) for r in m.get_all(user_id="ann")["results"]] == [
            (1, "Ann adopted a dog named Rex."), (2, "Ann works as a nurse in Leeds since June 2023; before that in "
                                                    "Boston."), (3, "Ann plays tennis on Sundays.")]
        assert [(h["event"], h["old_memory"]) for h in m.history(2)] == [
            ("ADD", None), ("RECONCILE", "Ann works as a nurse in Boston.")]
        m.delete(3)
        assert {r["id"] for r in m.search("tennis on Sundays", user_id="ann", limit=3)["results"]} == {1, 2}


def test_import_tsubasa_fast_memory_stays_free_of_torch():
    code = ("import sys, tsubasa_fast.memory, tsubasa_fast; assert tsubasa_fast.Memory is tsubasa_fast.memory.Memory;"
            " print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout.split() == ["False", "False"]
