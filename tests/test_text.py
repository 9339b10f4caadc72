"""English verb forms (lemminflect behind text.py), checked against hand-written forms."""

import pytest

from tsubasa_fast.text import is_finite_verb, verb_base, verb_form


@pytest.mark.parametrize("word, tense, base", [
    ("moved", "past", "move"), ("went", "past", "go"), ("stopped", "past", "stop"), ("cried", "past", "cry"),
    ("need", "past", None), ("red", "past", None), ("loves", "present", "love"), ("goes", "present", "go"),
    ("watches", "present", "watch"), ("tries", "present", "try"), ("news", "present", None),
    ("moved", "present", None)])
def test_verb_base(word, tense, base):
    assert verb_base(word, tense) == base


@pytest.mark.parametrize("base, tense, form", [
    ("live", "past", "lived"), ("jog", "past", "jogged"), ("teach", "past", "taught"), ("go", "past", "went"),
    ("try", "present", "tries"), ("have", "present", "has"), ("miss", "present", "misses"),
    ("do", "present", "does")])
def test_verb_form(base, tense, form):
    assert verb_form(base, tense) == form


def test_finite_verbs_are_not_plural_nouns():
    assert is_finite_verb("watched") and is_finite_verb("includes") and is_finite_verb("believes")
    assert not is_finite_verb("plans") and not is_finite_verb("kids") and not is_finite_verb("camping")
