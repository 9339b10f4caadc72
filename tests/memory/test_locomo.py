"""LoCoMo loader quirks and the recall@k computation."""

import pytest

from tsubasa_fast.core import Retrieved
from tsubasa_fast.errors import InputError
from tsubasa_fast.memory.locomo import (evaluate_retrieval, format_report, load_locomo,
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
    with pytest.raises(InputError, match=r"^conversation: \['conv-nope'\] not in") as e:
        load_locomo(locomo_file, ["conv-nope"])
    assert e.value.field == "conversation" and "--" not in str(e.value)


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


def test_parse_date_rejects_impossible_times():
    assert parse_locomo_date("1:56 pm on 8 May 2023").isoformat() == "2023-05-08T13:56:00"
    for bad in ("99:56 pm on 8 May, 2023", "1:61 pm on 8 May, 2023", "1:56 pm on 31 June, 2023",
                "13:56 pm on 8 May, 2023", "1:56 pm on 8 Mayo, 2023"):
        with pytest.raises(ValueError, match="expected a date like"):
            parse_locomo_date(bad)


def _write(tmp_path, mutate):
    import json

    from .conftest import tiny_locomo

    data = tiny_locomo()
    mutate(data[0])
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(data))
    return p


def _obs(c):
    return c["observation"]


@pytest.mark.parametrize("mutate,match", [
    # a misspelt speaker key or an unknown session used to drop those observations silently
    (lambda c: _obs(c)["session_2_observation"].update(Anne=_obs(c)["session_2_observation"].pop("Ann")),
     r"observation\.session_2_observation\.Anne: 'Anne' is neither speaker_a 'Ann' nor speaker_b 'Bob'"),
    (lambda c: _obs(c).update(session_9_observation={"Ann": [["Ann moved.", "D9:1"]]}),
     r"observation\.session_9_observation: there is no session_9 with turns"),
    (lambda c: _obs(c).update(session_4_observation={"Ann": [["Ann moved.", "D4:1"]]}),  # date, no turns
     r"observation\.session_4_observation: there is no session_4"),
    # an empty observation used to abort an ingest midway
    (lambda c: _obs(c)["session_3_observation"]["Bob"].append(["  ", "D3:2"]),
     r"observation\.session_3_observation\.Bob\[1\]\[0\]: empty observation text"),
    (lambda c: c["conversation"].update(session_2_date_time="99:56 pm on 2 May, 2023"),
     r"conversation\.session_2_date_time: expected a date like"),
    (lambda c: c["conversation"]["session_3"][2].update(text="", blip_caption=None),
     r"session_3\[2\]\.text: empty"),
    (lambda c: c["conversation"].update(speaker_b="Ann"), r"conversation\.speaker_b: the same as speaker_a"),
    (lambda c: c["qa"][1].update(answer=None), r"qa\[1\]\.answer: null"),
    (lambda c: c["qa"][0].update(question=7), r"qa\[0\]\.question: expected str, got int 7"),
])
def test_malformed_locomo_is_refused_naming_file_and_field(tmp_path, mutate, match):
    from tsubasa_fast.memory.locomo import LocomoFormatError

    p = _write(tmp_path, mutate)
    with pytest.raises(LocomoFormatError, match=match) as e:
        load_locomo(p)
    assert str(e.value).startswith(f"{p}: conversation[0] (conv-t).")


def test_unreadable_locomo_files_name_the_file(tmp_path):
    from tsubasa_fast.memory.locomo import LocomoFormatError

    p = tmp_path / "latin1.json"
    p.write_bytes('[{"sample_id": "caf\u00e9"}]'.encode("latin-1"))
    with pytest.raises(LocomoFormatError, match=rf"{p}: not valid UTF-8 \(byte 19"):
        load_locomo(p)
    p = tmp_path / "deep.json"
    p.write_text("[" * 100_000)
    with pytest.raises(LocomoFormatError, match=rf"{p}: JSON nested too deeply"):
        load_locomo(p)


def test_bad_locomo_writes_nothing(tmp_path, capsys):
    from tsubasa_fast.cli import main

    p = _write(tmp_path, lambda c: _obs(c)["session_3_observation"]["Bob"].append(["", "D3:2"]))
    store = tmp_path / "store"
    assert main(["memory", "ingest", "--store", str(store), "--locomo", str(p), "--source", "observations",
                 "--embedder", "hashing"]) == 2
    assert "empty observation text" in capsys.readouterr().err
    assert not store.exists()
