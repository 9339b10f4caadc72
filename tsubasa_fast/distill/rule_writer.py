"""The rule question writer (``rule``; ours, METHOD.md: the pipeline degrades gracefully with
small models or no LLM): deterministic templates over a parsed observation's subject, verb,
object, date and place (:func:`rule_pairs`)."""

from __future__ import annotations

import re
from typing import Sequence

from ..text import verb_base

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
