"""The rule question writer (``rule``; ours, METHOD.md: the pipeline degrades gracefully with
small models or no LLM): deterministic templates over a parsed observation's subject, verb,
object, date and place (:func:`rule_pairs`). A memory's ``[date]`` prefix (the session it was
said in, :func:`tsubasa_fast.memory.ingest.memory_text`) dates its past-tense events."""

from __future__ import annotations

import datetime as _dt
import re
from typing import Sequence

from ..memory.slots import human_date, segments
from .pair_check import first_name
from ..text import can_be_bare_verb, is_noun, is_participle, verb_base

_ING_NOUNS = {"meeting", "painting", "counseling", "counselling", "building", "clothing", "wedding",
              "evening", "morning", "reading", "writing", "camping", "hiking", "swimming", "dancing",
              "training", "recording", "gathering", "feeling", "setting", "thing", "string", "ring",
              "spring", "king", "wing", "earring", "pudding", "opening", "ending", "beginning",
              "sibling", "drawing", "landing", "parking", "housing", "learning", "fundraising",
              "flooring", "meaning", "offering", "belonging", "upbringing", "outing", "ceiling",
              "handwriting", "mentoring", "marketing", "networking", "tutoring", "coaching", "shopping",
              "sightseeing", "gardening", "baking", "cooking", "volunteering", "skiing", "surfing", "riding"}
# adjectives before a gerund noun ("new running shoes") do not end a phrase there
_ADJ_BEFORE_ING = {"new", "old", "big", "small", "little", "good", "great", "first", "own", "favorite",
                   "favourite", "long", "short", "special", "daily", "weekly", "regular", "online", "local"}
# verbs whose "X to do Y" is not a purpose: no Why pair ("encourages Jon to keep pushing")
_NO_WHY = {"want", "ask", "encourage", "remind", "help", "tell", "urge", "expect", "need", "invite", "inspire",
           "allow", "teach", "like", "love", "get", "motivate", "push", "challenge", "advise", "take",
           "support", "warn", "beg", "convince", "persuade", "root", "cheer"}
_VAGUE = {"someone", "something", "anyone", "anything", "somebody", "people", "others", "one", "other", "herself",
          "himself", "themselves", "itself", "oneself"}
# heads too vague to ask about: "What is Jon handling? -> changes", "What does Caroline
# represent? -> inclusivity"
_VAGUE_NOUNS = {"changes", "challenges", "things", "stuff", "obstacles", "life", "work", "support", "love",
                "progress", "goals", "dreams", "success", "setbacks", "help", "advice", "feelings", "emotions",
                "interest", "excitement", "gratitude", "appreciation", "struggles", "concerns", "thoughts",
                "news", "story", "stories", "journey", "efforts", "determination", "stress", "faith",
                "ambition", "belief", "importance", "experience", "guidance", "picture", "photo", "passion",
                "offers", "encouragement", "motivation", "piece"}
# acts of the conversation itself: "Melanie praised Caroline", "Jon shared his stress", "Jon mentioned
# losing his job". What they were about is an act of talk, not a fact ("What did Jon mention?"), their
# date is the session's and their person the other speaker: no pair, but for the task they give a
# person ("encourages Jon to keep pushing": What does Gina encourage Jon to do?)
_SOCIAL = {"ask", "praise", "compliment", "commend", "thank", "congratulate", "appreciate", "assure", "reassure",
           "tell", "inform", "share", "mention", "speak", "talk", "discuss", "express", "inquire",
           "admire", "acknowledge", "cheer", "support", "encourage", "agree", "reply", "respond", "remind",
           "wish", "greet", "reciprocate", "comfort", "sympathize", "advise", "suggest", "recommend",
           "emphasize", "highlight", "say", "apologize", "promise", "vow", "motivate", "credit", "affirm",
           "reveal", "remark", "respect", "chat", "explain", "admit", "describe", "note", "add", "state", "report"}
_ABSTRACT_ENDINGS = ("ity", "ness", "ment", "ism", "ance", "ence", "ship", "tion", "sion")
# "a source of happiness", "a way to relax": frames, not facts
_FRAME_NOUNS = {"source", "way", "reminder", "symbol", "mix", "part", "kind", "sign", "testament", "ride",
                "reflection", "example"}
# gerunds of perceiving or being: "enjoyed seeing them have fun" holds no fact to ask for
_PERCEPTION = {"seeing", "watching", "hearing", "knowing", "feeling", "being", "having", "getting", "finding"}
_DITRANSITIVE = {"give", "send", "offer", "show", "tell", "teach", "buy", "lend", "hand", "bring"}
_RELATIVES = {"family", "kids", "children", "son", "daughter", "husband", "wife", "partner", "mom", "mother",
              "dad", "father", "parents", "brother", "sister", "friend", "friends", "dog", "cat", "team", "group"}
# "has been married for 5 years", "has been into art for seven years": How long
_HOW_LONG = re.compile(r"^(has|have) been (.{3,40}?) for ((?:about |over |almost |nearly )?(?:\d+|one|two|three|four|"
                       r"five|six|seven|eight|nine|ten|a few|several|many) (?:years?|months?|weeks?|days?))\b")
_FAN = re.compile(r"^(is|are) (?:a |an )?(?:big |huge |real |great )?fans? of\s+")
_PRONOUNS = {"they", "it", "he", "she", "this", "that", "these", "those", "them", "we", "you", "i"}
_SUBJECT_PRONOUNS = {"she", "he", "they", "we"}
_PEOPLE = {"people", "students", "group", "community", "members", "others", "children", "kids", "youth",
           "audience", "crowd", "friends", "family", "team", "parents", "person", "woman", "man", "girl", "boy"}
