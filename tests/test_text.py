"""English verb forms (lemminflect behind text.py), checked against hand-written forms."""

import pytest

from tsubasa_fast.text import can_be_bare_verb, is_bare_verb, is_inflected_verb, is_noun, is_participle, verb_base, verb_form


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


@pytest.mark.parametrize("word, participle, bare, inflected", [
    ("hosting", True, False, True), ("bring", False, True, False), ("string", False, False, False),
    ("during", False, False, False), ("zorbing", True, False, False), ("swimming", True, False, False),
    ("started", False, False, True), ("went", False, False, True), ("go", False, False, False),
    ("loves", False, False, False)])
def test_verb_kinds(word, participle, bare, inflected):
    # "zorbing" is in no dictionary (an -ing word of 7 letters counts); "go" and "loves" are nouns too,
    # "string" a noun and a base verb: none is "nothing but" a verb form
    assert (is_participle(word), is_bare_verb(word), is_inflected_verb(word)) == (participle, bare, inflected)


def test_is_noun():
    assert is_noun("crew") and is_noun("saw") and not is_noun("made") and not is_noun("went")


def test_can_be_bare_verb():
    # a base form, also when it is a noun too; an unknown word may be one; a plural noun or a past form is not
    assert can_be_bare_verb("show") and can_be_bare_verb("go") and can_be_bare_verb("destress")
    assert not can_be_bare_verb("investors") and not can_be_bare_verb("went") and not can_be_bare_verb("the")
