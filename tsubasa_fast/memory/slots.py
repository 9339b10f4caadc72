"""What an observation is about: a shallow, rule-based reading of one memory sentence.

The rule manager (evolution.py) decides ADD / UPDATE / RECONCILE / IGNORE on *slots*, not only
on embedding similarity: "Maya has 3 cats" and "Maya has 2 cats" are 0.97 cosine-similar, yet
the count changed. A :class:`Slot` is one state the sentence asserts about a subject:

=============  ===============================  ===========================================
kind           topic                            fields (a changed field = a changed state)
=============  ===============================  ===========================================
residence      (none)                           place
job            (none)                           active, role, employer
count          the counted thing ("cat")        n
preference     what is liked ("run")            polarity (+ / -)
habit          the activity ("swim", "gym")     active, freq
relationship   (none)                           status, partner
diet           (none)                           diet
education      (none)                           status, field, school
age            (none)                           n
favorite       what kind ("band")               value
=============  ===============================  ===========================================

Two slots are the same when kind, subject (``maya``, ``maya's sister``; a pronoun matches any)
and topic agree; they conflict when a field both carry differs. English only, no model: the
patterns cover how observation sentences are written (present-tense third person, a name
first). Also here: the dated narrative form of a memory (``Priya lived in Manchester
(14 January 2023); Priya moved to Glasgow (5 June 2023).``: dates trail their clauses because
leading dates pull MiniLM embeddings away from the content), its segments, informative tokens
(numbers, names, dates) and a small past-tense rule,
so a reconciled memory reads as history plus current state.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass

from ..text import verb_base, verb_form

# ------------------------------------------------------------------ words
_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_ORDINALS = {w: i for i, w in enumerate(
    "zeroth first second third fourth fifth sixth seventh eighth ninth tenth".split()) if i}
_NUM = r"(?:\d+|" + "|".join(_NUMBER_WORDS) + r")"
MONTHS = [m for m in calendar.month_name if m]
_MONTH_RE = "|".join(MONTHS)
DATE = rf"\d{{1,2}} (?:{_MONTH_RE}) \d{{4}}"
STOP = set("""a an the and or but of to in on at for with from by as is are was were be been being it its
this that these those he she they them his her their hers him i you we my our your has have had do does did
not no so very just also about into over after before during than then there here who what when where which
how now still really currently recently lately again too some any more most much many lot lots quite
truly deeply always often usually new""".split())
PRONOUNS = {"he", "she", "they", "her", "his", "their", "him", "them"}
_ADVERBS = {"now", "currently", "still", "also", "recently", "finally", "really", "actually", "just",
            "lately", "already", "officially", "happily", "sadly", "even"}
# Canonical forms for words that name the same thing.
_SYNONYMS = {"kid": "child", "children": "child", "puppy": "dog", "puppie": "dog", "kitten": "cat",
             "jog": "run", "jogg": "run", "runn": "run", "ran": "run", "favourite": "favorite",
             "cycl": "bike", "bik": "bike", "bicycl": "bike", "vegetarian": "vegetarian",
             "mom": "mother", "mum": "mother", "dad": "father", "people": "person"}
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'+-]*")


def stem(word: str) -> str:
    """A tiny suffix stripper, consistent on both sides of a comparison (running ~ runs ~ run)."""
    w = word.lower().strip("'").removesuffix("'s")
    if w in _SYNONYMS:
        return _SYNONYMS[w]
    if w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "y"
    else:
        for suf in ("ing", "ed", "es", "s", "e"):
            if w.endswith(suf) and len(w) - len(suf) >= 3 and not w.endswith("ss"):
                w = w[: -len(suf)]
                break
        if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "aeiouls":
            w = w[:-1]  # running -> runn -> run, jogging -> jog
    return _SYNONYMS.get(w, w)


def content_stems(text: str) -> set[str]:
    """Stems of the content words of ``text`` (stop words and one-letter tokens dropped)."""
    return {stem(w) for w in _WORD.findall(text) if w.lower() not in STOP and len(w) > 1}


def words(text: str) -> set[str]:
    """Lower-cased word tokens of ``text``."""
    return {w.lower().removesuffix("'s") for w in _WORD.findall(text)}


def _value_tokens(phrase: str) -> tuple[frozenset, frozenset]:
    """(capitalised names, content stems) of a slot value phrase."""
    words = _WORD.findall(phrase)
    caps = frozenset(w.lower().removesuffix("'s") for w in words if w[0].isupper())
    return caps, frozenset(content_stems(phrase))


def same_value(a: str, b: str) -> bool:
    """Do two value phrases name the same thing? Names decide when both carry names."""
    if a == b:
        return True
    (ca, sa), (cb, sb) = _value_tokens(a), _value_tokens(b)
    if ca and cb:
        return bool(ca & cb)
    if sa and sb:
        return bool(sa & sb)
    return a.strip().lower() == b.strip().lower()


def _number(token: str) -> int:
    t = token.lower()
    return int(t) if t.isdigit() else _NUMBER_WORDS.get(t, _ORDINALS.get(t, -1))


# ------------------------------------------------------------------ narrative form
_PREFIX = re.compile(r"^\s*\[([^\]]*)\]\s*")
_SEG_TAIL = re.compile(rf"^(.*?)\s*\(({DATE}(?:, {DATE})*)\)$", re.S)       # "clause (D1, D2)"
_SEG_HEAD = re.compile(rf"^[Oo]n ({DATE}(?:(?:, | and ){DATE})*),? (.*)$", re.S)  # "On D1 clause"
_SEG_SPLIT = re.compile(rf"(?<=\d{{4}}\));\s+|;\s+(?=on {DATE})")


def strip_prefix(text: str) -> str:
    """Drop the ``[8 May 2023]`` date prefix that ingest may put in front of a memory."""
    return _PREFIX.sub("", text, count=1).strip()


def human_date(date: str | None) -> str | None:
    """ISO ``2023-05-08`` -> ``8 May 2023``; anything else is returned as it is."""
    if not date:
        return None
    m = re.match(r"(\d{4})-(\d{2})-(\d{2})", date)
    if not m:
        return date
    return f"{int(m.group(3))} {calendar.month_name[int(m.group(2))]} {m.group(1)}"


@dataclass
class Segment:
    """One dated clause of a memory: ``dates`` (human dates, may be empty) and the clause."""
    dates: list[str]
    clause: str


def segments(text: str, date: str | None = None) -> list[Segment]:
    """Split a memory into dated clauses; a plain sentence is one clause dated ``date``."""
    body = strip_prefix(text).strip()
    out = []
    for p in _SEG_SPLIT.split(body):
        p = p.strip().rstrip(".").strip()
        tail, head = _SEG_TAIL.match(p), _SEG_HEAD.match(p)
        if tail:
            out.append(Segment(tail.group(2).split(", "), tail.group(1).strip()))
        elif head:
            out.append(Segment(re.split(r", | and ", head.group(1)), head.group(2).strip()))
        else:
            out.append(Segment([], p))
    if len(out) == 1 and not out[0].dates:
        prefix = _PREFIX.match(text)
        d = human_date(date) or (prefix.group(1).strip() if prefix else None)
        if d and re.fullmatch(DATE, d):
            out[0].dates = [d]
    return out


def render(segs: list[Segment], dated: bool = True) -> str:
    """``c1 (D1); c2 (D2, D3).``: clauses in time order, each with its dates (first and last);
    ``dated=False`` leaves the dates out (``c1; c2.``)."""
    parts = []
    for s in segs:
        dates = [d for d in dict.fromkeys(s.dates) if d] if dated else []
        if len(dates) > 2:
            dates = [dates[0], dates[-1]]
        clause = s.clause.strip().rstrip(".")
        parts.append(f"{clause} ({', '.join(dates)})" if dates else clause)
    return "; ".join(parts) + "."


def current_clause(text: str) -> str:
    """The last clause of a memory: its current state (earlier clauses are history)."""
    return segments(text)[-1].clause


# ------------------------------------------------------------------ tense
_PAST_OF = {"is": "was", "are": "were", "have": "had", "can": "could", "will": "would"}  # not third-person -s
_PAST_SKIP = {"was", "were", "had", "did", "used"}


def _past_of_present(w: str) -> str | None:
    """``lives`` -> ``lived``, ``goes`` -> ``went`` (lemminflect); None for no present verb."""
    if w in _PAST_OF:
        return _PAST_OF[w]
    base = verb_base(w, "present")
    return None if base is None else verb_form(base, "past")


def past_tense(clause: str) -> str:
    """Put the main verb after the subject in the past ("Maya lives in Leeds" -> "Maya lived
    in Leeds"); time adverbs like "now" are dropped. Unknown shapes are returned unchanged."""
    span = _subject_span(clause)
    if span is None:
        return clause
    head, rest = clause[:span], clause[span:]
    words = rest.split(" ")
    i = 0
    while i < len(words) and words[i].lower() in _ADVERBS:
        i += 1
    if i >= len(words) or not words[i]:
        return clause
    w = words[i]
    lw = w.lower()
    if lw in _PAST_SKIP:
        return clause
    past = _past_of_present(lw) if lw.isalpha() else None
    if past is None:
        return clause
    kept = [x for x in words[:i] if x.lower() not in {"now", "currently", "still"}]
    return head + " ".join(kept + [past] + words[i + 1:]).replace("  ", " ")


# ------------------------------------------------------------------ subject
_LEAD_DATE = re.compile(rf"^(?:(?:on|in|since|by|as of) (?:{DATE}|(?:{_MONTH_RE})(?: \d{{4}})?|\d{{4}}),?\s+)", re.I)
_SUBJECT = re.compile(r"^((?:[A-Z][\w-]*)(?:\s+[A-Z][\w-]*)*)('s(?:\s+[a-z][\w-]*){1,3}?)?(?=\s|,|$)")


def _strip_lead(clause: str) -> str:
    c = _LEAD_DATE.sub("", clause.strip())
    return c


def _subject_span(clause: str) -> int | None:
    """Character offset where the predicate starts (after the name / possessive subject)."""
    m = _SUBJECT.match(clause)
    if not m:
        return None
    end = m.end(1)
    # "Maya's sister lives": the possessive phrase is part of the subject when a verb follows it
    if m.group(2):
        tail = clause[m.end(1):]
        pm = re.match(r"'s((?:\s+[a-z][\w-]*){1,3}?)\s+(?=(?:now |currently |still |also )?"
                      r"(?:is|are|has|have|was|lives|works|moved|loves|likes|enjoys|hates|got|became|"
                      r"goes|plays|runs|[a-z]+s)\b)", tail)
        if pm:
            end = m.end(1) + len("'s") + len(pm.group(1))
    return end + 1 if end < len(clause) and clause[end] == " " else end


def subject_of(text: str) -> str | None:
    """Normalised subject of a clause: ``maya``, ``maya's sister``; None for a pronoun or none."""
    clause = _strip_lead(current_clause(text))
    first = clause.split(" ", 1)[0].lower()
    if first in PRONOUNS:
        return None
    span = _subject_span(clause)
    if span is None:
        return None
    subj = clause[:span].strip().rstrip(",").lower()
    subj = subj.split(" and ")[0]
    return subj or None


def subjects_compatible(a: str | None, b: str | None) -> bool:
    return a is None or b is None or a == b


# ------------------------------------------------------------------ slots
@dataclass(frozen=True)
class Slot:
    kind: str
    topic: frozenset
    subject: str | None
    fields: tuple  # sorted (name, value) pairs

    def get(self, name: str):
        return dict(self.fields).get(name)

    def same_slot(self, other: "Slot") -> bool:
        return (self.kind == other.kind and subjects_compatible(self.subject, other.subject)
                and (bool(self.topic & other.topic) or (not self.topic and not other.topic)))

    def conflicts(self, earlier: "Slot") -> bool:
        """A field both carry has different values (a changed state). Ending a job is a change
        of the ``earlier`` job only when it names the same role or employer, or names none."""
        mine, theirs = dict(self.fields), dict(earlier.fields)
        if self.kind == "job" and mine.get("active") == "no" and theirs.get("active") == "yes":
            ids = ("role", "employer")
            if any(f in mine for f in ids) and any(f in theirs for f in ids):
                return any(f in mine and f in theirs and same_value(mine[f], theirs[f]) for f in ids)
        for name in mine.keys() & theirs.keys():
            a, b = mine[name], theirs[name]
            if name == "n" and "+1" in (a, b):  # "another cat": the count went up
                return True
            if isinstance(a, str) and isinstance(b, str) and name in _PHRASE_FIELDS:
                if not same_value(a, b):
                    return True
            elif a != b:
                return True
        return False

    def __str__(self) -> str:
        topic = "/".join(sorted(self.topic))
        f = ", ".join(f"{k}={v}" for k, v in self.fields)
        return f"{self.kind}{'(' + topic + ')' if topic else ''}[{self.subject or '?'}]{{{f}}}"


_PHRASE_FIELDS = {"place", "role", "employer", "partner", "field", "school", "value"}
_END = (r"(?=\s+(?:because|since|for|with|and|after|before|when|while|where|to|in order|last|this|next|like|such as|"
        r"ago|but|who|which|that|as|on|at|from|in (?:\d|the (?:morning|evening|summer|winter|spring|autumn)|"
        rf"{_MONTH_RE}))\b|\s*[,.;:!?()\"]|$)")
_VAL = r"(?P<val>(?:the |a |an |her |his |their )?[^,.;:!?()\"]+?)" + _END
_NAME = r"([A-Z][\w'-]*(?: [A-Z][\w'-]*)?)"
_OCCUPATIONS = set("""nurse teacher doctor engineer lawyer accountant chef cook baker barista waiter waitress
pilot dentist pharmacist architect designer developer programmer scientist researcher professor lecturer
student firefighter police officer paramedic electrician plumber carpenter mechanic farmer journalist writer
author editor photographer artist musician actor actress dancer singer manager director consultant analyst
cashier librarian therapist counselor counsellor psychologist social worker veterinarian vet receptionist
secretary driver translator tutor coach trainer surgeon midwife banker salesperson realtor entrepreneur
intern instructor principal""".split())
_PETS = (r"(?:cat|dog|puppy|kitten|rabbit|bunny|hamster|parrot|horse|fish|turtle|tortoise|snake|bird|guinea pig|"
         r"ferret|gerbil)")
_FREQ = (r"(?P<freq>every (?:single )?(?:day|morning|evening|night|week|weekend|month|year|monday|tuesday|"
         r"wednesday|thursday|friday|saturday|sunday)|each (?:day|morning|week|weekend)|daily|weekly|nightly|"
         r"on (?:weekends|the weekends|weekdays|mondays|tuesdays|wednesdays|thursdays|fridays|saturdays|"
         r"sundays)|(?:once|twice|three times|four times|\d+ times) a (?:day|week|month)|most days|regularly)")
_GENERIC_VERBS = {"go", "goes", "going", "went", "play", "plays", "playing", "played", "do", "does", "doing",
                  "did", "practice", "practices", "practicing", "practise", "practises", "attend", "attends",
                  "attending", "take", "takes", "taking", "took", "have", "has", "having", "visit", "visits",
                  "visiting", "hit", "hits", "hitting"}
_NOT_HABIT = {"job", "work", "dat", "business", "company", "relationship", "career", "school", "college",
              "university", "meat", "dairy", "eat"}


def _activity(verb: str, rest: str) -> frozenset:
    """What a habit is about: the verb, or the object of a generic verb ("goes to the gym" -> gym)."""
    if verb.lower() in _GENERIC_VERBS:
        words = [w for w in _WORD.findall(rest) if w.lower() not in STOP and w.lower() not in ("to",)]
        if words:
            return frozenset({stem(words[0])})
    return frozenset({stem(verb)})


def _slot(kind: str, subject, topic=(), **fields) -> Slot:
    f = tuple(sorted((k, v) for k, v in fields.items() if v is not None and v != ""))
    return Slot(kind, frozenset(topic), subject, f)


def _clean_val(v: str | None) -> str | None:
    if v is None:
        return None
    v = re.sub(r"^(?:the|a|an|her|his|their)\s+", "", v.strip(), flags=re.I)
    return v.strip() or None


def _residence(c: str, subj) -> list[Slot]:
    out = []
    pat = re.compile(r"\b(?<!was )(?<!were )(?<!felt )(?:lives|lived|is living|has been living|has lived|resides|"
                     r"is based|is now based|settled|has settled|moved(?: back)?|moves|relocated|has relocated|"
                     r"is relocating|is moving|will move|is located|calls)\s+"
                     r"(?:(?:from (?P<from>[A-Z][\w' -]*?) )?to|in|into|at|home)\s+" + _VAL)
    for m in pat.finditer(c):
        val = _clean_val(m.group("val"))
        if val and val.lower() not in ("tears", "it", "her", "him", "them", "with"):
            out.append(_slot("residence", subj, place=val))
    return out[-1:]


_OWN_BUSINESS = re.compile(
    r"\b(?:started|starting|start|launched|launching|opened|opening|runs|is running|running|owns|set up)\s+"
    r"(?:her|his|their|an?) (?:own |dream |new |online )+(?P<val>(?:[\w-]+ ){0,2}?(?:business|store|shop|"
    r"company|studio|restaurant|bakery|cafe|café|firm|practice|agency|brand))\b")


def _job(c: str, subj) -> list[Slot]:
    out = []
    own = _OWN_BUSINESS.search(c)
    if own:  # "started her own store after losing her job": the new state is the main news
        return [_slot("job", subj, active="yes", employer="own " + own.group("val"))]
    # finite verbs only: "after losing his job" refers back to an event, it is no news
    stop = re.search(r"\b(?:quit|quits|left|leaves|lost|loses|resigned from|was fired from|got fired from|"
                     r"was laid off from|retired from)\s+(?:her|his|their|the|a)\s+(?:[\w-]+\s+){0,3}?job"
                     r"(?:\s+as\s+(?:a |an )?(?P<role>[a-z][\w ]*?)" + _END + r"|\s+at\s+" + _VAL + ")?", c)
    if stop is None:
        stop = re.search(r"\b(?:was|got|has been) (?:laid off|fired|made redundant)\b|\bretired\b|"
                         r"\bis (?:now )?(?:unemployed|out of work|jobless)\b|\bstopped working\b", c)
    if stop is not None:
        gd = stop.groupdict()
        out.append(_slot("job", subj, active="no", role=_clean_val(gd.get("role")),
                         employer=_clean_val(gd.get("val"))))
        return out
    role = emp = None
    m = re.search(r"\b(?:works|worked|is working|working|job|position|started working|began working|"
                  r"is employed|started a new job|got a (?:new )?job|took a job|landed a job)\s+as\s+"
                  r"(?:a |an |the )?(?P<role>[a-z][\w -]*?)" + _END, c)
    if m:
        role = m.group("role")
    occupations = "|".join(sorted(_OCCUPATIONS, key=len, reverse=True))
    m = re.search(r"\bas (?:a |an )(?P<role>(?:[a-z]+ )?(?:" + occupations + r"))\b", c)
    if role is None and m:
        role = m.group("role")
    m = re.search(r"\b(?:was promoted to|became|has become|is now|becomes)\s+(?:a |an |the )?"
                  r"(?P<role>(?:[a-z]+ )?(?:" + "|".join(sorted(_OCCUPATIONS, key=len, reverse=True)) + r"))\b", c)
    if m:
        role = m.group("role")
    elif role is None:
        m = re.search(r"\bis (?:a |an )(?P<role>(?:[a-z]+ )?(?:" + "|".join(sorted(_OCCUPATIONS, key=len, reverse=True))
                      + r"))\b", c)
        if m:
            role = m.group("role")
    m = re.search(r"\b(?:works|worked|is working|has been working|started working|began working|"
                  r"got a (?:new )?job|took a job|has a (?:new )?job|started a (?:new )?job|accepted a job|"
                  r"landed a job|is employed|was hired|got hired|is an? \w+)\s+(?:at|for|by|in)\s+" + _VAL, c)
    if m:
        emp = _clean_val(m.group("val"))
    m2 = re.search(r"\bjoined (?P<val>[A-Z][\w'&-]*(?: [A-Z][\w'&-]*)*)"
                   r"(?: as (?:a |an )?(?P<role>[a-z][\w ]*?)" + _END + ")?", c)
    if m2 and (m2.group("role") or re.search(r"\b(?:job|work|hired|employ|company)\b", c)):
        emp, role = m2.group("val"), m2.group("role") or role
    if role or emp:
        out.append(_slot("job", subj, active="yes", role=_clean_val(role), employer=emp))
    return out


def _count(c: str, subj) -> list[Slot]:
    out = []
    for m in re.finditer(r"\b(?:has|have|owns|keeps|raises|is raising|now has|got|adopted|looks after)\s+"
                         r"(?:(?:exactly|only|just|now|a total of)\s+)?(?P<n>" + _NUM + r")\s+"
                         r"(?P<w1>[a-z]+)(?:\s+(?P<w2>[a-z]+))?", c):
        w1, w2 = m.group("w1"), m.group("w2")
        noun = w2 if (w2 and not w1.endswith("s") and w2 not in STOP and w2 not in
                      ("named", "called", "who", "which", "that", "and")) else w1
        out.append(_slot("count", subj, {stem(noun)}, n=_number(m.group("n"))))
    for m in re.finditer(r"\b(?:adopted|got|bought|has|welcomed|had)\s+(?:a|her|his|their)\s+"
                         r"(?P<ord>second|third|fourth|fifth|sixth)\s+(?P<noun>[a-z]+)", c):
        out.append(_slot("count", subj, {stem(m.group("noun"))}, n=_ORDINALS[m.group("ord")]))
    pets = re.search(r"\b(?:has|owns)\s+(?:a|an|one)\s+(?:\w+\s+)?" + _PETS + r"\b.*", c)
    if pets:
        for m in re.finditer(r"(?:^|\band\s+|,\s*)(?:has\s+|owns\s+)?(?:a|an|one)\s+(?:\w+\s+)?(?P<noun>"
                             + _PETS + r")\b", pets.group(0)):
            out.append(_slot("count", subj, {stem(m.group("noun").split()[-1])}, n=1))
    for m in re.finditer(r"\b(?:another|one more)\s+(?:\w+\s+)?(?P<noun>" + _PETS + r")\b", c):
        out.append(_slot("count", subj, {stem(m.group("noun").split()[-1])}, n="+1"))
    return out


_POS = (r"loves|love|likes|enjoys|adores|is passionate about|is really into|is into|is a (?:big |huge )?fan of|"
        r"is fond of|is keen on|has a passion for|has fallen in love with|fell in love with|is obsessed with")
_NEG = (r"hates|hate|dislikes|detests|can't stand|cannot stand|can no longer stand|doesn't like|does not like|"
        r"doesn't enjoy|does not enjoy|no longer (?:likes|enjoys|loves)|is not a fan of|isn't a fan of|"
        r"is no longer (?:into|a fan of)|lost interest in|has lost interest in|got tired of|is tired of|"
        r"grew tired of|has grown to (?:hate|dislike)|now hates|is sick of|got bored of|is bored of")


def _preference(c: str, subj) -> list[Slot]:
    out = []
    for m in re.finditer(rf"\b(?P<verb>{_NEG}|{_POS})\s+" + _VAL, c):
        obj = m.group("val")
        words = [w for w in _WORD.findall(obj) if w.lower() not in STOP][:3]
        if not words:
            continue
        polarity = "-" if re.fullmatch(_NEG, m.group("verb")) else "+"
        out.append(_slot("preference", subj, {stem(w) for w in words}, polarity=polarity))
    return out


def _habit(c: str, subj) -> list[Slot]:
    out = []
    stop = re.search(r"\b(?:stopped|quit|quits|gave up|has given up|gives up|no longer|has stopped|"
                     r"cancell?ed (?:her|his|their)|dropped out of)\s+(?:going\s+)?(?P<rest>[\w' -]+)", c)
    if stop:
        words = [w for w in _WORD.findall(stop.group("rest")) if w.lower() not in STOP]
        if words:
            topic = _activity(words[0], " ".join(words[1:])) if len(words) > 1 else frozenset({stem(words[0])})
            if not topic & _NOT_HABIT:
                out.append(_slot("habit", subj, topic, active="no"))
                return out
    dont = re.search(r"\b(?:doesn't|does not|don't)\s+(?P<verb>[a-z]+)(?P<rest>[\w' -]*?)\s+any\s?more\b", c)
    if dont:
        topic = _activity(dont.group("verb"), dont.group("rest"))
        if not topic & _NOT_HABIT:
            return [_slot("habit", subj, topic, active="no")]
    start = re.search(r"\b(?:started|starts|took up|has taken up|picked up|began|has begun|resumed|"
                      r"went back to)\s+(?P<rest>[\w' -]+)", c)
    if start:
        words = [w for w in _WORD.findall(start.group("rest")) if w.lower() not in STOP]
        if words and words[0].endswith("ing"):
            topic = _activity(words[0], " ".join(words[1:]))
            if not topic & _NOT_HABIT:
                freq = re.search(_FREQ, c)
                out.append(_slot("habit", subj, topic, active="yes", freq=freq.group("freq") if freq else None))
                return out
    again = re.search(r"\b(?P<verb>[a-z]+s)\b(?P<rest>[\w' -]*?)\s+again\b", c)
    freq = re.search(r"\b(?P<verb>[a-z]+(?:s|ing))\b(?P<rest>(?:\s+[\w'-]+){0,6}?)\s+" + _FREQ, c)
    if freq and freq.group("verb") not in ("is", "has", "was", "does", "times", "days"):
        topic = _activity(freq.group("verb"), freq.group("rest"))
        if not topic & _NOT_HABIT:
            out.append(_slot("habit", subj, topic, active="yes", freq=freq.group("freq")))
    elif again and again.group("verb") not in ("is", "has", "was", "does"):
        topic = _activity(again.group("verb"), again.group("rest"))
        if not topic & _NOT_HABIT:
            out.append(_slot("habit", subj, topic, active="yes"))
    return out


def _relationship(c: str, subj) -> list[Slot]:
    rules = [
        (r"\b(?:divorced|is divorcing|got divorced|is divorced|filed for divorce)(?: from)?(?: " + _NAME + ")?",
         "divorced"),
        (r"\b(?:broke up with|split up with|split from|separated from|left (?:her|his|their) "
         r"(?:boyfriend|girlfriend|partner|husband|wife|fianc[eé]e?))(?: " + _NAME + ")?", "separated"),
        (r"\b(?:and " + _NAME + r" (?:broke up|split up|separated))", "separated"),
        (r"\bis (?:now )?single\b", "single"),
        (r"\b(?:is|got|was|has been) engaged(?: to " + _NAME + r")?|\band " + _NAME +
         r" (?:got|are|became) engaged", "engaged"),
        (r"\b(?:is|got|has been|was) married(?: to " + _NAME + r")?|\bmarried " + _NAME +
         r"|\band " + _NAME + r" (?:got|are|were) married|\b(?:her|his) (?:husband|wife),? " + _NAME, "married"),
        (r"\b(?:is|has been|started|began|has started) (?:dating|seeing|going out with) " + _NAME +
         r"|\bhas a (?:new )?(?:boyfriend|girlfriend|partner)(?:,? (?:named |called )?" + _NAME + ")?"
         r"|\band " + _NAME + r" (?:started dating|are dating|are a couple)", "dating"),
    ]
    for pat, status in rules:
        m = re.search(pat, c)
        if m:
            partners = [g for g in m.groups() if g]
            return [_slot("relationship", subj, status=status, partner=partners[0] if partners else None)]
    return []


def _diet(c: str, subj) -> list[Slot]:
    diets = r"(?P<d>vegan|vegetarian|pescatarian|pescetarian|keto|paleo|flexitarian|carnivore|gluten-free|dairy-free)"
    m = re.search(r"\b(?:no longer|stopped being|is not|isn't|quit being|gave up being)\s+(?:a |an )?" + diets, c)
    if m or re.search(r"\b(?:started|starts|began|went back to|is back to) eating (?:meat|fish|chicken|beef)\b|"
                      r"\beats (?:meat|fish|chicken|beef)(?: again)?\b", c):
        return [_slot("diet", subj, diet="omnivore")]
    m = re.search(r"\b(?:stopped|quit|gave up|cut out|no longer eats|doesn't eat|does not eat|avoids)\s+"
                  r"(?:eating )?(?P<food>red meat|meat|dairy|gluten|sugar|fish|pork|animal products)\b", c)
    if m:
        food = m.group("food")
        d = {"meat": "vegetarian", "red meat": "no red meat", "animal products": "vegan"}.get(food, f"no {food}")
        return [_slot("diet", subj, diet=d)]
    m = re.search(r"\b(?:is|became|has become|went|turned|is now|has been|follows a|is on a|started a)\s+"
                  r"(?:a |an |fully |strictly |now |mostly )*" + diets, c)
    if m:
        d = m.group("d").replace("pescetarian", "pescatarian")
        return [_slot("diet", subj, diet=d)]
    return []


def _education(c: str, subj) -> list[Slot]:
    m = re.search(r"\b(?:graduated|has graduated|finished (?:her|his|their) (?:degree|studies|course))"
                  r"(?: from " + _VAL + ")?", c)
    if m:
        return [_slot("education", subj, status="graduated", school=_clean_val(m.groupdict().get("val")))]
    m = re.search(r"\bdropped out of " + _VAL, c)
    if m:
        return [_slot("education", subj, status="dropped out", school=_clean_val(m.group("val")))]
    m = re.search(r"\b(?:studies|is studying|studying|is majoring in|majors in|is doing a (?:degree|masters|"
                  r"master's|PhD|phd) in|enrolled in a (?:course|degree|program) in)\s+(?P<field>[\w -]+?)" + _END +
                  r"(?:\s+at\s+" + _VAL + ")?", c)
    if m:
        return [_slot("education", subj, status="studying", field=m.group("field"),
                      school=_clean_val(m.group("val")))]
    m = re.search(r"\bis a student at " + _VAL, c)
    if m:
        return [_slot("education", subj, status="studying", school=_clean_val(m.group("val")))]
    return []


def _age(c: str, subj) -> list[Slot]:
    m = re.search(r"\b(?:is|turned|turns|just turned)\s+(?P<n>" + _NUM +
                  r")(?:\s+years old|\s+year-old|\b(?=\s*(?:today|this|last|on|\.|$)))", c)
    if m and (re.search(r"turn", m.group(0)) or "year" in m.group(0)):
        return [_slot("age", subj, n=_number(m.group("n")))]
    return []


def _favorite(c: str, subj) -> list[Slot]:
    who = re.match(r"([A-Z][\w-]*)'s favou?rite", c)
    subj = who.group(1).lower() if who else (None if re.match(r"(?:Her|His|Their) favou?rite", c) else subj)
    m = re.search(r"\bfavou?rite (?P<what>[a-z]+(?: [a-z]+)?) (?:is|are|was) (?:now |still )?" + _VAL, c)
    if m:
        what = m.group("what").split()[-1]
        return [_slot("favorite", subj, {stem(what)}, value=m.group("val").strip("'\" "))]
    return []


_EXTRACTORS = (_residence, _job, _count, _preference, _habit, _relationship, _diet, _education, _age,
               _favorite)


def _clause_slots(clause: str) -> list[Slot]:
    clause = _strip_lead(clause)
    subj = subject_of(clause)
    out: list[Slot] = []
    for ex in _EXTRACTORS:
        for s in ex(clause, subj):
            # "quit her job" / "stopped eating meat" are job / diet changes, not habits
            if s.kind == "habit" and any(o.kind in ("diet", "job") for o in out):
                continue
            out.append(s)
    return out


def extract_slots(text: str) -> list[Slot]:
    """The slots a memory asserts now (see the module docstring). Clauses are read in time
    order and a later clause's slot replaces an earlier one's, so a reconciled memory yields
    its current state and a detail appended by an UPDATE does not hide the others."""
    out: list[Slot] = []
    for seg in segments(text):
        for s in _clause_slots(seg.clause):
            out = [o for o in out if not s.same_slot(o)] + [s]
    return out


def names(text: str) -> set[str]:
    """Capitalised words after the first of each clause (names of people, places, things)."""
    out: set[str] = set()
    for seg in segments(text):
        ws = _WORD.findall(_strip_lead(seg.clause))
        out |= {w.lower().removesuffix("'s") for w in ws[1:] if w[0].isupper()}
    return out


# ------------------------------------------------------------------ novelty
def informative(text: str) -> set[str]:
    """Numbers, names and dates a text mentions (lower-cased, numbers as digits)."""
    clause = strip_prefix(text)
    out = {str(_number(n)) for n in re.findall(r"\b" + _NUM + r"\b", clause, flags=re.I)}
    out |= {f"#{_ORDINALS[o.lower()]}" for o in re.findall(r"\b(" + "|".join(_ORDINALS) + r")\b", clause, re.I)}
    return out | names(text)