# heads that name people: the question asks Who ("some investors", "a transgender teen", "her mentor")
_PERSON_NOUNS = {"investor", "investors", "friend", "friends", "mentor", "mentors", "teacher", "teachers", "coach",
                 "customer", "customers", "client", "clients", "artist", "artists", "dancer", "dancers", "neighbor",
                 "neighbors", "colleague", "colleagues", "boss", "counselor", "therapist", "doctor", "teen", "teens",
                 "student", "students", "kid", "kids", "children", "child", "people", "person", "woman", "man",
                 "girl", "boy", "mom", "mother", "dad", "father", "parents", "brother", "sister", "son", "daughter",
                 "husband", "wife", "partner", "volunteers", "members", "youth", "family", "grandmother",
                 "grandfather", "grandma", "grandpa", "cousin", "aunt", "uncle", "designer", "designers"}
_COLLECTIVE = {"group", "team", "crowd", "bunch", "circle"}  # "a group of ...": people, so Who
_GENERIC_HEADS = {"place", "way", "chance", "opportunity", "spot", "time", "reason"}  # "a place to open ..."
_IDIOM_OBJECTS = {"step", "steps", "part", "action", "care", "notice", "advantage", "place", "break", "chance"}
_LIGHT = {"having", "have", "get", "use", "using"}  # "is having trouble", "got mentored": no What pair
_TIME_VERBS = {"spend", "invest", "waste", "devote", "dedicate"}  # "spends time with friends": time is no thing
_NOT_VERBS = {"need", "red", "bed", "seed", "feed", "speed", "bred", "shed", "led", "wed",
              "bus", "is", "was", "has", "this", "his", "its", "as", "us", "yes", "always",
              "sometimes", "perhaps", "news", "series", "kids", "friends", "parents", "interested",
              "excited", "proud", "determined", "inspired", "thankful", "grateful", "happy",
              "may", "might", "must", "can", "could", "would", "should", "will", "shall", "bet", "guess"}
_CLAUSE_VERBS = {"believe", "think", "say", "mention", "hope", "know", "realize", "realise",
                 "explain", "admit", "wish", "describe"}
_THAT_VERBS = {"share", "suggest", "note", "add", "state", "report"}  # clause verbs only before "that"
# verbs of judging and feeling: "finds X inspiring", "feels motivated by X", "sees Jon as ...":
# their object is an opinion, not a fact to ask about
_OPINION_VERBS = {"find", "feel", "see", "consider", "express", "seem", "appear"}
_PLACE_VERBS = {"visit", "explore", "tour"}  # a capitalised object is a place: Where, not Who
_MOTION = {"go", "move", "travel", "come", "return", "head", "fly", "drive", "walk", "run", "relocate"}
_PARTICLES = {"into", "for", "at", "after", "about", "forward", "on", "up", "with", "in", "to", "as", "out", "off",
              "down"}
_EMPTY_OBJECTS = {"time", "it", "this", "that", "herself", "himself", "themselves", "itself",
                  "something", "things", "them", "her", "him", "one", "more", "much", "they", "he", "she",
                  "we", "you", "i", "so", "too", "all", "everything", "anything", "nothing"}
_BOUNDARY = {"in", "on", "at", "for", "with", "from", "because", "since", "after", "before", "due", "between", "not",
             "how", "what", "why", "whether", "if",
             "during", "as", "which", "that", "who", "while", "when", "where", "and", "but", "by",
             "to", "through", "about", "despite", "although", "so", "whose", "like", "including",
             "into", "than", "until", "via", "over", "around", "together", "even", "especially",
             "towards", "toward", "across", "among", "without", "within", "upon", "against"}
_KEEP_BEFORE_VERBAL = {"of", "a", "an", "the", "her", "his", "their", "my", "our", "its"}
_CLAUSE_END = {"because", "since", "while", "which", "who", "so", "as", "although", "but", "especially"}
_DETERMINERS = {"a", "an", "the", "her", "his", "their", "my", "our", "its", "some", "this", "that", "these"}
_TRAILING = _DETERMINERS | {"of", "and", "or", "to", "with", "for", "in", "on", "at"}
_ADVERBS = {"currently", "recently", "also", "still", "now", "often", "usually", "really", "always",
            "sometimes", "finally", "just", "once", "regularly", "even", "actively", "frequently", "hard",
            "together", "again", "lately", "already", "soon", "back", "away", "well", "a lot", "ahead"}
# "for" / "of" / "as" continue a noun phrase ("the ideal spot for his dance studio", "his job as a
# banker") when the continuation is short
_CONTINUE = {"for", "of", "as"}
_ADJECTIVE_ENDINGS = ("ful", "ous", "ive", "less", "ic", "able", "ible", "ing", "al")
_ADJ_ONLY_ENDINGS = ("ful", "ous", "less", "ly", "able", "ible")  # "lovely", "stressful"; not "family" (no ADJ)
_TIME_WORDS = {"last", "this", "next", "yesterday", "today", "tomorrow", "tonight", "where", "when"}
_AFTER_A_PLACE = _BOUNDARY | _TRAILING | _CLAUSE_END | _ADVERBS | _TIME_WORDS  # "in Leeds last year": a place
_MAX_CONTINUED = 7  # words of an object continued that way
_MAX_CLAUSE_WORDS = 10  # what a "believes ..." / "mentioned ..." answer may run to
_MONTHS = "January February March April May June July August September October November December"
_MONTH_SET = set(_MONTHS.split())
# relative times a session date does not resolve: a past event so described gets no When pair
_UNDATED = re.compile(r"\b(recently|lately|ago|used to|once|when \w+ was|as a (?:kid|child)|growing up|"
                      r"years?|for a while|always|often|usually|every|previous|earlier|before|since|but|during)\b", re.I)
