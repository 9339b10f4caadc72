"""Text helpers shared by the memory and the distillation layers, defined once.

:func:`token_f1` is Mem0 / A-MEM's set-based token F1 (lowercase, every ASCII punctuation
mark to a space, *unique* tokens, F1 of the two sets), the "f1" that eval reports; the
answerability filter of QA synthesis scores its re-answers with the same function.
:func:`verb_base` and :func:`verb_form` are English verb forms from lemminflect's
dictionary (the third-person rewrite, the slot narratives' past tense, the rule writer).
"""

from __future__ import annotations

import string
from typing import Any

__all__ = ["set_tokens", "token_f1", "verb_base", "verb_form", "is_participle", "is_bare_verb",
           "is_inflected_verb", "is_noun"]
# simple past; third person singular present; present participle
_TAGS = {"past": "VBD", "present": "VBZ", "participle": "VBG"}

_PUNCT_TO_SPACE = str.maketrans({c: " " for c in string.punctuation})


def set_tokens(text: Any) -> set[str]:
    """Mem0-style tokens: lowercase, punctuation -> spaces, unique words (None -> no tokens)."""
    return set(("" if text is None else str(text)).lower().translate(_PUNCT_TO_SPACE).split())


def token_f1(prediction: Any, reference: Any) -> float:
    """Set-based token F1 (Mem0 / A-MEM); 0.0 when either side has no tokens."""
    pred, ref = set_tokens(prediction), set_tokens(reference)
    common = len(pred & ref)
    if not pred or not ref or not common:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


def verb_base(word: str, tense: str) -> str | None:
    """The base form of ``word`` when it is a verb form of ``tense`` ("past": ``moved`` -> ``move``,
    ``went`` -> ``go``; "present", third person: ``loves`` -> ``love``; "participle": ``hosting`` ->
    ``host``); None when it is not one
    (``need`` is no past form, ``news`` no verb). Lowercase words."""
    from lemminflect import getAllLemmas, getInflection

    tag = _TAGS[tense]
    for lemma in getAllLemmas(word, "VERB").get("VERB", ()):
        if word in (getInflection(lemma, tag) or ()):
            return lemma
    return None


def verb_form(base: str, tense: str) -> str | None:
    """``base`` in ``tense`` ("past": ``move`` -> ``moved``, ``jog`` -> ``jogged``; "present":
    ``try`` -> ``tries``); a word the dictionary lacks gets lemminflect's regular rules."""
    from lemminflect import getInflection

    forms = getInflection(base, _TAGS[tense])
    return forms[0] if forms else None


def is_participle(word: str) -> bool:
    """``word`` is an -ing verb form: ``hosting`` yes, ``bring`` / ``string`` / ``during`` no; a word the
    dictionary lacks ("zorbing") counts when it ends in "ing" after two letters or more."""
    from lemminflect import getAllLemmas

    word = word.lower()
    if not word.endswith("ing"):
        return False
    if verb_base(word, "participle"):
        return True
    return not getAllLemmas(word) and len(word) > 4 and word not in ("during", "notwithstanding")


def is_bare_verb(word: str) -> bool:
    """``word`` is a verb's base form and nothing else (``bring``, ``go`` is also a noun: no), the
    word that cannot follow "is <name>" in a question ("Where is Jon bring ...?")."""
    from lemminflect import getAllLemmas

    word = word.lower()
    lemmas = getAllLemmas(word)
    return set(lemmas) == {"VERB"} and word in lemmas["VERB"]


# determiners and pronouns: words lemminflect has no lemma for that are no verb either
_CLOSED_CLASS = frozenset("the a an her his their its my our your this that these those them him me us you it "
                          "they she he we i some each every all any no".split())


def can_be_bare_verb(word: str) -> bool:
    """``word`` can be a verb's base form (``show``, ``cover``; also ``go``, a noun too; not
    ``investors``): what may follow a purpose "to" ("to show her work", not "a pitch to investors").
    A word the dictionary lacks ("destress") may be one."""
    from lemminflect import getAllLemmas

    word = word.lower()
    if word in _CLOSED_CLASS:
        return False
    lemmas = getAllLemmas(word)
    return (not lemmas and word.isalpha()) or word in lemmas.get("VERB", ())



def is_inflected_verb(word: str) -> bool:
    """``word`` is an inflected verb form and nothing else (``started``, ``went``; ``loves`` is also a
    noun: no), the word that cannot follow "did <name>" in a question ("What did Jon started?")."""
    from lemminflect import getAllLemmas

    word = word.lower()
    lemmas = getAllLemmas(word)
    return set(lemmas) == {"VERB"} and word not in lemmas["VERB"]


def is_noun(word: str) -> bool:
    """``word`` can be a noun ("crew", also the past of "crow"; "saw"); ``made`` cannot."""
    from lemminflect import getAllLemmas

    return "NOUN" in getAllLemmas(word.lower())
