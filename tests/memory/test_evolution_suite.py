"""The scripted evolution suite (tests/memory/data/evolution_cases.json) with the real store,
MiniLM and the project's retrieval: the rule manager must keep >= 90 % of cases right.

Each case is ingested like ``memory ingest --source observations``; benchmarks/evolution.py
runs the same cases for every manager (the LLM one too) and documents the checks.
"""

import collections

import pytest

from benchmarks.evolution import load_cases, make, run_suite, summarise
from tsubasa_fast.memory import MiniLMEmbedder

CASES = load_cases()


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEmbedder()


def test_cases_cover_every_kind_of_change():
    kinds = collections.Counter(c["kind"] for c in CASES)
    assert len(CASES) >= 30
    for kind in ("residence change", "job change", "count up", "preference reversal", "relationship change",
                 "habit stopped", "diet change", "duplicate", "added detail", "unrelated fact"):
        assert kinds[kind] >= 2, kind
    for c in CASES:  # every case checks something beyond top-1
        assert c["questions"] and (c.get("stale") or c.get("max_live") or c.get("separate")), c["id"]


def test_rule_manager_keeps_the_current_state(minilm, tmp_path):
    results = run_suite(CASES, make("rule"), minilm, tmp_path)
    s = summarise(results)
    assert s["accuracy"] >= 0.9, s["failed"]
    assert s["op_accuracy"] >= 0.9, {r.id: r.ops for r in results if not r.ops_ok}
    by_id = {r.id: r for r in results}
    # the examples, with the operation each one needs
    assert by_id["count-cats"].ops[-1] == "RECONCILE" and by_id["count-cats"].passed
    assert by_id["pref-love-hate"].ops[-1] == "RECONCILE" and by_id["pref-love-hate"].passed
    assert by_id["residence-chain"].ops[2] == "RECONCILE" and by_id["residence-chain"].passed
    assert by_id["job-quit"].ops[-1] == "RECONCILE" and by_id["job-quit"].passed
    assert "Maya had 2 cats (10 January 2023); Maya has 3 cats (4 May 2023)." in by_id["count-cats"].top1


def test_static_manager_fails_every_case_that_needs_evolution(minilm, tmp_path):
    """The checks can fail: appending everything passes only the unrelated-fact cases."""
    results = run_suite(CASES, make("static"), minilm, tmp_path)
    passed = {r.id for r in results if r.passed}
    assert passed == {c["id"] for c in CASES if c["kind"] == "unrelated fact"}
