"""Ranking: bm25s scores, fusion, date matching, provenance expansion and the conversation pool,
each against hand-computed values on tiny corpora (real SQLite store, hashing embedder)."""

import json
import math

import numpy as np
import pytest

import bm25s
from tsubasa_fast.cli import main
from tsubasa_fast.memory.locomo import evaluate_retrieval, load_locomo
from tsubasa_fast.memory.retrieval import (Retriever, conversation_merge, convex_fusion, date_match, diversify,
                                           lexical_text, memory_units, named_speaker, rrf_fusion, search_conversation,
                                           session_turns, tokenize)

DOCS = ["Caroline adopted two dogs", "Melanie paints sunsets", "Caroline paints dogs and cats"]


def test_tokenize_stems_and_drops_stop_words():
    assert tokenize(DOCS) == [["carolin", "adopt", "two", "dog"], ["melani", "paint", "sunset"],
                              ["carolin", "paint", "dog", "cat"]]
    # question words and pronouns are stop words (the Lucene list keeps them)
    assert tokenize(["When did she get dogs painted?"]) == [["get", "dog", "paint"]]


def test_bm25s_scores_match_hand_computed_lucene_bm25():
    # Lucene BM25, k1 = 1.2, b = 0.75: idf = ln(1 + (N - df + .5) / (df + .5)),
    # tf part = tf / (tf + k1 * (1 - b + b * dl / avgdl)). N = 3, dl = 4, 3, 4, avgdl = 11/3.
    # "dog" and "paint" both have df = 2: idf = ln(1.6) = 0.4700036.
    # d0 (dog, dl 4): 0.4700036 / (1 + 1.2 * (0.25 + 0.75 * 12/11)) = 0.4700036 / 2.2818182 = 0.2059777
    # d1 (paint, dl 3): 0.4700036 / (1 + 1.2 * (0.25 + 0.75 * 9/11)) = 0.4700036 / 2.0363636 = 0.2308054
    # d2 (dog + paint, dl 4): 2 * 0.2059777 = 0.4119554
    idx = bm25s.BM25(k1=1.2, b=0.75)
    idx.index(tokenize(DOCS), show_progress=False)
    got = idx.get_scores(tokenize(["dogs painted"])[0])
    np.testing.assert_allclose(got, [0.2059777, 0.2308054, 0.4119554], rtol=1e-5)
    idf = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))
    assert got[0] == pytest.approx(idf / (1 + 1.2 * (0.25 + 0.75 * 4 / (11 / 3))), rel=1e-6)


def test_fusions_match_hand_computed_rankings():
    dense = np.array([0.9, 0.5, 0.1])
    lex = np.array([0.0, 10.0, 5.0])
    # convex, alpha .5, half 5: [.45 + 0, .25 + .5 * 10/15, .05 + .5 * 5/10] = [.45, .58333, .30]
    np.testing.assert_allclose(convex_fusion(dense, lex, 0.5), [0.45, 0.5833333333, 0.30])
    assert np.argsort(-convex_fusion(dense, lex, 0.5)).tolist() == [1, 0, 2]
    assert np.argsort(-convex_fusion(dense, lex, 1.0)).tolist() == [0, 1, 2]  # dense only
    # RRF, k 60: dense ranks 1 2 3, BM25 ranks 3 1 2 -> 60 * (.5/61 + .5/63), (.5/62 + .5/61), (.5/63 + .5/62)
    want = [60 * (0.5 / 61 + 0.5 / 63), 60 * (0.5 / 62 + 0.5 / 61), 60 * (0.5 / 63 + 0.5 / 62)]
    np.testing.assert_allclose(rrf_fusion(dense, lex, 0.5), want)
    assert np.argsort(-rrf_fusion(dense, lex, 0.5)).tolist() == [1, 0, 2]
    # all BM25 scores tie (no query term matches): they share rank 1, dense decides
    np.testing.assert_allclose(rrf_fusion(np.array([0.1, 0.9]), np.zeros(2), 0.5),
                               [60 * (0.5 / 62 + 0.5 / 61), 60 * (0.5 / 61 + 0.5 / 61)])


def test_date_match():
    dates = ["2023-02-01", "2023-02-10", "2023-03-01", None, "2022-02-01"]
    assert date_match("What did Gina find on 1 February, 2023?", dates).tolist() == [1, 0.5, 0, 0, 0]
    assert date_match("What happened in February?", dates).tolist() == [1, 1, 0, 0, 1]
    assert date_match("What happened in 2022?", dates).tolist() == [0, 0, 0, 0, 1]
    assert date_match("When did Gina open her store?", dates).tolist() == [0] * 5
    assert date_match("What did she do on the 5th?", dates).tolist() == [0] * 5  # a day alone is no date


