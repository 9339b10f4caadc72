"""The malformed-pair check, rule by rule, on pairs a reader judges at a glance."""

import pytest

from tsubasa_fast.distill.pair_check import RULES, pair_problems, support

CTX = "Jon is starting his own dance studio due to his passion for dancing; he hosts a competition in May 2023."


@pytest.mark.parametrize("question,answer,context,user,expected", [
    # well formed: nothing fires
    ("What is the name of Caroline's dog?", "Bo", "Caroline adopted a dog named Bo.", "conv-26:Caroline", []),
    ("When did Caroline move to Denver?", "1 September 2023", "Caroline moved to Denver on 1 September 2023.",
     "Caroline", []),
    ("Where did Caroline move?", "Denver", "Caroline moved to Denver.", "Caroline", []),
    ("How many cats does Maya have?", "three", "Maya has three cats.", "Maya", []),
    ("What is Jon starting?", "his own dance studio", CTX, "Jon", []),
    # the examples of junk, each with the rule it breaks
    ("What did What make?", "a cake", "What made a cake.", "Jon", ["no_user", "garbled"]),
    ("What did You find?", "the perfect spot for your store", "You find the perfect spot for your store.",
     "Jon", ["no_user", "not_third_person", "garbled"]),
    ("Who has Dancing kept?", "Jon", "Dancing has kept Jon going.", "Jon", ["no_user", "garbled"]),
    ("Where is Jon hosting a dance competition?", "May", CTX, "Jon", ["wrong_kind"]),
    ("What does Jon juggle?", "between", "Jon juggles between his studio and his job.", "Jon", ["cut_off"]),
    ("What is Jon starting?", "his own dance studio due", CTX, "Jon", ["cut_off"]),
    ("When did Caroline move?", "Denver", "Caroline moved to Denver.", "Caroline", ["wrong_kind"]),
    ("How many pets does Maya have?", "cats", "Maya has cats.", "Maya", ["wrong_kind"]),
    ("How many cats does Maya have?", "cats", "Maya has cats.", "Maya", ["wrong_kind", "answer_in_question"]),
    ("What does Maya love?", "green tea", "Maya loves coffee.", "Maya", ["unsupported"]),
    ("What does Maya love", "coffee", "Maya loves coffee.", "Maya", ["garbled"]),
    ("What does Maya love?", "?!", "Maya loves coffee.", "Maya", ["empty_answer"]),
    ("What does Maya do?", " ".join(["runs"] * 16), "Maya runs.", "Maya", ["long_answer"]),
    ("What is the name of Jon's dance studio?", "dance studio", CTX, "Jon", ["answer_in_question"]),
    ("Who is Maya's sister?", "her sister Lena", "Maya's sister Lena visits.", "Maya", []),
    # the verb after the user must agree with the auxiliary (only words that are nothing but verbs)
    ("Where is Jon bring more attention?", "his studio", "Jon wants to bring more attention to his studio.", "Jon",
     ["garbled"]),
    ("What did Jon started?", "a studio", "Jon started a studio.", "Jon", ["garbled"]),
    ("What is Jon starting?", "a studio", "Jon is starting a studio.", "Jon", []),
    ("When did Caroline go hiking?", "May 2023", "Caroline went hiking in May 2023.", "Caroline", []),
    # a subject pronoun or a possessive cannot end an answer (except to a whose-question)
    ("What did Caroline show Melanie?", "a painting she", "Caroline showed Melanie a painting she made.",
     "Caroline", ["cut_off"]),
    ("Where did Caroline show interest?", "Melanie's", "Caroline showed interest in Melanie's paintings.",
     "Caroline", ["cut_off"]),
    ("Whose paintings did Caroline like?", "Melanie's", "Caroline liked Melanie's paintings.", "Caroline", []),
    ("What did Melanie mention?", "her family motivates her", "Melanie mentioned that her family motivates her.",
     "Melanie", []),
    # a time of day answers "what time", not "what ... at"
    ("What did Jon catch up at?", "6:46 pm", "Jon caught up at 6:46 pm on 23 July.", "Jon", ["wrong_kind"]),
    ("What time did Jon catch up with Gina?", "6:46 pm", "Jon caught up with Gina at 6:46 pm.", "Jon", []),
    ("What did Jon catch up at?", "9:32 am", "Jon caught up at 9:32 am on 8 February.", "Jon", ["wrong_kind"]),
])
def test_rules(question, answer, context, user, expected):
    got = pair_problems(question, answer, context, user)
    assert got == expected
    assert set(got) <= set(RULES)


def test_support_is_the_share_of_content_words_in_the_context():
    # "green" missing, "tea" missing: 0 of 2; "painting" finds "paints" by its 5-letter prefix
    assert support("green tea", "Maya loves coffee.") == 0.0
    assert support("painting sunsets at dusk", "Melanie paints a sunset.") == pytest.approx(2 / 3)
    assert support("the", "anything") == 1.0


def test_a_day_dated_relative_to_the_context_is_supported():
    # "the day before the conversation" under the 20 January prefix supports the 19th; with no
    # relative day in the context the 19 is a number the context does not hold
    ctx = "[20 January 2023] Jon lost his job as a banker the day before the conversation."
    assert support("19 January 2023", ctx) == 1.0
    assert pair_problems("When did Jon lose his job as a banker?", "19 January 2023", ctx, "Jon") == []
    assert support("19 January 2023", "[20 January 2023] Jon lost his job as a banker.") == pytest.approx(2 / 3)
