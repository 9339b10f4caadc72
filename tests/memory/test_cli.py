"""tsubasa-fast memory ingest|search|history and eval retrieval, end to end (hashing embedder)."""

import json

import pytest

from tsubasa_fast.cli import main
from tsubasa_fast.memory.locomo import count_tokens


@pytest.mark.parametrize("argv", [[], ["memory"], ["memory", "ingest"], ["memory", "search"],
                                  ["memory", "history"], ["eval"], ["eval", "retrieval"]])
def test_help_everywhere(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--help"])
    assert e.value.code == 0
    assert "usage: tsubasa-fast" in capsys.readouterr().out


def test_cli_end_to_end(tmp_path, locomo_file, capsys):
    store = str(tmp_path / "st")
    assert main(["memory", "ingest", "--store", store, "--locomo", str(locomo_file), "--source",
                 "observations", "--manager", "static", "--embedder", "hashing"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # 3 sessions x (one observation + one uncited turn) per speaker: Ann's observation cites
    # D{s}:1, so her D{s}:3 follows; Bob's cites D{s}:2, so his D{s}:4 does
    assert summary["applied"] == 12 and summary["live_records"] == 12 and summary["uncited_turns"] == 6
    assert main(["memory", "ingest", "--store", store, "--locomo", str(locomo_file), "--source",
                 "observations", "--manager", "static"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["replayed"] == 12
    assert main(["memory", "search", "--store", store, "--user", "conv-t:Ann", "-k", "2", "--json",
                 "pottery class"]) == 0
    hits = [json.loads(l) for l in capsys.readouterr().out.strip().splitlines()]
    assert len(hits) == 2 and all(h["user_id"] == "conv-t:Ann" for h in hits)
    assert main(["memory", "history", "--store", store, str(hits[0]["id"])]) == 0
    assert f"#{hits[0]['id']} v1 live" in capsys.readouterr().out
    out = tmp_path / "r.json"
    assert main(["eval", "retrieval", "--store", store, "--locomo", str(locomo_file), "-k", "1", "12",
                 "--json", str(out), "--retrieval", "hybrid"]) == 0
    assert "overall" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["questions"] == 2 and set(res["overall"]) == {"recall@1", "recall@12"}
    assert set(res["mean_retrieved_tokens"]) == {"1", "12"} and set(res["by_category"]) == {"2", "4"}
    # k=12 retrieves all twelve live memories, so every evidence id is found and every question
    # reads all of their tokens
    assert res["overall"]["recall@12"] == 1.0
    export = tmp_path / "all.jsonl"
    assert main(["memory", "export", "--store", store, str(export)]) == 0
    texts = [json.loads(line)["text"] for line in export.read_text().splitlines()]
    assert len(texts) == 12 and res["mean_retrieved_tokens"]["12"] == sum(count_tokens(t) for t in texts)


def test_cli_errors_are_clear(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"sample_id": "c", "conversation": {"speaker_a": "A"}}]')
    assert main(["memory", "ingest", "--store", str(tmp_path / "s"), "--locomo", str(bad),
                 "--source", "observations", "--embedder", "hashing"]) == 2
    assert "conversation.speaker_b: missing" in capsys.readouterr().err
    assert main(["memory", "search", "--store", str(tmp_path / "none"), "--user", "u", "q"]) == 2
    assert "no memory store" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["memory", "search", "--store", "x", "--user", "u", "-k", "0", "q"])
    assert "positive integer" in capsys.readouterr().err


def test_library_errors_name_fields_and_the_cli_names_flags(tmp_path, locomo_file, capsys):
    from tsubasa_fast.errors import InputError
    from tsubasa_fast.memory import HashingEmbedder, MemoryStore
    from tsubasa_fast.memory.evolution import make_manager
    from tsubasa_fast.memory.ingest import ingest_conversation, session_observations
    from tsubasa_fast.memory.locomo import load_locomo

    missing = tmp_path / "nope.json"
    conv = load_locomo(locomo_file)[0]
    store = MemoryStore(tmp_path / "lib", HashingEmbedder(dim=16))
    try:
        cases = [(lambda: load_locomo(missing), "locomo", f"no such file {missing}"),
                 (lambda: load_locomo(locomo_file, ["conv-x"]), "conversation", "['conv-x'] not in"),
                 (lambda: ingest_conversation(store, conv, "audio"), "source", "unknown source 'audio'"),
                 (lambda: session_observations(conv, conv.sessions[0], "llm"), "source", "llm needs an extractor"),
                 (lambda: make_manager("llm"), "manager", "llm needs a chat model"),
                 (lambda: make_manager("smart"), "manager", "unknown manager 'smart'")]
        for call, field, text in cases:
            with pytest.raises(InputError) as e:
                call()
            assert e.value.field == field and e.value.message.startswith(text) and "--" not in str(e.value)
        assert store.count() == 0  # refused before anything was written
    finally:
        store.close()
    st = str(tmp_path / "st")
    assert main(["eval", "retrieval", "--store", st, "--locomo", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == f"tsubasa-fast: error: --locomo: no such file {missing}"
    assert main(["memory", "ingest", "--store", st, "--locomo", str(locomo_file), "--source", "observations",
                 "--embedder", "hashing", "--conversation", "conv-x"]) == 2
    assert capsys.readouterr().err.startswith("tsubasa-fast: error: --conversation: ['conv-x'] not in")


def test_memory_search_ranks_like_the_library_default(tmp_path, locomo_file, capsys):
    """`memory search` with no --retrieval is the library's DEFAULT_MODE (as `eval retrieval`), not dense."""
    from tsubasa_fast.memory.retrieval import DEFAULT_MODE, Retriever
    from tsubasa_fast.memory.store import open_store

    st = str(tmp_path / "st")
    assert main(["memory", "ingest", "--store", st, "--locomo", str(locomo_file), "--source",
                 "observations", "--embedder", "hashing"]) == 0
    capsys.readouterr()
    q = "What did Ann do in May 2023?"

    def cli(*flags):
        assert main(["memory", "search", "--store", st, "--user", "conv-t:Ann", "-k", "3", "--json", *flags, q]) == 0
        return [(h["id"], h["score"]) for h in map(json.loads, capsys.readouterr().out.strip().splitlines())]

    store = open_store(st, must_exist=True)
    try:
        lib = [(r.id, s) for r, s in Retriever(store).search_records(["conv-t:Ann"], q, 3)]
        dense = [(h.record.id, h.score) for h in store.search("conv-t:Ann", q, 3)]
    finally:
        store.close()
    assert DEFAULT_MODE != "dense"
    got = cli()
    assert [i for i, _ in got] == [i for i, _ in lib] and [s for _, s in got] == pytest.approx([s for _, s in lib])
    assert [s for _, s in cli("--retrieval", "dense")] == pytest.approx([s for _, s in dense])
    assert [s for _, s in got] != pytest.approx([s for _, s in dense])  # the default is not plain cosine