def test_named_speaker():
    assert named_speaker("When did Caroline move?", ("Caroline", "Melanie")) == 0
    assert named_speaker("what does melanie's son like?", ("Caroline", "Melanie")) == 1
    assert named_speaker("Do Caroline and Melanie agree?", ("Caroline", "Melanie")) is None
    assert named_speaker("Who is Carol?", ("Caroline", "Melanie")) is None


def _conversation_store(store):
    """Two users, two sessions. Ann's observation cites an utterance that names the guitar, its
    text does not; Bob's utterance memory answers a question about the beagle it never names."""
    sessions = [[{"dia_id": "D1:1", "speaker": "Ann", "text": "I bought a Fender guitar yesterday!"},
                 {"dia_id": "D1:2", "speaker": "Bob", "text": "Nice. I adopted a beagle.",
                  "blip_caption": "a photo of a puppy"}],
                [{"dia_id": "D2:1", "speaker": "Ann", "text": "Where does your beagle run?"},
                 {"dia_id": "D2:2", "speaker": "Bob", "text": "my dog loves the park"}]]
    for n, turns in enumerate(sessions, 1):
        for user in ("c:Ann", "c:Bob"):
            store.put_raw_session(f"raw:c:{n}:{user}", user, {"date_time": "x", "turns": turns},
                                  observed_at=f"2023-0{4 + n}-08T13:56:00")
    a = store.add("c:Ann", "Ann got a new instrument.", observed_at="2023-05-08",
                  source={"kind": "observations", "dia_ids": ["D1:1"]})
    b = store.add("c:Bob", "Bob has a dog.", observed_at="2023-05-08",
                  source={"kind": "observations", "dia_ids": ["D1:2"]})
    u = store.add("c:Bob", "[8 June 2023] Bob: my dog loves the park", observed_at="2023-06-08",
                  source={"kind": "utterances", "dia_ids": ["D2:2"]})
    return a, b, u


def test_lexical_text_carries_date_cited_utterances_and_the_turns_they_answer(store):
    a, b, u = _conversation_store(store)
    turns = session_turns(store, "c:Ann")
    assert turns == {"D1:1": ("Ann: I bought a Fender guitar yesterday!", None),
                     "D1:2": ("Bob: Nice. I adopted a beagle. [shares a photo of a puppy]", "D1:1"),
                     "D2:1": ("Ann: Where does your beagle run?", None),
                     "D2:2": ("Bob: my dog loves the park", "D2:1")}
    assert lexical_text(a, turns) == "8 May 2023 Ann got a new instrument. Ann: I bought a Fender guitar yesterday!"
    assert lexical_text(b, turns) == ("8 May 2023 Bob has a dog. Ann: I bought a Fender guitar yesterday! "
                                      "Bob: Nice. I adopted a beagle. [shares a photo of a puppy]")
    # an utterance memory is its own source: only the turn it answers, and its [date] is not doubled
    assert lexical_text(u, turns) == "8 June 2023 Bob: my dog loves the park Ann: Where does your beagle run?"


def test_provenance_finds_the_memory_its_text_does_not_name(store):
    _conversation_store(store)
    lexical = Retriever(store, "hybrid", alpha=0.0)  # BM25 alone: only the cited utterance names it
    hits = lexical.search_users(["c:Ann", "c:Bob"], "Which guitar did Ann buy?", 3)
    assert hits[0].text == "Ann got a new instrument." and hits[0].user_id == "c:Ann"
    # Bob's observation reaches the guitar through the turn it answers, in a longer text: second
    assert hits[1].text == "Bob has a dog." and hits[0].score > hits[1].score > hits[2].score
    hits = lexical.search("c:Bob", "puppy", 2)
    assert hits[0].text == "Bob has a dog." and hits[0].dia_ids == ("D1:2",) and hits[1].score == 0
    hits = lexical.search("c:Bob", "Where does the beagle run?", 2)
    assert hits[0].dia_ids == ("D2:2",) and hits[0].score > hits[1].score > 0


