"""Grounded extraction: a fact must be supported by the turn it cites; a session with no grounded
fact falls back, counted, to the speaker's utterances in the third person."""

import datetime as dt
import json

from tsubasa_fast.core import Session, Turn
from tsubasa_fast.memory.extraction import ObservationExtractor, is_grounded, third_person, unsupported_words

from .test_evolution import Scripted

DATE = dt.datetime(2023, 3, 5, 18, 40)
TURNS = (
    Turn("Maya", "D1:1", "Good! I just got back from my piano lesson. I have one every Sunday afternoon with Mrs Okafor."),
    Turn("Sam", "D1:2", "How's Miso?"),
    Turn("Maya", "D1:3", "Miso, my ginger cat, is fine. Oh, and my sister Lena is visiting from Edinburgh next month."),
)
SESSION = Session(1, "6:40 pm on 5 March, 2023", DATE, TURNS)


def test_a_fact_copying_its_turn_is_kept_and_an_invented_one_is_dropped():
    turn = TURNS[2].text
    assert is_grounded("Maya's sister Lena is visiting from Edinburgh in April 2023.", turn, "Maya", DATE)
    assert is_grounded("Maya has a ginger cat named Miso.", turn, "Maya", DATE)
    # invented: a dog, a name, a job and a city the turn never mentions
    assert not is_grounded("Maya adopted a dog named Bella.", turn, "Maya", DATE)
    assert not is_grounded("Maya is a nurse in London.", turn, "Maya", DATE)
    # one invented name among supported words is enough to drop it
    assert not is_grounded("Maya's sister Lena is visiting from Glasgow.", turn, "Maya", DATE)
    # a fact with nothing beyond the name says nothing
    assert not is_grounded("Maya is here.", turn, "Maya", DATE)
    assert unsupported_words("Maya adopted a dog named Bella.", turn, "Maya", DATE) == (["adopted", "dog", "bella"], 3)


def test_ungrounded_facts_are_dropped_and_counted():
    reply = json.dumps([{"dia_id": "D1:1", "text": "Maya has piano lessons every Sunday with Mrs Okafor."},
                        {"dia_id": "D1:3", "text": "Maya adopted a dog named Bella."},
                        {"dia_id": "D1:3", "text": "Maya's sister Lena lives in Edinburgh."}])
    ex = ObservationExtractor(Scripted([reply]), min_items=1)
    out = ex.extract(SESSION, "Maya")
    assert [e.text for e in out] == ["Maya has piano lessons every Sunday with Mrs Okafor.",
                                     "Maya's sister Lena lives in Edinburgh."]
    assert ex.stats["ungrounded"] == 1 and ex.stats["fallback_sessions"] == 0 and ex.stats["observations"] == 2
    assert ex.ungrounded_examples == [{"dia_id": "D1:3", "text": "Maya adopted a dog named Bella.", "session": 1}]


def test_no_grounded_fact_falls_back_to_third_person_utterances():
    reply = json.dumps([{"dia_id": "D1:1", "text": "Maya won a tennis match in Paris."},
                        {"dia_id": "D1:3", "text": "Maya adopted a dog named Bella."}])
    ex = ObservationExtractor(Scripted([reply]), min_items=1)
    out = ex.extract(SESSION, "Maya")
    assert [(e.text, e.dia_ids) for e in out] == [
        ("Good! Maya just got back from Maya's piano lesson. Maya has one every Sunday afternoon with Mrs Okafor.",
         ("D1:1",)),
        ("Miso, Maya's ginger cat, is fine. Oh, and Maya's sister Lena is visiting from Edinburgh next month.",
         ("D1:3",))]
    assert ex.stats["ungrounded"] == 2 and ex.stats["fallback_sessions"] == 1
    assert ex.stats["fallback_observations"] == 2 and ex.stats["observations"] == 2
    off = ObservationExtractor(Scripted([reply]), min_items=1, fallback=False)
    assert off.extract(SESSION, "Maya") == [] and off.stats["fallback_sessions"] == 0


def test_third_person_rewrite():
    cases = [
        ("I'm bored of the spreadsheets.", "Maya is bored of the spreadsheets."),
        ("I hate running, I'd rather walk.", "Maya hates running, Maya would rather walk."),
        ("I still don't run.", "Maya still doesn't run."),
        ("I already applied! I finished a course and I watch films.",
         "Maya already applied! Maya finished a course and Maya watches films."),
        ("I've moved. Want to help me with my boxes? Your van?",
         "Maya has moved. Want to help Maya with Maya's boxes? Sam's van?"),
        ("I can't wait, I go there and I try.", "Maya can't wait, Maya goes there and Maya tries."),
        ("I need a break and I miss my old team.", "Maya needs a break and Maya misses Maya's old team."),
        ("You're kind, you've helped and you'll see. Is it yours?",
         "Sam is kind, Sam has helped and Sam will see. Is it Sam's?"),
    ]
    for said, expected in cases:
        assert third_person(said, "Maya", "Sam") == expected, said
    assert third_person("Do you like it?", "Maya") == "Do you like it?"  # no other speaker given


class BatchChat:
    """A constrained chat stand-in: answers each prompt of a batch with the facts scripted for its session date."""

    def __init__(self, by_date):
        self.by_date, self.batches = by_date, []

    def structured_batch(self, batch, schemas, max_new_tokens=None, **gen):
        self.batches.append(len(batch))
        return [next(v for k, v in self.by_date.items() if k in m[-1]["content"]) for m in batch]

    def structured(self, messages, schema, max_new_tokens=None, **gen):
        return self.structured_batch([messages], [schema], max_new_tokens, **gen)[0]


def test_prefetch_extracts_sessions_in_one_batch():
    later = Session(2, "6:40 pm on 6 March, 2023", dt.datetime(2023, 3, 6, 18, 40),
                    (Turn("Maya", "D2:1", "I booked a trip to Lisbon."),))
    chat = BatchChat({"5 March 2023": [{"dia_id": "D1:3", "text": "Maya has a ginger cat named Miso."}],
                      "6 March 2023": [{"dia_id": "D2:1", "text": "Maya booked a trip to Lisbon."}]})
    ex = ObservationExtractor(chat, min_items=1)
    assert ex.prefetch([SESSION, later], "Maya") == 2 and chat.batches == [2]
    assert [e.text for e in ex.extract(SESSION, "Maya")] == ["Maya has a ginger cat named Miso."]
    assert [e.text for e in ex.extract(later, "Maya")] == ["Maya booked a trip to Lisbon."]
    assert chat.batches == [2] and ex.stats["constrained"] == 2 and ex.stats["observations"] == 2
    ex.extract(later, "Maya")  # not prefetched any more: asked on its own
    assert chat.batches == [2, 1]
