"""Self-learning data (TSUBASA wing 2, step 1): factoid QA pairs written from a user's memories.

For each group of ``group_size`` live memories of a user, a question writer produces short
question-answer pairs that keep their provenance (the observation text(s) as ``context``,
the record ids, dia_ids and observed_at). Two writers behind one interface:

* ``llm`` (the paper): the base LLM, any ``chat(messages) -> str`` callable (e.g.
  :class:`tsubasa_fast.llm.ChatLM`), prompted with one worked example. Its reply is parsed
  tolerantly: a JSON list / object, or ``Q: ... A: ...`` lines (SmolLM2-135M rarely writes
  valid JSON). A reply with no usable pair is counted as malformed and skipped, never fatal.
* ``rule`` (ours, METHOD.md: the pipeline degrades gracefully with small models or no LLM):
  deterministic templates over an observation's subject / verb / object / date / place.

Filters, applied in this order and each counted in the report: answers longer than
``max_answer_words``; questions about when a conversation took place; duplicates (a
normalised question already kept, from any observation: one question with several answers
would teach the student a coin toss); malformed pairs (:mod:`.pair_check`: the question must
name the user in the third person, the answer must be short, complete, supported by the
context and of the kind the question asks for; each broken rule is counted); pairs the model
cannot answer from their own context
(the model is re-asked with the context + question and its reply is compared with the
pair's answer by token F1 against ``f1_threshold``; ours: the F1 of both sides without the
question's own words also counts, so a reply restating the question is scored on what it
adds; a re-ask that fails is counted as an error, not as unanswerable). The last one needs an
LLM: with the rule writer and no LLM it is skipped, and the skipped pairs are counted.

The synthesis prompts live here, not in :mod:`.prompts` (that module holds the versioned
teacher / student formats that go into the teacher cache's manifest).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import string
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..errors import InputError
from ..fileio import atomic_write_text
from ..memory.store import MemoryStore, Record
from ..progress import progress_bar
from ..text import token_f1, verb_base
from .configs import GENERATORS, SynthConfig  # noqa: F401 (re-exported)
from .data import pair_key
from .pair_check import RULES as PAIR_RULES
from .pair_check import pair_problems

log = logging.getLogger(__name__)

ChatFn = Callable[[list[dict]], str]
SYNTH_VERSION = "tsubasa-synth-1"


# --------------------------------------------------------------------------- text utils
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation + "\u2018\u2019\u201c\u201d")


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = str(text).lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


_CONVERSATION = re.compile(
    r"\b(conversations?|chats?|sessions?|dialogues?|discussions?|this talk|the talk|their talk|"
    r"(talk|talked|talking|speak|spoke|spoken|chat|chatted|chatting|message|messaged)\s+(to|with))\b", re.I)
_WHEN = re.compile(r"\b(when|what (date|day|time|month|year)|which (date|day|month|year)|how long ago)\b", re.I)


_FUNCTION_WORDS = frozenset(
    "is are was were be been being to of in on at for with by from and or but her his their its "
    "she he they it i you we my our your this that these those as into about".split())


def context_overlap(answer: str, context: str) -> float:
    """Share of the answer's content words that occur in the context (prefix match on the
    first 5 letters, so "painting" finds "paint"); 1.0 for an answer of function words only."""
    words = [w for w in normalize_answer(answer).split() if w not in _FUNCTION_WORDS]
    if not words:
        return 1.0
    ctx = normalize_answer(context).split()
    stems = {w[:5] for w in ctx}
    found = sum(1 for w in words if w in ctx or w[:5] in stems)
    return found / len(words)


def answer_f1(reply: str, answer: str, question: str, strip_question_words: bool = True) -> float:
    """Token F1 of a re-answer against the pair's answer.

    With ``strip_question_words`` (ours) it is the larger of the plain F1 and the F1 after
    removing, from both sides, the words that also occur in the question, so a reply that
    restates the question ("Caroline's favorite hobby is music") is scored on what it adds.
    """
    plain = token_f1(reply, answer)
    if not strip_question_words:
        return plain
    qwords = set(normalize_answer(question).split())
    r = " ".join(w for w in normalize_answer(reply).split() if w not in qwords)
    a = " ".join(w for w in normalize_answer(answer).split() if w not in qwords)
    return max(plain, token_f1(r, a)) if r and a else plain


def is_conversation_time_question(question: str) -> bool:
    """True for uninformative questions about when a conversation / chat / session happened."""
    return bool(_WHEN.search(question) and _CONVERSATION.search(question))


def normalize_question(question: str) -> str:
    """The duplicate key of a question."""
    return normalize_answer(question)


# ----------------------------------------------------------------------------- parsing
_PREAMBLE = re.compile(r"^\s*(the\s+)?(short\s+)?(answer|a)\s*(to (the|this) question)?\s*(is|:)\s*:?\s*", re.I)


def clean_reply_answer(reply: str) -> str:
    """The answer in a re-ask reply: first non-empty line, common preambles removed."""
    line = next((ln.strip() for ln in str(reply).splitlines() if ln.strip()), "")
    line = _PREAMBLE.sub("", line)
    return line.strip().strip('"').strip()


def _pairs_from_json(obj) -> list[tuple[str, str]] | None:
    if isinstance(obj, dict):
        for key in ("pairs", "questions", "qa", "items"):
            if isinstance(obj.get(key), list):
                return _pairs_from_json(obj[key])
        obj = [obj]
    if not isinstance(obj, list):
        return None
    out = []
    for item in obj:
        if not isinstance(item, dict):
            out.append(("", ""))  # counted as a malformed item
            continue
        low = {str(k).lower(): v for k, v in item.items()}
        q = low.get("question", low.get("q"))
        a = low.get("answer", low.get("a"))
        out.append((str(q) if isinstance(q, (str, int, float)) else "",
                    str(a) if isinstance(a, (str, int, float)) else ""))
    return out


_QLINE = re.compile(r"^\s*(?:[-*\d.)\s]*)?(?:q(?:uestion)?\s*\d*\s*[:.)-])\s*(?:question\s*:\s*)?(.*)$", re.I)
_ALINE = re.compile(r"^\s*(?:[-*\s]*)?(?:a(?:nswer)?\s*\d*\s*[:.)-])\s*(?:answer\s*:\s*)?(.*)$", re.I)


def _pairs_from_lines(reply: str) -> list[tuple[str, str]]:
    out, question = [], None
    for line in reply.splitlines():
        mq, ma = _QLINE.match(line), _ALINE.match(line)
        if mq and mq.group(1).strip():
            if question is not None:
                out.append((question, ""))  # a question without an answer
            question = mq.group(1).strip()
            # "Q: ... A: ..." on one line
            inline = re.split(r"\s+A(?:nswer)?\s*:\s*", question, maxsplit=1)
            if len(inline) == 2 and inline[1].strip():
                out.append((inline[0].strip(), inline[1].strip()))
                question = None
        elif ma and question is not None:
            out.append((question, ma.group(1).strip()))
            question = None
    if question is not None:
        out.append((question, ""))
    return out


def parse_pairs(reply: str) -> tuple[list[tuple[str, str]], int]:
    """``(pairs, malformed_items)`` from a generation: JSON list/object, else Q:/A: lines.

    A pair is kept only when both its question and answer are non-empty; items missing
    one of them are counted as malformed. An empty list means the reply is malformed.
    """
    reply = str(reply or "")
    items = None
    for pattern in (r"\[.*\]", r"\{.*\}"):
        m = re.search(pattern, reply, re.S)
        if m:
            try:
                items = _pairs_from_json(json.loads(m.group(0)))
            except (json.JSONDecodeError, ValueError):
                items = None
            if items:
                break
    if not items:
        items = _pairs_from_lines(reply)
    good, bad = [], 0
    for q, a in items:
        q, a = " ".join(q.split()).strip(), " ".join(a.split()).strip().strip('"').strip()
        if q and a and normalize_answer(a):
            good.append((q if q.endswith("?") else q.rstrip(".") + "?", a.rstrip(".")))
        else:
            bad += 1
    return good, bad


# ------------------------------------------------------------------------------ prompts
GEN_SYSTEM = ("You write quiz questions about a person from facts about them. Each question asks "
              "about one detail of the facts; each answer is a short phrase copied from the facts.")
_GEN_EXAMPLE_FACTS = ["Melanie adopted a dog named Luna in March 2023 after she moved to Denver."]
_GEN_EXAMPLE_REPLY = ("Q: What is the name of Melanie's dog?\nA: Luna\n"
                      "Q: Where did Melanie move?\nA: Denver")

ANSWER_SYSTEM = "Answer the question from the facts with a short phrase copied from them. No sentence."
# The worked example's answer is a common noun: with a name ("Luna") SmolLM2-135M copied it into
# most replies; with no example it wrote long, invented sentences.
_ANSWER_EXAMPLE = ("Facts:\n- Tom bakes bread with his daughter every Sunday morning.\n\n"
                   "Question: What does Tom bake?", "bread")


def _facts_block(texts: Sequence[str]) -> str:
    return "Facts:\n" + "\n".join(f"- {t}" for t in texts)


def generation_messages(texts: Sequence[str], n_pairs: int) -> list[dict]:
    """Prompt asking for ``n_pairs`` question-answer pairs about the given observations."""
    ask = f"Write {n_pairs} questions with short answers, as Q: and A: lines."
    return [{"role": "system", "content": GEN_SYSTEM},
            {"role": "user", "content": f"{_facts_block(_GEN_EXAMPLE_FACTS)}\n\n{ask}"},
            {"role": "assistant", "content": _GEN_EXAMPLE_REPLY},
            {"role": "user", "content": f"{_facts_block(texts)}\n\n{ask}"}]


def answer_messages(context: str, question: str) -> list[dict]:
    """Prompt re-asking a question with its source context (the answerability filter)."""
    lines = [ln for ln in context.splitlines() if ln.strip()] or [context]
    return [{"role": "system", "content": ANSWER_SYSTEM},
            {"role": "user", "content": _ANSWER_EXAMPLE[0]},
            {"role": "assistant", "content": _ANSWER_EXAMPLE[1]},
            {"role": "user", "content": f"{_facts_block(lines)}\n\nQuestion: {question}"}]


def _call(chat: ChatFn, messages: list[dict], max_new_tokens: int) -> str:
    """Call ``chat``, passing ``max_new_tokens`` only when it accepts it."""
    try:
        params = inspect.signature(chat).parameters
    except (TypeError, ValueError):
        params = {}
    if "max_new_tokens" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return str(chat(messages, max_new_tokens=max_new_tokens))
    return str(chat(messages))


# ------------------------------------------------------------------- rule question writer
_ING_NOUNS = {"meeting", "painting", "counseling", "counselling", "building", "clothing", "wedding",
              "evening", "morning", "reading", "writing", "camping", "hiking", "swimming", "dancing",
              "training", "recording", "gathering", "feeling", "setting", "thing", "string", "ring",
              "spring", "king", "wing", "earring", "pudding", "opening", "ending", "beginning",
              "sibling", "drawing", "landing", "parking", "housing", "learning", "fundraising"}
_NOT_VERBS = {"need", "red", "bed", "seed", "feed", "speed", "bred", "shed", "led", "wed",
              "bus", "is", "was", "has", "this", "his", "its", "as", "us", "yes", "always",
              "sometimes", "perhaps", "news", "series", "kids", "friends", "parents", "interested",
              "excited", "proud", "determined", "inspired", "thankful", "grateful", "happy"}
_CLAUSE_VERBS = {"believe", "think", "feel", "say", "mention", "hope", "know", "realize", "realise",
                 "express", "explain", "share", "admit", "wish", "find", "see", "describe", "consider"}
_MOTION = {"go", "move", "travel", "come", "return", "head", "fly", "drive", "walk", "run", "relocate"}
_PARTICLES = {"into", "for", "at", "after", "about", "forward", "on", "up", "with", "in", "to", "as"}
_EMPTY_OBJECTS = {"time", "it", "this", "that", "herself", "himself", "themselves", "itself",
                  "something", "things", "them", "her", "him", "one", "more", "much"}
_BOUNDARY = {"in", "on", "at", "for", "with", "from", "because", "since", "after", "before",
             "during", "as", "which", "that", "who", "while", "when", "where", "and", "but", "by",
             "to", "through", "about", "despite", "although", "so", "whose", "like", "including",
             "into", "than", "until", "via", "over", "around", "together", "even", "especially",
             "towards", "toward", "across", "among", "without", "within", "upon", "against"}
_KEEP_BEFORE_VERBAL = {"of", "a", "an", "the", "her", "his", "their", "my", "our", "its"}
_CLAUSE_END = {"because", "since", "while", "which", "who", "so", "as", "although", "but", "especially"}
_DETERMINERS = {"a", "an", "the", "her", "his", "their", "my", "our", "its", "some", "this", "that", "these"}
_TRAILING = _DETERMINERS | {"of", "and", "or", "to", "with", "for", "in", "on", "at"}
_ADVERBS = {"currently", "recently", "also", "still", "now", "often", "usually", "really", "always",
            "sometimes", "finally", "just", "once", "regularly", "even", "actively", "frequently"}
_MONTHS = "January February March April May June July August September October November December"
_DATE = re.compile(
    r"\b(?:(?:on|in|around|since|by)\s+)?((?:the (?:week|weekend|month) (?:before|after|of)\s+)?"
    r"(?:\d{1,2}\s+)?(?:" + _MONTHS.replace(" ", "|") +
    r")(?:\s+\d{1,2})?,?\s+\d{4}|\d{4}-\d{2}-\d{2}|(?<!\d)(?:19|20)\d{2}(?!\d))\b")
_LEAD_DATE = re.compile(r"^\s*On\s+([^,]{4,40}?),?\s+(?=[A-Z])")
_REL_TIME = re.compile(
    r"\b(recently|lately|last \w+|(?:a few|several|some|\w+) (?:years?|months?|weeks?|days?) ago|"
    r"this (?:week|month|year|weekend)|the (?:previous|next|following) \w+|over the weekend|"
    r"yesterday|today|tomorrow|next \w+)\b.*$", re.I)
_WORD = re.compile(r"(?<![A-Za-z])'[^']{1,60}'(?![A-Za-z])|\"[^\"]{1,60}\"|"
                   r"[A-Za-z][\w'\-+/]*|\d+(?:[.,:]\d+)*|[^\sA-Za-z\d]")


def _lemma_past(word: str) -> str | None:
    """Base form of a simple-past verb (``moved`` -> ``move``); None if it is not one."""
    w = word.lower()
    return None if w in _NOT_VERBS else verb_base(w, "past")


def _lemma_present(word: str) -> str | None:
    """Base form of a third-person present verb (``loves`` -> ``love``); None if not one."""
    w = word.lower()
    return None if w in _NOT_VERBS else verb_base(w, "present")


def _join(tokens: Sequence[str]) -> str:
    text = " ".join(tokens)
    text = re.sub(r"\s+([,.;:!?)])", r"\1", text)
    text = re.sub(r"([(])\s+", r"\1", text)
    return re.sub(r"\s+'s\b", "'s", text).strip()


def _trim(out: list[str]) -> list[str]:
    while out and out[-1].lower() in _TRAILING:
        out.pop()
    return out


def _phrase(tokens: Sequence[str], max_words: int) -> tuple[str, int]:
    """Leading noun phrase of ``tokens`` (up to a comma, clause, preposition or a participle
    after a noun) and the number of tokens it used; ``("", 0)`` when empty or too long."""
    out: list[str] = []
    for i, t in enumerate(tokens):
        low = t.lower()
        if t in (",", ";", ".", ":", "!", "?", "(", ")"):
            break
        if low in _BOUNDARY:
            if i == 0:
                return "", 0
            break
        if i > 0 and (low.endswith(("ing", "ed")) or _lemma_past(low)) and t[:1].islower() and \
                tokens[i - 1].lower() not in _KEEP_BEFORE_VERBAL and low not in _ING_NOUNS and \
                low not in ("red", "bed", "need", "seed", "speed"):
            break
        out.append(t)
    n = len(out)
    out = _trim(out)
    text = _REL_TIME.sub("", _join(out)).strip()
    if not text or len(text.split()) > max_words:
        return "", 0
    return text, n


def _clause_object(tokens: Sequence[str], max_words: int) -> str:
    """The rest of a clause after a verb of saying / feeling (``that`` dropped)."""
    out: list[str] = []
    for i, t in enumerate(tokens):
        if t in (",", ";", ".", ":", "!", "?") or (i > 0 and t.lower() in _CLAUSE_END):
            break
        out.append(t)
    if out and out[0].lower() == "that":
        out = out[1:]
    out = _trim(out)
    return _join(out) if 0 < len(out) <= max_words else ""


def _clauses(text: str) -> list[tuple[str, str | None]]:
    """Sentences / merged-update clauses of a memory, each with a leading "On <date>" removed."""
    out = []
    for part in re.split(r";\s+|(?<=[.!?])\s+(?=[A-Z])", text):
        part = part.strip().rstrip(".")
        if not part:
            continue
        date = None
        m = _LEAD_DATE.match(part)
        if m:
            date, part = m.group(1).strip(), part[m.end():]
        out.append((part, date))
    return out


def _verb_group(rest: list[str]) -> tuple[str, str, list[str]] | None:
    """``(aux, verb form, tokens after the verb)`` for the start of a predicate, else None.

    ``is learning X`` -> ("is", "learning"); ``has been creating X`` -> ("has", "been creating");
    ``adopted X`` -> ("did", "adopt"); ``loves X`` -> ("does", "love").
    """
    if not rest:
        return None
    low = rest[0].lower()
    after = rest[1:]
    if low in ("is", "are", "was", "were") and after:
        nxt = after[0].lower()
        if nxt in _ADVERBS and len(after) > 1:
            after = after[1:]
            nxt = after[0].lower()
        if nxt.endswith("ing") and len(nxt) > 4:
            return low, nxt, after[1:]
        return None
    if low in ("has", "have", "had") and after:
        nxt = after[0].lower()
        if nxt in _ADVERBS and len(after) > 1:
            after = after[1:]
            nxt = after[0].lower()
        if nxt == "been" and len(after) > 1 and after[1].lower().endswith("ing"):
            return low, "been " + after[1].lower(), after[2:]
        if _lemma_past(nxt) and nxt != "been":
            return low, nxt, after[1:]
        return None
    if rest[0][:1].islower():
        past = _lemma_past(low)
        if past:
            return "did", past, after
        present = _lemma_present(low)
        if present:
            return "does", present, after
    return None


_PLACE = re.compile(r"^(?:in|at)\s+((?:the\s+)?[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*)")


def _adjunct_pairs(pre: str, vobj: str, tail: Sequence[str], date: str | None,
                   max_words: int) -> list[tuple[str, str]]:
    """When / Where / Why questions from what follows a verb phrase (absolute dates only)."""
    out = []
    tail_text = _join(tail)
    place = _PLACE.match(tail_text)
    if place and _DATE.fullmatch(place.group(1)):
        place = None
    m = _DATE.search(tail_text)
    if m and date is None:
        date = m.group(1)
    if place:
        out.append((f"Where {pre} {vobj}?", place.group(1)))
        vobj = f"{vobj} {tail_text[:place.end()]}"
    if date:
        out.append((f"When {pre} {vobj}?", date))
    why = re.match(r"^(?:in order\s+)?(to\s+[a-z]\w*.*|because\s+.*)$", tail_text)
    if why and len(why.group(1).split()) <= max_words:
        out.append((f"Why {pre} {vobj}?", why.group(1).rstrip(",.")))
    return out


def rule_pairs(text: str, max_pairs: int = 2, max_words: int = 15) -> list[tuple[str, str]]:
    """Templated factoid pairs from one memory text (subject / verb / object / date / place).

    Deterministic; at most ``max_pairs`` pairs per clause of the text. Relative times
    ("last Friday") are never used as answers: the context carries no date to resolve them.
    """
    pairs: list[tuple[str, str]] = []
    for clause, lead_date in _clauses(text):
        toks = _WORD.findall(clause.replace("\u2019", "'"))
        found: list[tuple[str, str]] = []
        i = 0  # subject: leading run of capitalised words (and "X and Y")
        while i < len(toks) and (toks[i][:1].isupper() or (toks[i] == "and" and i + 1 < len(toks)
                                                           and toks[i + 1][:1].isupper())):
            i += 1
        if i == 0 or i >= len(toks) or i > 5:
            continue
        subject, rest = _join(toks[:i]), toks[i:]
        if subject.lower().startswith(("the ", "a ", "an ", "according", "on ", "in ", "after ")):
            continue
        named = re.search(r"\b(?:a|an|her|his|their)\s+([a-z]+(?:\s+[a-z]+)?)\s+(?:named|called)\s+"
                          r"((?:'[^']+')|(?:\"[^\"]+\")|[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*)", clause)
        if subject.endswith("'s"):  # "X's favorite book is Y" -> What is X's favorite book? Y
            for j, t in enumerate(rest):
                if t.lower() in ("is", "are", "was", "were") and 0 < j <= 4:
                    obj, _ = _phrase(rest[j + 1:], max_words)
                    noun = _join(rest[:j])
                    if obj and noun and not any(c in noun for c in ",;") and obj.lower() not in _EMPTY_OBJECTS:
                        found.append((f"What {t.lower()} {subject} {noun}?", obj))
                    break
        else:
            while rest and rest[0].lower() in _ADVERBS:
                rest = rest[1:]
            vg = _verb_group(rest)
            if vg is not None:
                aux, verb, after = vg
                base = verb.split()[-1] if aux not in ("did", "does") else verb
                if aux == "does" and " and " in subject:
                    aux = "do"
                pre = f"{aux} {subject}"  # the question head before the verb
                head = f"{pre} {verb}"
                if base in _CLAUSE_VERBS or base.rstrip("ing") in _CLAUSE_VERBS or \
                        _lemma_present(base) in _CLAUSE_VERBS:
                    obj = _clause_object(after, max_words)
                    if obj and obj.lower() not in _EMPTY_OBJECTS:
                        found.append((f"What {head}?", obj))
                elif after and after[0].lower() == "to" and (verb in _MOTION or base in _MOTION
                                                             or _lemma_past(base) in _MOTION):
                    obj, n = _phrase(after[1:], max_words)
                    if obj:
                        found.append((f"Where {head}?", obj))
                        found += _adjunct_pairs(pre, f"{verb} to {obj}", after[1 + n:], lead_date, max_words)
                elif after and after[0].lower() == "to" and len(after) > 1 and after[1][:1].islower():
                    obj = _clause_object(after[1:], max_words)  # "plans to open a shop"
                    if obj:
                        found.append((f"What {head} to do?", obj))
                else:
                    prep = []
                    k = 0
                    while k < len(after) and after[k].lower() in _PARTICLES and k < 2 and \
                            not (k == 0 and after[k].lower() in ("in", "on", "at", "with", "to")):
                        prep.append(after[k].lower())
                        k += 1
                    obj, n = _phrase(after[k:], max_words)
                    if obj and obj.lower() not in _EMPTY_OBJECTS and not (
                            len(obj.split()) == 1 and obj.lower().endswith("ing") and not prep):
                        vphrase = " ".join([verb, *prep])
                        who = "Who" if obj[:1].isupper() and " " not in obj and not obj.isupper() else "What"
                        found.append((f"{who} {pre} {vphrase}?", obj))
                    if obj:
                        found += _adjunct_pairs(pre, " ".join([verb, *prep, obj]), after[k + n:], lead_date,
                                                max_words)
                    elif not prep:  # intransitive: "lived in Boston on 8 May 2023"
                        found += _adjunct_pairs(pre, verb, after, lead_date, max_words)
        if named:
            owner = subject if not subject.endswith("'s") else subject[:-2]
            found.insert(1, (f"What is the name of {owner}'s {named.group(1)}?", named.group(2).strip("'\"")))
        pairs.extend(found[:max_pairs])
    return pairs


# ----------------------------------------------------------------------------- pipeline
_RAW_UTTERANCE = re.compile(r"^(?:\[[^\]]*\]\s*)?[A-Z][\w .'-]{0,40}:\s")


def is_raw_utterance(record: Record) -> bool:
    """True for a memory that is a speaker's raw turn ("[date] Maya: I ..."), not an observation."""
    return (record.source or {}).get("kind") == "utterances" or bool(_RAW_UTTERANCE.match(record.text))


