"""The shared distillation stages: synthesis over several users, its report and its error."""

import json

import pytest

from tsubasa_fast.distill.stages import QA_FILE, QA_REPORT, save_qa, synth_stage
from tsubasa_fast.distill.synth import SynthConfig, synthesize
from tsubasa_fast.errors import StageError

from .conftest import observation_store

FACTS = {"c:Ann": ["Ann adopted a puppy named Rex in May 2023.", "Ann works as a nurse in Leeds."],
         "c:Bob": ["Bob plays the guitar every Sunday.", "Bob moved to Bristol in June 2023."]}


@pytest.fixture
def store(tmp_path):
    s = observation_store(tmp_path / "st", FACTS)
    yield s
    s.close()


def test_synth_stage_sums_its_users(store, tmp_path):
    cfg = SynthConfig(generator="rule", check_answerable=False)
    pairs, report = synth_stage(store, list(FACTS), None, cfg)
    alone = {u: synthesize(store, u, None, cfg) for u in FACTS}
    assert pairs == [p for u in FACTS for p in alone[u][0]] and len(pairs) >= 2
    assert report["kept"] == len(pairs) == sum(r["kept"] for _, r in alone.values())
    assert report["generated"] == sum(r["generated"] for _, r in alone.values())
    for k in alone["c:Ann"][1]["dropped"]:
        assert report["dropped"][k] == sum(r["dropped"][k] for _, r in alone.values())
    assert set(report["users"]) == set(FACTS)
    save_qa(tmp_path / "run", pairs, report)
    lines = (tmp_path / "run" / QA_FILE).read_text().splitlines()
    assert [json.loads(l) for l in lines] == pairs
    assert json.loads((tmp_path / "run" / QA_REPORT).read_text())["kept"] == len(pairs)


def test_synth_stage_with_nothing_kept_is_an_error(store):
    store.add("c:Cy", "Thanks, that means a lot.", observed_at="2023-06-01", op_key="cy", source={"kind": "observations"})
    with pytest.raises(StageError, match="no synthesised QA pair survived.*nothing to distil"):
        synth_stage(store, ["c:Cy"], None, SynthConfig(generator="rule", check_answerable=False))