_DAY_BEFORE = re.compile(r"\s*\b(?:on\s+)?(?:the day before the conversation|yesterday)\b", re.I)
# "last Friday" / "last weekend" / "over the weekend", resolved against the session date the way
# LoCoMo's answers write them: "the Friday before 15 July 2023"
_LAST_DAY = re.compile(r"\s*\b(?:on\s+)?(?:last|this past)\s+(monday|tuesday|wednesday|thursday|friday|saturday|sunday|"
                       r"weekend)\b|\s*\bover the (weekend)\b", re.I)
_DATE = re.compile(
    r"\b(?:(?:on|in|around|since|by)\s+)?((?:the (?:week|weekend|month) (?:before|after|of)\s+)?"
    r"(?:\d{1,2}\s+)?(?:" + _MONTHS.replace(" ", "|") +
    r")(?:\s+\d{1,2})?,?\s+\d{4}|\d{4}-\d{2}-\d{2}|(?<!\d)(?:19|20)\d{2}(?!\d))\b")
_CLOCK = re.compile(r"\b\d{1,2}:\d{2}\s*(?:am|pm)\b", re.I)
_LEAD_DATE = re.compile(r"^\s*On\s+([^,]{4,40}?),?\s+(?=[A-Z])")
_REL_TIME = re.compile(
    r"\b(recently|lately|last \w+|(?:a few|several|some|\w+) (?:years?|months?|weeks?|days?) ago|"
    r"this (?:week|month|year|weekend)|the (?:previous|next|following) \w+|over the weekend|"
    r"yesterday|today|tomorrow|next \w+)\b.*$", re.I)
_WORD = re.compile(r"(?<![A-Za-z])'[^']{1,60}'(?![A-Za-z])|\"[^\"]{1,60}\"|"
                   r"[A-Za-z][\w'\-+/]*|\d+(?:[.,:\-]\d+)*|[^\sA-Za-z\d]")


def _lemma_past(word: str) -> str | None:
    """Base form of a simple-past verb (``moved`` -> ``move``); None if it is not one."""
    w = word.lower()
    return None if w in _NOT_VERBS else verb_base(w, "past")


def _lemma_present(word: str) -> str | None:
    """Base form of a third-person present verb (``loves`` -> ``love``); None if not one."""
    w = word.lower()
    return None if w in _NOT_VERBS else verb_base(w, "present")


def _adjective(obj: str) -> bool:
    """``obj`` is one lowercase adjective ("lovely", "stressful"), which answers no What question."""
    from lemminflect import getAllLemmas

    return " " not in obj and obj.islower() and obj.endswith(_ADJ_ONLY_ENDINGS) and "ADJ" in getAllLemmas(obj)


def _vague(obj: str) -> bool:
    """The object's head noun says nothing on its own ("challenges", "her hard work", "his exciting
    news"; not "his passion for dancing": a for / of / as phrase pins it down; of "X and Y", both
    heads), or its owner is an unresolved "its"."""
    words = obj.lower().split()
    if words and words[0] == "its":
        return True  # "its main message": whose, the memory does not say here
    if set(words) & _CONTINUE:
        return False
    heads = [part.split()[-1] for part in re.split(r"\s+(?:and|or)\s+", obj.lower()) if part.split()]
    return bool(heads) and all(h in _VAGUE_NOUNS for h in heads)  # "the support and encouragement"


def _names_people(obj: str) -> bool:
    """``obj`` names people: its head (the last word before a for / of / as / with phrase) is a
    person noun ("some investors"; not "a mentorship program for LGBTQ youth"), a name follows
    one ("her friend Melanie", "his brother Ben"), or it is a group of something ("a group of
    religious conservatives"; "a support group" is no person)."""
    head, *more = re.split(r"\s+(for|of|as|with)\s+", obj)
    words = head.split()
    if words[-1].lower() in _COLLECTIVE and more[:1] == ["of"]:
        return True  # "a group of religious conservatives"
    return words[-1].lower() in _PERSON_NOUNS or (
        len(words) > 1 and words[-1][:1].isupper() and words[-2].lower() in _PERSON_NOUNS)


def _join(tokens: Sequence[str]) -> str:
    text = " ".join(tokens)
    text = re.sub(r"\s+([,.;:!?)])", r"\1", text)
    text = re.sub(r"([(])\s+", r"\1", text)
    return re.sub(r"\s+'s\b", "'s", text).strip()


def _trim(out: list[str]) -> list[str]:
    while out and out[-1].lower() in _TRAILING:
        out.pop()
    return out


def _verb_form(word: str) -> bool:
    """``word`` is a finite verb or a participle ("finds", "started", "looking"), not a noun first."""
    w = word.lower()
    return bool(_lemma_past(w) or _lemma_present(w) or is_participle(w)) and w not in _ING_NOUNS


def _conjunct(first: str, nxt: str) -> bool:
    """The word after "and" / "or" opens a second conjunct of the phrase that opened on ``first``:
    a determiner, a noun that is no verb form ("furniture and decor", "his plans and goals"), or
    a gerund after a gerund ("building relationships and creating ..."); not a second predicate
    ("his passion for dance and searching for ...")."""
    f, n = first.lower(), nxt.lower()
    if n in _DETERMINERS:
        return n not in ("that", "this", "these", "its")  # not "self-care and its impact": whose?
    if n.endswith("ing") and nxt[:1].islower():
        return f.endswith("ing") and first[:1].islower() and f not in ("something", "anything", "nothing")
    if nxt[:1].isupper():
        return first[:1].isupper()
    return is_noun(n) and not _verb_form(n) and n not in _BOUNDARY | _PRONOUNS


