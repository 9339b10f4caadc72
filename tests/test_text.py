"""English verb forms (lemminflect behind text.py), checked against hand-written forms."""

import pytest

from tsubasa_fast.text import verb_base, verb_form


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
