"""Slot reading of observation sentences, against hand-written expectations."""

import pytest

from tsubasa_fast.memory.slots import (extract_slots, informative, past_tense, render, segments, stem,
                                       subject_of)


def _slots(text):
    return sorted(str(s) for s in extract_slots(text))


@pytest.mark.parametrize("text, expected", [
    ("Maya has 2 cats.", ["count(cat)[maya]{n=2}"]),
    ("Lena has three children now.", ["count(child)[lena]{n=3}"]),
    ("Hiro adopted a third rabbit.", ["count(rabbit)[hiro]{n=3}"]),
    ("Maya loves running.", ["preference(run)[maya]{polarity=+}"]),
    ("Maya hates running.", ["preference(run)[maya]{polarity=-}"]),
    ("Maya moved to Bristol for a new job.", ["residence[maya]{place=Bristol}"]),
    ("Tomas moved from Madrid to Lisbon.", ["residence[tomas]{place=Lisbon}"]),
    ("Maya's sister lives in York.", ["residence[maya's sister]{place=York}"]),
    ("Maya quit her job as a nurse.", ["job[maya]{active=no, role=nurse}"]),
    ("Daniel works at Google as a software engineer.",
     ["job[daniel]{active=yes, employer=Google, role=software engineer}"]),
    ("Maya goes swimming every morning.", ["habit(swim)[maya]{active=yes, freq=every morning}"]),
    ("Yuki goes to the gym twice a week.", ["habit(gym)[yuki]{active=yes, freq=twice a week}"]),
    ("Tariq no longer volunteers at the animal shelter.", ["habit(volunteer)[tariq]{active=no}"]),
    ("Emma and Liam got engaged.", ["relationship[emma]{partner=Liam, status=engaged}"]),
    ("Carlos divorced Ana.", ["relationship[carlos]{partner=Ana, status=divorced}"]),
    ("Leo started eating meat again.", ["diet[leo]{diet=omnivore}"]),
    ("Chloe became vegan.", ["diet[chloe]{diet=vegan}"]),
    ("Sam graduated from Leeds University.", ["education[sam]{school=Leeds University, status=graduated}"]),
    ("Ruth's favourite band is now Arctic Monkeys.", ["favorite(band)[ruth]{value=Arctic Monkeys}"]),
    ("Mila turned 30.", ["age[mila]{n=30}"]),
    ("Caroline attended an LGBTQ+ pride parade last week and felt a sense of belonging.", []),
    # a reconciled memory yields its current state only
    ("Priya lived in Manchester (14 January 2023); Priya moved to Glasgow (5 June 2023).",
     ["residence[priya]{place=Glasgow}"]),
])
def test_extract_slots(text, expected):
    assert _slots(text) == expected


def test_slot_conflicts_and_matches():
    (a,), (b,), (c,) = extract_slots("Maya has 2 cats."), extract_slots("Maya has 3 cats."), extract_slots(
        "Maya has 2 dogs.")
    assert a.same_slot(b) and a.conflicts(b)
    assert not a.same_slot(c)
    (w,), (q,) = extract_slots("Ines works as a nurse."), extract_slots("Ines works at St Thomas' Hospital.")
    assert w.same_slot(q) and not w.conflicts(q)  # role and employer: detail, not a change
    (s,), (m,) = extract_slots("Maya's sister lives in York."), extract_slots("Maya lives in Leeds.")
    assert not s.same_slot(m)


def test_text_helpers():
    assert past_tense("Maya lives in Leeds") == "Maya lived in Leeds"
    assert past_tense("Maya now has 2 cats") == "Maya had 2 cats"
    assert past_tense("Ben likes jazz music") == "Ben liked jazz music"
    assert past_tense("Yuki goes to the gym every day") == "Yuki went to the gym every day"
    assert past_tense("Maya moved to Bristol") == "Maya moved to Bristol"
    assert subject_of("In June 2023, Priya moved to Glasgow.") == "priya"
    assert subject_of("She moved to Glasgow.") is None
    assert [stem(w) for w in ("running", "runs", "jogging", "kids", "puppies")] == ["run", "run", "run", "child",
                                                                                    "dog"]
    segs = segments("Priya lived in Manchester (14 January 2023); Priya moved to Glasgow (5 June 2023, 7 July 2023).")
    assert [(s.dates, s.clause) for s in segs] == [(["14 January 2023"], "Priya lived in Manchester"),
                                                   (["5 June 2023", "7 July 2023"], "Priya moved to Glasgow")]
    assert render(segs) == ("Priya lived in Manchester (14 January 2023); "
                            "Priya moved to Glasgow (5 June 2023, 7 July 2023).")
    assert segments("Ann plays tennis.", "2023-05-08")[0].dates == ["8 May 2023"]
    assert informative("Maya has 3 cats and met Tom in Leeds.") == {"3", "tom", "leeds"}