def _listed(first: str, after_comma: Sequence[str]) -> bool:
    """The phrase that opened on ``first`` is the first item of a comma list ("doing research,
    preparing emotionally, and gathering ..."; "flowers, candles, and a cake"): its answer would
    be one item of several."""
    if not after_comma or after_comma[0].lower() in _BOUNDARY | _PRONOUNS:
        return False
    nxt = after_comma[0]
    if nxt.lower().endswith("ing") and nxt[:1].islower() and first.lower().endswith("ing"):
        return True
    seg = []
    for t in after_comma:
        if t in (".", ";", ":", "!", "?"):
            break
        seg.append(t.lower())
    oxford = any(a == "," and b in ("and", "or") for a, b in zip(seg, seg[1:]))
    return oxford and (is_noun(nxt) or not _verb_form(nxt))  # "candles" (also a verb), not "started"


def _taken(out: list[str], n: int, max_words: int) -> tuple[str, int]:
    """``(text, n)`` of a phrase's words without trailing function words or a relative time;
    ``("", 0)`` when nothing is left or it runs past ``max_words``."""
    text = _REL_TIME.sub("", _join(_trim(out))).strip()
    return (text, n) if text and len(text.split()) <= max_words else ("", 0)


def _phrase(tokens: Sequence[str], max_words: int, continued: bool = True) -> tuple[str, int]:
    """Leading noun phrase of ``tokens`` (up to a comma, clause, preposition or a participle
    after a noun; continued through a short "for" / "of" / "as" phrase and through a second
    conjunct, :func:`_conjunct`) and the number of tokens it used; ``("", 0)`` when empty, too
    long or the first item of a list."""
    out: list[str] = []
    for i, t in enumerate(tokens):
        low = t.lower()
        if t == "," and out and _listed(out[0], tokens[i + 1:]):
            return "", 0
        if t in (",", ";", ".", ":", "!", "?", "(", ")"):
            break
        nxt = tokens[i + 1].lower() if i + 1 < len(tokens) else ""
        if low in ("and", "or") and out and i + 1 < len(tokens) and _conjunct(out[0], tokens[i + 1]):
            more, m = _phrase(tokens[i + 1:], max_words, continued=False)
            if not more or len(out) + 1 + len(more.split()) > _MAX_CLAUSE_WORDS or more.endswith("'s"):
                return "", 0  # half of "X and Y" is no answer
            return _taken([*out, t, *tokens[i + 1:i + 1 + m]], i + 1 + m, max_words)
        if low in ("and", "or") and i > 0 and not (_lemma_past(nxt) or _lemma_present(nxt)) \
                and (tokens[i - 1].lower().endswith(_ADJECTIVE_ENDINGS) or (i == 2 and tokens[0].lower() in _DETERMINERS)):
            return "", 0  # "the peaceful and calming nature", "a black and white bowl": the noun is past the cut
        if i > 0 and (low in _SUBJECT_PRONOUNS or low in ("each", "every")):
            break  # "a pottery plate she made": a relative clause starts; "me-time each day": a time
        if low in _BOUNDARY:
            if i == 0:
                return "", 0
            if continued and low in _CONTINUE and i + 1 < len(tokens):
                more, m = _phrase(tokens[i + 1:], max_words, continued=False)
                after_more = tokens[i + 1 + m].lower() if i + 1 + m < len(tokens) else ""
                # "a place for kids to play" is no noun phrase; "for dance and fashion to show ..." is
                if more and m and len(out) + 1 + len(more.split()) <= _MAX_CONTINUED and \
                        (after_more != "to" or re.search(r" (?:and|or) ", more)) and \
                        not _DATE.match(more) and more.split()[0] not in _MONTH_SET and not more.endswith("'s") and \
                        not more.split()[0].lower().endswith("ing"):
                    return _taken([*out, t, *tokens[i + 1:i + 1 + m]], i + 1 + m, max_words)
            break
        if i > 0 and (low.endswith(("ing", "ed")) or (_lemma_past(low) and not is_noun(low))) and t[:1].islower() and \
                tokens[i - 1].lower() not in _KEEP_BEFORE_VERBAL and low not in _ING_NOUNS and \
                not (low.endswith("ing") and tokens[i - 1].lower() in _ADJ_BEFORE_ING) and \
                low not in ("red", "bed", "need", "seed", "speed"):
            break
        out.append(t)
    n = len(out)
    out = _trim(out)
    while out and out[-1].lower().endswith("ly") and len(out) > 1:  # "changes positively"
        out.pop()
    if out and (out[-1].endswith("'s") or out[-1].lower() in _VAGUE):  # "the experience of Melanie's",
        return "", 0                                                      # "having someone": cut off
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
    if not (len(out) > 1 and out[-1].lower() == "her" and out[-2].lower() not in _TRAILING):
        out = _trim(out)  # but not "her family motivates her": an object there, not a determiner
    if len(out) == 2 and out[0].lower() in _DETERMINERS and len(out) < len(tokens):
        return ""  # "mentions the tough but rewarding ...": the noun is past the cut
    return _join(out) if 0 < len(out) <= max_words else ""


def _day_before(date: str | None) -> str | None:
    """``"19 January 2023"`` for ``"20 January 2023"``; None when ``date`` is not in that form."""
    try:
        d = _dt.datetime.strptime(date or "", "%d %B %Y").date() - _dt.timedelta(days=1)
    except ValueError:
        return None
    return human_date(d.isoformat())


