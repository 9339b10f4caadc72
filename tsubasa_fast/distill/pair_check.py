"""The malformed-pair check: is a synthesised QA pair one you would ask a person?

A pair is malformed when any rule below fires; :func:`pair_problems` names each one. The
rules are what a reader rejects at a glance, stated so that a program can apply them:

* ``empty_answer``: the answer has no letter or digit.
* ``long_answer``: the answer has more than ``max_words`` words (default 15).
* ``no_user``: the question does not name the user (first name, or the full name).
* ``not_third_person``: the question says I / me / my / we / our / you / your: the student
  is asked about the user, never by them.
* ``garbled``: the question's subject slot ("What did ___ ...", "Who has ___ ...") holds
  neither the user nor an article or possessive ("What did What make?", "Who has Dancing
  kept?"), the verb after the user does not agree with the auxiliary before it (a bare verb
  after is / was: "Where is Jon bring more attention?"; an inflected one after do / did:
  "What did Jon started?"; only words that are nothing but verbs, by lemminflect's
  dictionary), or the question does not end with "?".
* ``cut_off``: the answer ends in a word that cannot end a phrase (an article, possessive,
  preposition, conjunction, auxiliary or subject pronoun: "his own dance studio due", "between",
  "a pottery plate she"; not "her", an object as often as a determiner: "a gift for her"), or in
  a possessive noun outside a whose-question ("Melanie's").
* ``unsupported``: fewer than ``min_support`` of the answer's content words occur in the
  context (prefix match on 5 letters, so "painting" finds "paint"); a day of the month counts
  as found when the context dates a day relative to its own date ("yesterday", "the day before
  the conversation" under a ``[20 January 2023]`` prefix support "19 January 2023").
* ``wrong_kind``: a when-question whose answer holds no time expression; a where-, who- or
  what-question (other than "what date / day / time ...") answered by a time expression only
  ("Where ...? -> May", "What did Jon catch up at? -> 6:46 pm"); a how-many question whose
  answer holds no number.
* ``answer_in_question``: every content word of the answer is already in the question
  ("What is the name of Jon's dance studio? -> dance studio"): nothing is asked.
"""

from __future__ import annotations

import re

from ..text import is_bare_verb, is_inflected_verb

RULES = ("empty_answer", "long_answer", "no_user", "not_third_person", "garbled", "cut_off",
         "unsupported", "wrong_kind", "answer_in_question")

_FIRST_SECOND = re.compile(r"\b(i|me|my|mine|myself|we|us|our|ours|you|your|yours|yourself)\b", re.I)
_SUBJECT = re.compile(r"^\s*(?:what|where|when|who|whom|why|how|which)\s+"
                      r"(?:did|does|do|is|was|are|were|has|had|have|will|would|can|could)\s+([\w'’-]+)", re.I)
_SUBJECT_OK = {"the", "a", "an", "his", "her", "their", "its", "this", "that", "these", "those", "some"}
_CANNOT_END = frozenset(
    "a an the his their its my your our to of in on at for with by from into onto about as than "
    "and or but nor because due between while whereas although though if that which who whom whose "
    "is are was were be been being has have had do does did will would can could should might must "
    "very so such more most less some any each every no not she he they we".split())  # not "may": a month
_MONTHS = ("january february march april may june july august september october november december "
           "jan feb mar apr jun jul aug sep sept oct nov dec").split()
_TIME_WORDS = set(_MONTHS) | set(
    "monday tuesday wednesday thursday friday saturday sunday weekend week weeks month months year "
    "years day days today yesterday tomorrow tonight morning afternoon evening night ago last next "
    "recently lately since before after during summer winter spring autumn fall christmas "
    "birthday holiday holidays hour hours minute minutes decade century earlier later soon am pm".split())
_NUMBER_WORDS = set("one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
                    "fifteen twenty thirty forty fifty hundred thousand dozen a couple few several".split())
_CONTENT_SKIP = frozenset(
    "is are was were be been being to of in on at for with by from and or but her his their its she he "
    "they it i you we my our your this that these those as into about a an the".split())


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def _has_time(words: list[str]) -> bool:
    return any(w in _TIME_WORDS or re.fullmatch(r"\d{1,4}(?:st|nd|rd|th|s)?", w) for w in words)