def _groups(records: Sequence[Record], size: int) -> list[list[Record]]:
    return [list(records[i:i + size]) for i in range(0, len(records), size)]


def _provenance(user: str, group: Sequence[Record]) -> dict:
    dates = sorted({r.observed_at for r in group if r.observed_at})
    return {"user": user,
            "record_ids": [r.id for r in group],
            "dia_ids": list(dict.fromkeys(d for r in group for d in r.dia_ids)),
            "observed_at": dates[-1] if dates else None,
            "sessions": sorted({r.source.get("session") for r in group if r.source.get("session") is not None})}


def synthesize(store: MemoryStore, user: str, chat: ChatFn | None, config: SynthConfig | None = None,
               progress: bool = True) -> tuple[list[dict], dict]:
    """Write and filter QA pairs from ``user``'s live memories; returns ``(pairs, report)``.

    ``chat`` is required for the ``llm`` generator; with the ``rule`` generator it is used
    only for the answerability filter (skipped, and counted, when ``chat`` is None).
    Raises ValueError for an unknown user (no live memories).
    """
    cfg = config or SynthConfig()
    if cfg.generator != "rule" and chat is None:
        raise ValueError(f"the {cfg.generator} generator needs a chat model (or use generator='rule')")
    records = store.all(user)
    if not records:
        users = ", ".join(store.users()[:10]) or "none"
        raise InputError(f"no live memories for user {user!r} in {store.path} (users: {users})", field="user")
    if cfg.generator == "rule":
        raw = [r for r in records if is_raw_utterance(r)]
        if raw and (any((r.source or {}).get("kind") == "utterances" for r in raw) or 2 * len(raw) >= len(records)):
            raise InputError(
                f"the rule question writer needs parsed observations (third-person sentences about the user), "
                f"but {len(raw)} of {len(records)} memories of {user!r} are raw utterances (e.g. {raw[0].text[:60]!r}); "
                "write the memory from observations or LLM extraction, or use the llm question writer",
                field="generator")
    if chat is not None and cfg.seed is not None:
        try:
            import torch

            torch.manual_seed(cfg.seed)
        except ImportError:  # pragma: no cover
            pass
    groups = _groups(records, cfg.group_size)
    if cfg.limit is not None:
        groups = groups[: cfg.limit]
    check = cfg.check_answerable and chat is not None
    writer_stats: dict = {}
    written = None
    if cfg.generator == "llm":
        from .writer import WRITER_VERSION, write_pairs

        written = write_pairs(chat, ["\n".join(r.text for r in g) for g in groups], user, cfg.pairs_per_prompt,
                              stats=writer_stats, round_trip=cfg.round_trip)
    report = {
        "version": SYNTH_VERSION, "user": user, "generator": cfg.generator,
        "writer_version": WRITER_VERSION if cfg.generator == "llm" else None, "writer": writer_stats,
        "live_memories": len(records), "observations": sum(len(g) for g in groups),
        "prompts": len(groups), "generated": 0, "kept": 0,
        "malformed_generations": 0, "malformed_items": 0,
        "dropped": {"too_long": 0, "ungrounded": 0, "conversation_time": 0, "duplicate": 0,
                    "unanswerable": 0, "answer_check_error": 0, "malformed": 0},
        "malformed_rules": dict.fromkeys(PAIR_RULES, 0),
        "well_formed_check": "on" if cfg.check_well_formed else "skipped",
        "answerability": "llm" if check else "skipped", "answerability_skipped": 0,
        "answer_f1_mean": None, "config": asdict(cfg),
        "dropped_examples": {k: [] for k in ("too_long", "ungrounded", "conversation_time", "duplicate",
                                             "unanswerable", "answer_check_error", "malformed")},
    }

    def drop(reason: str, question: str, answer: str, **extra) -> None:
        report["dropped"][reason] += 1
        if len(report["dropped_examples"][reason]) < cfg.report_examples:
            report["dropped_examples"][reason].append({"question": question, "answer": answer, **extra})

    seen: set[str] = set()
    reasks: dict[tuple[str, str], str] = {}
    f1s: list[float] = []
    kept: list[dict] = []
    started = time.perf_counter()
    bar = None
    if progress:
        bar = progress_bar(total=len(groups), desc=f"synth ({cfg.generator})", unit="prompt")
    try:
        for gi, group in enumerate(groups):
            texts = [r.text for r in group]
            context = "\n".join(texts)
            if written is not None:
                cands = written[gi]
                if not cands:
                    report["malformed_generations"] += 1
            elif cfg.generator == "llm-text":
                try:
                    reply = _call(chat, generation_messages(texts, cfg.pairs_per_prompt), cfg.max_new_tokens)
                except Exception as exc:  # a failed generation is skipped, never fatal
                    log.warning("generation failed for records %s: %s", [r.id for r in group], exc)
                    reply = ""
                cands, bad = parse_pairs(reply)
                report["malformed_items"] += bad
                if not cands:
                    report["malformed_generations"] += 1
                    log.info("malformed generation for records %s: %r", [r.id for r in group], reply[:200])
            else:
                cands = [p for t in texts for p in rule_pairs(t, cfg.pairs_per_prompt, cfg.max_answer_words)]
            report["generated"] += len(cands)
            for question, answer in cands:
                if len(answer.split()) > cfg.max_answer_words:
                    drop("too_long", question, answer)
                    continue
                overlap = context_overlap(answer, context)
                if overlap < cfg.min_context_overlap:
                    drop("ungrounded", question, answer, overlap=round(overlap, 3))
                    continue
                if is_conversation_time_question(question):
                    drop("conversation_time", question, answer)
                    continue
                qnorm = normalize_question(question)
                if not qnorm or qnorm in seen:
                    drop("duplicate", question, answer)
                    continue
                problems = (pair_problems(question, answer, context, user, max_words=cfg.max_answer_words)
                            if cfg.check_well_formed else [])
                if problems:
                    for rule in problems:
                        report["malformed_rules"][rule] += 1
                    drop("malformed", question, answer, problems=problems)
                    continue
                f1 = None
                reanswer = None
                if check:
                    if (context, qnorm) not in reasks:
                        try:
                            reasks[(context, qnorm)] = clean_reply_answer(
                                _call(chat, answer_messages(context, question), cfg.answer_max_new_tokens))
                        except Exception as exc:  # an error, not a verdict on the pair: counted apart
                            log.warning("answerability re-ask failed: %s", exc)
                            reasks[(context, qnorm)] = None
                    reanswer = reasks[(context, qnorm)]
                    if reanswer is None:
                        drop("answer_check_error", question, answer)
                        continue
                    f1 = answer_f1(reanswer, answer, question, cfg.strip_question_words)
                    f1s.append(f1)
                    if f1 < cfg.f1_threshold:
                        drop("unanswerable", question, answer, reply=reanswer, f1=round(f1, 4))
                        continue
                else:
                    report["answerability_skipped"] += 1
                key = pair_key(question, answer, context)
                seen.add(qnorm)
                pair = {"key": key, "question": question, "answer": answer, "context": context,
                        **_provenance(user, group), "generator": cfg.generator}
                if f1 is not None:
                    pair["answer_check"] = {"reply": reanswer, "f1": round(f1, 4)}
                kept.append(pair)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(kept=len(kept), generated=report["generated"])
    finally:
        if bar is not None:
            bar.close()
    report["kept"] = len(kept)
    report["answer_f1_mean"] = round(sum(f1s) / len(f1s), 4) if f1s else None
    report["seconds"] = round(time.perf_counter() - started, 2)
    return kept, report


def write_qa_jsonl(path: str | os.PathLike, pairs: Iterable[dict]) -> int:
    """Write pairs as JSONL atomically (fileio: temp file + fsync + os.replace); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(p, ensure_ascii=False) + "\n" for p in pairs]
    atomic_write_text(path, "".join(lines))
    return len(lines)


def write_report(path: str | os.PathLike, report: dict) -> None:
    """Write the filter report as JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=1, ensure_ascii=False, default=str) + "\n")