def _clauses(text: str) -> list[tuple[str, str | None, str | None]]:
    """Sentences / merged-update clauses of a memory: ``(clause, its date, session date)``.

    The date is a leading "On <date>" (removed) or "the day before the conversation" /
    "yesterday" (removed; the session's day before). The session date is when the clause was
    told: the memory's ``[date]`` prefix, or the first date of a merged clause ``... (D1, D2)``
    (:func:`tsubasa_fast.memory.slots.segments`, the evolution's own format); None without one.
    """
    out = []
    for seg in segments(text):
        first = seg.dates[0] if seg.dates else None
        # "On 8 May 2023, Caroline lived in Boston": the date is the event's own, not only when it was told
        lead = first if first and re.search(rf"\b[Oo]n {re.escape(first)}\b", text) else None
        out += _seg_clauses(seg.clause, first, lead)
    return out


def _seg_clauses(text: str, session: str | None, lead: str | None) -> list[tuple[str, str | None, str | None]]:
    out = []
    for part in re.split(r";\s+|(?<=[.!?])\s+(?=[A-Z])", text):
        part = part.strip().rstrip(".")
        if not part:
            continue
        date = lead
        m = _LEAD_DATE.match(part)
        if m:
            date, part = m.group(1).strip(), part[m.end():]
        elif _DAY_BEFORE.search(part) and _day_before(session):
            date, part = _day_before(session), _DAY_BEFORE.sub("", part).strip()
        elif session and _LAST_DAY.search(part):
            m = _LAST_DAY.search(part)
            day = (m.group(1) or m.group(2)).lower()
            date = f"the {day if day == 'weekend' else day.capitalize()} before {session}"
            part = (part[:m.start()] + part[m.end():]).strip()
        out.append((part, date, session))
    return out


