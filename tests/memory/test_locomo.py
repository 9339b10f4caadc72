"""LoCoMo loader quirks and the recall@k computation."""

import pytest

from tsubasa_fast.memory.locomo import (Retrieved, evaluate_retrieval, format_report, load_locomo,
                                        merged_search, parse_locomo_date)

from ..helpers import LOCOMO_DEV as DEV


def test_loader_handles_quirks(locomo_file):
    (conv,) = load_locomo(locomo_file)
    assert conv.user_ids == ["conv-t:Ann", "conv-t:Bob"]
    assert [s.number for s in conv.sessions] == [1, 2, 3]  # session_4 has a date but no turns
    assert conv.sessions[0].date.isoformat() == "2023-05-01T13:56:00"
    assert conv.sessions[0].turns[0].full_text().endswith("[shares a photo of a clay bowl]")
    qa = conv.qa
    assert qa[0].answer == "2022"  # integer answer
    assert qa[1].evidence == ("D1:2", "D2:2")  # "D1:2; D2:2" split
    assert qa[2].evidence == ()
    assert qa[3].answer is None and qa[3].adversarial_answer == "nothing" and qa[3].category == 5
    assert conv.observations[1]["Bob"][0][1] == ["D1:2"]  # list-form dia_ids
    with pytest.raises(ValueError, match="--conversation"):
        load_locomo(locomo_file, ["conv-nope"])


def test_parse_date():
    assert parse_locomo_date("12:09 am on 13 September, 2023").isoformat() == "2023-09-13T00:09:00"
    assert parse_locomo_date("10:37 pm on 27 June, 2023").hour == 22


def test_recall_computation(locomo_file):
    (conv,) = load_locomo(locomo_file)
    table = {"conv-t:Ann": [Retrieved("a", ("D1:1",), 0.9), Retrieved("c", ("D9:9",), 0.1)],
             "conv-t:Bob": [Retrieved("b", ("D1:2",), 0.5), Retrieved("d", ("D2:2",), 0.4)]}

    def search(user, q, k):
        return table[user][:k]

    res = evaluate_retrieval([conv], search, ks=(1, 2, 3))
    assert res["questions"] == 2  # category 5 and empty evidence excluded
    # q0 evidence D1:1 -> found at rank 1. q1 evidence {D1:2, D2:2}: rank 2 and 3.
    assert res["overall"] == {"recall@1": 0.5, "recall@2": 0.75, "recall@3": 1.0}
    assert res["by_category"]["4"]["recall@2"] == 0.5
    assert res["mean_retrieved_tokens"]["2"] == 2.0
    assert "overall" in format_report(res)
    boosted = merged_search(search, conv, "What does Bob enjoy?", 2, speaker_boost=1.0)
    assert [h.text for h in boosted] == ["b", "d"]


@pytest.mark.skipif(not DEV.is_file(), reason="LoCoMo dev file not available")
def test_dev_file_loads():
    convs = load_locomo(DEV)
    assert [c.sample_id for c in convs] == ["conv-26", "conv-30"]
    n = sum(1 for c in convs for q in c.qa if q.evidence and q.category in (1, 2, 3, 4))
    assert n == 231