def test_pool_scores_are_the_hand_fused_scores(store):
    _conversation_store(store)
    r = Retriever(store, "date", alpha=0.5, date_boost=0.1)
    q = "Where does Bob's dog play in June 2023?"
    hits = r.search_users(["c:Ann", "c:Bob"], q, 3, boosts=[0.0, 0.2])
    recs = {x.text: x for x in store.all("c:Ann") + store.all("c:Bob")}
    qv = store.embedder.embed([q])[0].astype(np.float64)
    texts = [lexical_text(x, session_turns(store, x.user_id)) for x in recs.values()]
    idx = bm25s.BM25(k1=1.2, b=0.75)
    idx.index(tokenize(texts), show_progress=False)
    lex = idx.get_scores(tokenize([q])[0])
    want = {}
    for (text, rec), s in zip(recs.items(), lex):
        cos = float(store.embedder.embed([rec.text])[0].astype(np.float64) @ qv)
        june = rec.observed_at.startswith("2023-06")  # only the utterance memory
        want[text] = 0.5 * cos + 0.5 * s / (s + 5.0) + 0.1 * june + (0.2 if rec.user_id == "c:Bob" else 0)
    assert [h.text for h in hits] == sorted(want, key=lambda t: -want[t])
    for h in hits:
        assert h.score == pytest.approx(want[h.text], abs=1e-5)


def test_search_refuses_bad_arguments(store):
    _conversation_store(store)
    with pytest.raises(ValueError, match="mode"):
        Retriever(store, "bm25")
    with pytest.raises(ValueError, match="fusion"):
        Retriever(store, fusion="max")
    with pytest.raises(ValueError, match="alpha"):
        Retriever(store, alpha=1.5)
    r = Retriever(store)
    with pytest.raises(ValueError, match="query"):
        r.search("c:Ann", "  ", 3)
    with pytest.raises(ValueError, match="k must be"):
        r.search("c:Ann", "guitar", 0)
    with pytest.raises(ValueError, match="boosts"):
        r.search_users(["c:Ann", "c:Bob"], "guitar", 3, boosts=[0.1])
    assert r.search("c:nobody", "guitar", 3) == []


def test_index_follows_writes(store):
    _conversation_store(store)
    r = Retriever(store, "hybrid")
    assert r.search("c:Ann", "ukulele", 5)[0].text == "Ann got a new instrument."
    store.add("c:Ann", "Ann plays the ukulele.", observed_at="2023-07-01", source={"kind": "observations"})
    got = r.search("c:Ann", "ukulele", 5)
    assert len(got) == 2 and got[0].text == "Ann plays the ukulele."


def test_conversation_merge_boosts_the_named_speaker(tmp_path, locomo_file, store):
    from tsubasa_fast.memory.ingest import ingest_conversation

    conv = load_locomo(locomo_file)[0]
    ingest_conversation(store, conv, "observations")
    r = Retriever(store, "hybrid")
    q = "What does Bob enjoy?"
    plain = search_conversation(r, conv, q, 6, speaker_boost=0.0)
    boosted = search_conversation(r, conv, q, 6, speaker_boost=10.0)
    assert {h.user_id for h in boosted[:3]} == {"conv-t:Bob"}  # Bob has 3 memories, all first
    assert sorted(h.score for h in boosted if h.user_id == "conv-t:Bob") == pytest.approx(
        sorted(h.score + 10.0 for h in plain if h.user_id == "conv-t:Bob"))
    res = evaluate_retrieval([conv], r, ks=(1, 3), merge=conversation_merge(0.1))
    assert res["questions"] == 2
    with pytest.raises(TypeError, match="Retriever"):
        conversation_merge()(lambda u, q, k: [], conv, q, 3)


def test_eval_retrieval_defaults_are_the_best_measured(tmp_path, locomo_file, capsys):
    st = str(tmp_path / "st")
    assert main(["memory", "ingest", "--store", st, "--locomo", str(locomo_file), "--source", "observations",
                 "--embedder", "hashing"]) == 0
    out = tmp_path / "r.json"
    assert main(["eval", "retrieval", "--store", st, "--locomo", str(locomo_file), "--json", str(out)]) == 0
    capsys.readouterr()
    cfg = json.loads(out.read_text())["config"]
    assert (cfg["retrieval"], cfg["fusion"], cfg["alpha"], cfg["speaker_boost"]) == ("date", "convex", 0.5, 0.1)


def _evolved_store(store):
    """Ann's observation about the guitar, then an UPDATE that merges a second one into it."""
    a, b, u = _conversation_store(store)
    merged = store.rewrite(a.id, "Ann got a new instrument (8 May 2023); Ann asked about the beagle (8 June 2023).",
                           observed_at="2023-06-08", source={"kind": "observations", "dia_ids": ["D2:1"]},
                           decision_source="rule", payload={"observation": "Ann asked about the beagle."})
    return merged, b, u