def _verb_group(rest: list[str]) -> tuple[str, str, list[str]] | None:
    """``(aux, verb form, tokens after the verb)`` for the start of a predicate, else None.

    ``is learning X`` -> ("is", "learning"); ``has been creating X`` -> ("has", "been creating");
    ``adopted X`` -> ("did", "adopt"); ``loves X`` -> ("does", "love"); ``does miss X`` -> ("does",
    "miss"); a negated ``did not ...`` -> None.
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
        if is_participle(nxt):
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
    if low in ("do", "does", "did") and after:
        nxt = after[0].lower()
        if nxt in ("not", "n't", "never"):
            return None  # a negated clause: nothing to ask about
        # emphatic "does miss Maya's old team", "did love the show": the verb is the next word
        # (not "did research on ...", "did yoga": an object)
        if after[0][:1].islower() and can_be_bare_verb(nxt) and len(after) > 1 and \
                (after[1][:1].isupper() or after[1].lower() in _DETERMINERS):
            return ("did" if low == "did" else "does"), nxt, after[1:]
    if rest[0][:1].islower():
        past = _lemma_past(low)
        if past:
            return "did", past, after
        present = _lemma_present(low)
        if present:
            return "does", present, after
    return None


_NAMED = re.compile(r"\b(?:a|an|her|his|their|another)\s+([a-z]+(?:\s+[a-z]+)?)\s+(?:named|called)\s+"
                    r"((?:'[^']+')|(?:\"[^\"]+\")|[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*)")
# "is passionate about X", "is interested in X": What is <user> passionate about?
_ADJ_PREP = re.compile(r"^(is|are|was|were)\s+(?:(?:very|really|so|also|particularly|especially|deeply)\s+)?"
                       r"(passionate|excited|interested|proud|worried|nervous|curious|serious|keen|fond|"
                       r"involved|focused|enthusiastic|inspired|skilled|experienced)\s+(about|in|of|on|by)\s+")
_PLACE = re.compile(r"^(?:in|at)\s+((?:the\s+)?[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*)")


def _second_predicate(subject: str, rest: Sequence[str]) -> str | None:
    """The clause "<subject> <second predicate>" of "<subject> <predicate> and <predicate>", else None.

    ``rest`` is the clause after the subject. An -ing second predicate takes the first one's
    auxiliary ("is working on X and looking for Y" -> "is looking for Y").
    """
    if not rest or " and " in subject:
        return None
    vg = _verb_group(list(rest))
    if vg is None:
        return None
    first_aux, first_verb, _ = vg
    base = first_verb.split()[-1]
    if {base, _lemma_present(base) or base, base.removesuffix("ing")} & (_CLAUSE_VERBS | _OPINION_VERBS):
        return None  # "believes that X helps and makes ...": the "and" is inside what is believed
    aux = rest[0].lower() if rest[0].lower() in ("is", "are", "was", "were", "has", "have") else None
    for j in range(2, len(rest) - 1):
        low = rest[j].lower()
        if (low.endswith("ing") and rest[j - 1].lower() in _BOUNDARY | {"of"}) or low in ("that", "which", "who"):
            return None  # "the dream of having a family and providing ...", "an event that was ... and
                         # celebrated ...": the "and" is inside a phrase or a relative clause
        if rest[j] != "and" or rest[j - 1] == ",":
            continue
        nxt = rest[j + 1].lower()
        if not nxt.isalpha() or nxt in _NOT_VERBS or nxt in _ING_NOUNS or nxt == "being":
            continue
        if aux in ("is", "are", "was", "were") and is_participle(nxt):  # not "and bring ..."
            return _join([subject, aux, *rest[j + 1:]])
        # the same form as the first verb: "plan events and campaigns" is no second predicate
        if (first_aux == "did" and _lemma_past(nxt)) or (first_aux == "does" and _lemma_present(nxt)) or \
                (nxt == "is" and first_aux in ("is", "does")) or (nxt == "has" and first_aux in ("has", "does")):
            return _join([subject, *rest[j + 1:]])
        return None
    return None


def _first_predicate(text: str) -> str:
    """``text`` up to a second predicate: "to pursue her dreams and appreciates ..." -> "to pursue her dreams"."""
    words = text.split()
    for j in range(1, len(words) - 1):
        nxt = words[j + 1].lower()
        if words[j] == "and" and (verb_base(nxt, "present") or verb_base(nxt, "past")) and nxt not in _ING_NOUNS:
            return " ".join(words[:j])
    return text


def _to_place(tokens: Sequence[str]) -> bool:
    """``tokens`` open on "to" and a destination ("to the museum", "to Paris"), not on an
    infinitive ("takes up a job to cover his expenses")."""
    return bool(tokens) and tokens[0].lower() == "to" and not (
        len(tokens) > 1 and tokens[1][:1].islower() and tokens[1].lower() not in _DETERMINERS)


def _adjunct_pairs(pre: str, vobj: str, tail: Sequence[str], date: str | None,
                   max_words: int, why: bool = True, when: bool = True) -> list[tuple[str, str]]:
    """When / Where / Why questions from what follows a verb phrase (absolute dates only; no When
    at all with ``when=False``)."""
    out = []
    tail_text = _join(tail)
    place = _PLACE.match(tail_text)
    if place and (_DATE.fullmatch(place.group(1)) or place.group(1).split()[0] in _MONTH_SET
                  or place.group(1).endswith("'s")):  # "in Melanie's paintings": no place
        place = None
    after_place = tail_text[place.end():].split()[:1] if place else []
    if after_place and after_place[0].isalpha() and after_place[0].islower() and is_noun(after_place[0]) and \
            after_place[0] not in _AFTER_A_PLACE:
        place = None  # "in UX research", "at Google headquarters": the name modifies a noun
    if not place:  # "volunteered with her family at a homeless shelter"
        at = re.match(r"^(?:with (?:her|his|their) \w+ )?at\s+((?:a|an|the)\s+[a-z][\w-]*(?:\s+[a-z][\w-]*)?)\b",
                      tail_text)
        if at and not at.group(1).split()[-1].endswith(("ing", "ly")) and \
                at.group(1).split()[-1] not in _BOUNDARY | {"time", "age", "end", "moment", "same"}:
            out.append((f"Where {pre} {vobj}?", at.group(1)))
    m = _DATE.search(tail_text)
    if m and date is None and when:
        date = m.group(1)
    if place:
        out.append((f"Where {pre} {vobj}?", place.group(1)))
        vobj = f"{vobj} {tail_text[:place.end()]}"
    if date:
        out.append((f"When {pre} {vobj}?", date))
    if not place and not m:  # "took her kids to the museum": Where
        to = re.match(r"^to\s+((?:the|a|an)\s+[a-z][\w-]*(?:\s+[a-z][\w-]*)?)\b(?!\s+(?:of|for)\b)", tail_text)
        if to and to.group(1).split()[-1] in _ADVERBS | _BOUNDARY | _SUBJECT_PRONOUNS:
            to = re.match(r"^to\s+((?:the|a|an)\s+[a-z][\w-]*)", tail_text)
        # a person is no place: "wrote a letter to the people she met"
        if to and not to.group(1).split()[-1].endswith(("ing", "ly")) and to.group(1).split()[-1] not in _PEOPLE:
            out.append((f"Where {pre} {vobj}?", to.group(1)))
    reason = re.match(r"^(?:in order\s+)?(to\s+(?!(?:the|a|an|her|his|their|my|our|its|each|them|him|others|"
                      r"oneself|one|themselves|herself|himself|people|someone)\b)[a-z]\w*[^,;]*|"
                      r"because\s+[^,;]*|due to\s+[^,;]*)(,?)", tail_text) if why else None
    if reason and reason.group(1).startswith("to ") and not can_be_bare_verb(reason.group(1).split()[1]):
        reason = None  # "updating his pitch to investors": a receiver, not a purpose
    if reason and not (reason.group(1).startswith("due") and reason.group(2)):  # "due to its grip, ..." is a list
        answer = _first_predicate(re.sub(r"^due to\s+", "", reason.group(1)).rstrip(",. "))
        if len(answer.split()) <= max_words:
            out.append((f"Why {pre} {vobj}?", answer))
    return out


def rule_pairs(text: str, max_pairs: int = 2, max_words: int = 15, user: str | None = None) -> list[tuple[str, str]]:
    """Templated factoid pairs from one memory text (subject / verb / object / date / place).

    Deterministic; at most ``max_pairs`` pairs per clause of the text. Relative times
    ("last Friday") are never used as answers: the context carries no date to resolve them.
    With ``user`` (a name, or a store id such as "conv-26:Caroline"), only clauses about the
    user are asked about (a remembered turn also speaks of the other person: "Caroline will be
    a great counselor" is Melanie's memory).
    """
    first = first_name(user).lower() if user is not None else None
    pairs: list[tuple[str, str]] = []
    queue = list(_clauses(text))
    while queue:
        clause, lead_date, session = queue.pop(0)
        toks = _WORD.findall(clause.replace("\u2019", "'"))
        found: list[tuple[str, str]] = []
        i = 0  # subject: leading run of capitalised words (and "X and Y")
        while i < len(toks) and (toks[i][:1].isupper() or (toks[i] == "and" and i + 1 < len(toks)
                                                           and toks[i + 1][:1].isupper())):
            i += 1
        if i == 0 or i >= len(toks) or i > 5:
            continue
        # "Melanie and her kids ...", "Melanie's family ...": the user's group or relative is the subject
        if i + 2 < len(toks) and toks[i] == "and" and toks[i + 1].lower() in ("her", "his", "their") and \
                toks[i + 2][:1].islower():
            i += 3
        elif toks[i - 1].endswith("'s") and i + 1 < len(toks) and toks[i].lower() in _RELATIVES:
            i += 1
        subject, rest = _join(toks[:i]), toks[i:]
        if " and " in subject and _CLOCK.search(clause):
            continue  # "Gina and Jon caught up at 5:44 pm": the conversation itself
        if subject.lower().startswith(("the ", "a ", "an ", "according", "on ", "in ", "after ")):
            continue
        if first is not None and re.split(r"[\s']", subject.lower())[0] != first:
            continue
        second = _second_predicate(subject, rest)
        if second:  # "Jon is working on a plan and looking for investors": a clause of its own (its
            queue.insert(0, (second, lead_date, None))  # own date only: it is often the first's aftermath
        if session and re.search(r", (?:and )?[a-z]+ed\b", clause):
            session = None  # "lost her job, started a store, and ...": a summary, not the session's news
        named = list(_NAMED.finditer(clause))
        if subject.endswith("'s"):  # "X's favorite book is Y" -> What is X's favorite book? Y
            for j, t in enumerate(rest):
                if t.lower() in ("is", "are", "was", "were") and 0 < j <= 4:
                    obj, _ = _phrase(rest[j + 1:], max_words)
                    noun = _join(rest[:j])
                    # "Maya's doctor said Maya's iron was ...": no noun; "Maya's colleague Priya is ...": a person
                    # is no thing to ask What of; "... is lovely": an adjective is no answer
                    garbled = any(w.endswith("'s") or (_lemma_past(w.lower()) or "") in _CLAUSE_VERBS
                                  for w in rest[:j]) or rest[j - 1][:1].isupper() or _adjective(obj)
                    if obj and noun and not garbled and not any(c in noun for c in ",;") and \
                            obj.lower() not in _EMPTY_OBJECTS \
                            and not (obj[:1].islower() and obj.split()[0].endswith(("ing", "ed"))) \
                            and not set(obj.lower().split()[:2]) & _FRAME_NOUNS:
                        found.append((f"What {t.lower()} {subject} {noun}?", obj))
                    break
        elif m := _HOW_LONG.match(rest_text := _join(rest)):
            found.append((f"How long {m.group(1)} {subject} been {m.group(2)}?", m.group(3)))
        elif m := _FAN.match(rest_text):
            obj, _ = _phrase(_WORD.findall(rest_text[m.end():]), max_words)
            if obj and obj.lower() not in _EMPTY_OBJECTS:
                found.append((f"What {rest[0].lower()} {subject} a fan of?", obj))
        elif m := _ADJ_PREP.match(rest_text):
            obj, _ = _phrase(_WORD.findall(rest_text[m.end():]), max_words)
            if obj and obj.lower() not in _EMPTY_OBJECTS and not obj.split()[0].lower() in _PERCEPTION:
                found.append((f"What {m.group(1)} {subject} {m.group(2)} {m.group(3)}?", obj))
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
                # a past event with no date of its own happened on or before the session it was
                # told in: its When answer is the session date (not for "recently", "years ago", ...)
                lemma = _lemma_present(base) or (verb if aux in ("did", "does", "do") else None) or \
                    verb_base(base, "participle") or base
                social = bool({lemma, base} & _SOCIAL)  # no When, no Why: the date and the "to" are the talk's
                when = None if social else lead_date or (
                    session if aux == "did" and session and not _DATE.search(clause) and not _UNDATED.search(clause)
                    else None)
                why = lemma not in _NO_WHY and base.removesuffix("ing") not in _NO_WHY and not social
                if base in _OPINION_VERBS or lemma in _OPINION_VERBS or base.removesuffix("ing") in _OPINION_VERBS \
                        or base in _LIGHT or lemma in _LIGHT:
                    pass  # an opinion or a light verb: no fact to ask about
                elif base in _CLAUSE_VERBS or (lemma in _THAT_VERBS and after[:1] and after[0].lower() == "that") or base.rstrip("ing") in _CLAUSE_VERBS or \
                        _lemma_present(base) in _CLAUSE_VERBS:
                    obj = _clause_object(after, min(max_words, _MAX_CLAUSE_WORDS))
                    if obj and not social and obj.lower() not in _EMPTY_OBJECTS and obj.split()[0].lower() not in _BOUNDARY and \
                            obj.split()[0].lower() not in _PRONOUNS:  # "believes they are ...": who is "they"?
                        found.append((f"What {head}?", obj))
                elif after and after[0].lower() == "to" and (verb in _MOTION or base in _MOTION
                                                             or _lemma_past(base) in _MOTION):
                    obj, n = _phrase(after[1:], max_words)
                    if obj:
                        found.append((f"Where {head}?", obj))
                        found += _adjunct_pairs(pre, f"{verb} to {obj}", after[1 + n:], when, max_words)
                elif after and after[0].lower() == "to" and len(after) > 1 and after[1][:1].islower():
                    obj = _clause_object(after[1:], max_words)  # "plans to open a shop"
                    if obj:
                        found.append((f"What {head} to do?", obj))
                else:
                    while after and after[0].lower() in _ADVERBS:  # "working hard on X"
                        after = after[1:]
                    prep = []
                    k = 0
                    while k < len(after) and after[k].lower() in _PARTICLES and k < 2 and \
                            not (k == 0 and after[k].lower() in ("in", "at", "with", "to")) and \
                            not (after[k].lower() == "on" and k + 1 < len(after) and
                                 (after[k + 1][:1].isdigit() or after[k + 1] in _MONTH_SET)):
                        prep.append(after[k].lower())
                        k += 1
                    obj, n = _phrase(after[k:], max_words)
                    intransitive = not prep  # no object and no particle: "lived in Boston on 8 May 2023"
                    tail0 = after[k + n:]
                    if obj and obj.split()[-1].lower() in _GENERIC_HEADS and tail0 and \
                            tail0[0].lower() in ("to", "in", "with", "at", "for"):
                        more = _clause_object(tail0, 6) if tail0[0].lower() == "to" else \
                            _phrase(tail0[1:], max_words, continued=False)[0]
                        if more:
                            more = more if tail0[0].lower() == "to" else f"{tail0[0].lower()} {more}"
                            obj, n = f"{obj} {more}", len(after) - k  # what follows is no adjunct of the verb
                        else:
                            obj = ""
                    words = obj.split() if obj else []
                    if len(words) > 1 and lemma in _DITRANSITIVE and words[0][:1].isupper() and \
                            not words[0].endswith("'s") and words[1][:1].islower():
                        prep, obj = [*prep, words[0]], " ".join(words[1:])  # "gives Jon tips"
                    elif len(words) > 1 and lemma in _DITRANSITIVE and words[0].lower() in ("her", "him", "them") and \
                            words[1].lower() in _DETERMINERS | {"some"}:
                        obj = " ".join(words[1:])  # "shows her some figurines": who "her" is, the memory does not say
                    one = obj.lower() if obj and len(obj.split()) == 1 and obj[:1].islower() else ""
                    if obj and (obj.split()[0].lower() in _PERCEPTION or (
                            lemma in ("take", "make", "have") and obj.split()[-1].lower() in _IDIOM_OBJECTS) or (
                            lemma in _TIME_VERBS and "time" in obj.lower().split()[:4])):
                        obj, n, intransitive = "", 0, False  # no question, and no intransitive reading either
                    if obj and obj.lower() not in _EMPTY_OBJECTS and not (
                            one.endswith("ing") and not prep and (one not in _ING_NOUNS or lemma in _MOTION)) and \
                            not one.endswith("ed") and not _vague(obj) and not one.endswith(_ABSTRACT_ENDINGS):
                        vphrase = " ".join([verb, *prep])
                        who = "Who" if (obj[:1].isupper() and " " not in obj and not obj.isupper()) or \
                            (_names_people(obj) and prep[-1:] != ["as"]) else "What"  # "Who did Gina meet? ->
                        # some investors", "Who did Caroline reach out to? -> her friend Melanie"
                        if who == "Who" and lemma in _PLACE_VERBS:
                            who = "Where"
                        rest_after = after[k + n:]
                        neg = "not " if rest_after[:1] and rest_after[0].lower() == "not" else ""
                        if neg:
                            rest_after = rest_after[1:]
                        to_do = _clause_object(rest_after[1:], max_words) if (
                            rest_after and rest_after[0].lower() == "to" and len(rest_after) > 1
                            and rest_after[1][:1].islower() and rest_after[1].lower() not in _DETERMINERS) else ""
                        person = (obj[:1].isupper() and " " not in obj and not obj.endswith("'s")) or \
                            obj.lower() in ("him", "her", "them", "others")
                        if lemma == "update" and person:  # "updated Gina", not "is updating his business plan"
                            social, when, why = True, None, False
                        if to_do and lemma in _NO_WHY and lemma not in ("take", "bring"):
                            if person:  # "encourages Jon to keep pushing": the object's task is the fact
                                found.append((f"What {pre} {vphrase} {obj} {neg}to do?", _first_predicate(to_do)))
                            # else "encouraged students to ...", "supports Caroline's drive to ...": nothing
                        elif neg:
                            pass  # "advised Jon not to ...": who alone asks nothing
                        elif social:
                            pass  # "Who did Melanie praise? -> Caroline", "What did Jon mention? -> losing his job"
                        elif lemma in ("take", "bring") and (_names_people(obj) or obj.split()[-1].lower() in _ING_NOUNS):
                            pass  # "What does Melanie take? -> her family camping": where or what for, not whom
                        elif not (lemma in ("take", "bring") and _to_place(rest_after)):
                            found.append((f"{who} {pre} {vphrase}?", obj))
                    if obj and not _vague(obj):  # "When did Gina face challenges?": which ones?
                        vobj = " ".join([verb, *prep, obj])
                        tail = after[k + n:]
                        if tail and tail[0].lower() == "into" and found and found[-1][1] == obj:
                            into, m = _phrase(tail[1:], max_words, continued=False)
                            if into:  # "is turning his passion for dance into a business"
                                found[-1] = (f"What {pre} {' '.join([verb, *prep])} into {into}?", obj)
                                tail = tail[1 + m:]
                        if lemma in ("take", "bring") and _to_place(tail):
                            dest, m = _phrase(tail[1:], max_words, continued=False)
                            if dest:  # "took her kids to a pottery workshop": the When names it
                                found.append((f"Where {pre} {vobj}?", dest))
                                vobj, tail = f"{vobj} to {dest}", tail[1 + m:]
                        found += _adjunct_pairs(pre, vobj, tail, when, max_words, why=why, when=not social)
                    elif intransitive:  # a date of its own only
                        found += _adjunct_pairs(pre, verb, after, None if social else lead_date, max_words,
                                                when=not social)
        owner = subject if not subject.endswith("'s") else subject[:-2]
        for m in reversed(named):
            found.insert(1, (f"What is the name of {owner}'s {m.group(1)}?", m.group(2).strip("'\"")))
        pairs.extend(found[:max_pairs])
    return pairs