def _only_time(words: list[str]) -> bool:
    content = [w for w in words if w not in _CONTENT_SKIP]
    return bool(content) and all(w in _TIME_WORDS or re.fullmatch(r"\d{1,4}(?:st|nd|rd|th|s)?", w)
                                 for w in content)


_RELATIVE_DAY = re.compile(r"\b(yesterday|tomorrow|the day (?:before|after))\b", re.I)


def support(answer: str, context: str) -> float:
    """Share of the answer's content words found in the context (1.0 when it has none)."""
    words = [w for w in _words(answer) if w not in _CONTENT_SKIP]
    if not words:
        return 1.0
    ctx = _words(context)
    stems = {w[:5] for w in ctx}
    derived_day = bool(_RELATIVE_DAY.search(context))
    return sum(1 for w in words if w in ctx or w[:5] in stems
               or (derived_day and w.isdigit() and 1 <= int(w) <= 31)) / len(words)


def _disagrees(question: str, first: str) -> bool:
    """The verb after the user does not fit the auxiliary before it ("is Jon bring", "did Jon went")."""
    m = re.match(rf"\s*(?i:what|where|when|who|whom|why|how|which)(?:\s+[\w'-]+){{0,3}}?\s+"
                 rf"(?i:(is|are|was|were|do|does|did))\s+{re.escape(first)}(?:\s+[A-Z][\w'-]*)*\s+([a-z]+)\b",
                 question)
    if m is None:
        return False
    aux, verb = m.group(1).lower(), m.group(2)
    return is_bare_verb(verb) if aux in ("is", "are", "was", "were") else is_inflected_verb(verb)


def first_name(user: str) -> str:
    """The first name in a user id: "conv-26:Caroline" -> "Caroline", "Maya Lee" -> "Maya"."""
    name = user.rpartition(":")[2].strip()
    return name.split()[0] if name.split() else name


def pair_problems(question: str, answer: str, context: str, user: str, *, max_words: int = 15,
                  min_support: float = 0.75) -> list[str]:
    """The rules (see the module docstring) that ``(question, answer)`` breaks; [] when well formed.

    ``user`` is the user's name as the memories write it ("Caroline"; a store id such as
    "conv-26:Caroline" is accepted and its last part used).
    """
    first = first_name(user)
    q, a = question.strip(), answer.strip()
    aw = _words(a)
    problems = []
    if not aw:
        problems.append("empty_answer")
    if len(a.split()) > max_words:
        problems.append("long_answer")
    if not re.search(rf"\b{re.escape(first)}\b", q, re.I):
        problems.append("no_user")
    if _FIRST_SECOND.search(q):
        problems.append("not_third_person")
    m = _SUBJECT.match(q)
    subject = m.group(1).lower().replace("’", "'") if m else None
    if not q.endswith("?") or (subject is not None and subject not in _SUBJECT_OK
                                and not subject.startswith(first.lower())) or _disagrees(q, first):
        problems.append("garbled")
    if aw and (aw[-1] in _CANNOT_END or (aw[-1].endswith("'s") and not re.match(r"\s*whose\b", q, re.I))):
        problems.append("cut_off")
    if aw and support(a, context) < min_support:
        problems.append("unsupported")
    lead = q.lower()
    time_question = re.match(r"\s*(when|what (date|day|month|year|time)|which (date|day|month|year)|how long ago)\b",
                             lead)
    if aw and ((time_question and not _has_time(aw))
               or (re.match(r"\s*(where|who|whom|what)\b", lead) and not time_question and _only_time(aw))
               or (re.match(r"\s*how many\b", lead)
                   and not any(w.isdigit() or w in _NUMBER_WORDS for w in aw))):
        problems.append("wrong_kind")
    content = [w for w in aw if w not in _CONTENT_SKIP and w != first.lower()]
    qwords = set(_words(q))
    if content and all(w in qwords for w in content):
        problems.append("answer_in_question")
    return problems