def test_memory_units_are_the_observations_a_version_chain_absorbed(store):
    merged, b, _ = _evolved_store(store)
    assert merged.version == 2 and merged.dia_ids == ["D1:1", "D2:1"]
    got = memory_units(store, "c:Ann", store.all("c:Ann"))
    # version 1 has no logged observation (a direct add): its own text stands in
    assert got == {merged.id: [("Ann got a new instrument.", ["D1:1"], "2023-05-08"),
                               ("Ann asked about the beagle.", ["D2:1"], "2023-06-08")]}
    assert memory_units(store, "c:Bob", store.all("c:Bob")) == {}  # single versions are their own unit


def test_diversify_moves_records_whose_evidence_is_already_shown_down():
    cited = [["D1"], ["D1"], ["D2"], [], ["D1", "D2"], ["D2", "D3"]]
    assert diversify(cited, [0, 1, 2, 3, 4, 5]) == [0, 2, 3, 5, 1, 4]
    assert diversify(cited, [4, 0, 5, 1]) == [4, 5, 0, 1]
    assert diversify([[], []], [1, 0]) == [1, 0]  # nothing cited: nothing moves


def test_units_score_a_merged_record_by_its_best_observation(store):
    merged, b, u = _evolved_store(store)
    q = "Where does the beagle run?"
    r = Retriever(store, "hybrid", alpha=0.5, diversify=False)
    hits = {h.text: h.score for h in r.search_users(["c:Ann", "c:Bob"], q, 3)}
    turns = {**session_turns(store, "c:Ann"), **session_turns(store, "c:Bob")}
    recs = store.all("c:Ann") + store.all("c:Bob")
    # by hand: BM25 over the records' lexical texts and, separately, over the units' (the merged
    # record's two observations with their own date and cited turns; the others as they are)
    unit_texts = ["8 May 2023 Ann got a new instrument. Ann: I bought a Fender guitar yesterday!",
                  "8 June 2023 Ann asked about the beagle. Ann: Where does your beagle run?"]  # opens session 2
    rec_idx, unit_idx = bm25s.BM25(k1=1.2, b=0.75), bm25s.BM25(k1=1.2, b=0.75)
    rec_idx.index(tokenize([lexical_text(x, turns) for x in recs]), show_progress=False)
    unit_idx.index(tokenize(unit_texts + [lexical_text(x, turns) for x in recs[1:]]), show_progress=False)
    qt = tokenize([q])[0]
    lr, lu = rec_idx.get_scores(qt), unit_idx.get_scores(qt)
    lex = [max(lr[0], lu[0], lu[1])] + [max(lr[i], lu[i + 1]) for i in range(1, len(recs))]
    qv = store.embedder.embed([q])[0].astype(np.float64)
    cos = lambda t: float(store.embedder.embed([t])[0].astype(np.float64) @ qv)  # noqa: E731
    dense = [0.5 * (cos(merged.text) + max(cos("Ann got a new instrument."), cos("Ann asked about the beagle.")))]
    dense += [cos(x.text) for x in recs[1:]]
    for x, d, s in zip(recs, dense, lex):
        assert hits[x.text] == pytest.approx(0.5 * d + 0.5 * s / (s + 5.0), abs=1e-5)
    plain = Retriever(store, "hybrid", alpha=0.5, units=False, diversify=False)
    got = {h.text: h.score for h in plain.search_users(["c:Ann", "c:Bob"], q, 3)}
    assert got[merged.text] == pytest.approx(
        0.5 * cos(merged.text) + 0.5 * lr[0] / (lr[0] + 5.0), abs=1e-5)


def test_search_records_diversifies_by_provenance(store):
    _conversation_store(store)
    dup = store.add("c:Bob", "Bob owns a beagle puppy.", observed_at="2023-05-08",
                    source={"kind": "observations", "dia_ids": ["D1:2"]})  # same evidence as "Bob has a dog."
    q = "Bob dog beagle puppy"
    plain = [x.id for x, _ in Retriever(store, "hybrid", diversify=False).search_records(["c:Bob"], q, 3)]
    div = [x.id for x, _ in Retriever(store, "hybrid").search_records(["c:Bob"], q, 3)]
    first, second = plain[0], plain[1]
    assert {first, second} <= {dup.id, store.all("c:Bob")[0].id}  # both D1:2 memories rank first
    assert div == [first, plain[2], second]
