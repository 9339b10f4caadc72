"""The rule question writer on memories as the store holds them: a ``[date]`` prefix from ingest,
past events dated by their session, relative days resolved, objects and question kinds."""

import datetime as dt

import pytest

from tsubasa_fast.core import Session
from tsubasa_fast.distill import rule_writer as R
from tsubasa_fast.distill import synth as S
from tsubasa_fast.memory import HashingEmbedder, MemoryStore
from tsubasa_fast.memory.ingest import memory_text


def dated(text: str, day: dt.date) -> str:
    """``text`` with the prefix ingest writes (the library's own format, not a copy of it)."""
    return memory_text(text, Session(1, "", dt.datetime(day.year, day.month, day.day), ()), True)


JAN20 = dt.date(2023, 1, 20)
MAY25 = dt.date(2023, 5, 25)


@pytest.mark.parametrize("text,day,expected", [
    # the session's day before, in the session's own date format
    ("Jon lost his job as a banker the day before the conversation.", JAN20,
     [("What did Jon lose?", "his job as a banker"), ("When did Jon lose his job as a banker?", "19 January 2023")]),
    ("Jon lost his job as a banker yesterday.", dt.date(2023, 3, 1),
     [("What did Jon lose?", "his job as a banker"), ("When did Jon lose his job as a banker?", "28 February 2023")]),
    # "last Saturday" / "over the weekend" in LoCoMo's answer style
    ("Melanie ran a charity race for mental health last Saturday.", MAY25,
     [("What did Melanie run?", "a charity race for mental health"),
      ("When did Melanie run a charity race for mental health?", "the Saturday before 25 May 2023")]),
    ("Caroline joined a mentorship program over the weekend.", dt.date(2023, 7, 17),
     [("What did Caroline join?", "a mentorship program"),
      ("When did Caroline join a mentorship program?", "the weekend before 17 July 2023")]),
    # a past event with no time of its own: on (or just before) the session it was told in
    ("Gina designed her clothing store space to be cozy.", dt.date(2023, 2, 1),
     [("What did Gina design?", "her clothing store space"),
      ("When did Gina design her clothing store space?", "1 February 2023"),
      ("Why did Gina design her clothing store space?", "to be cozy")]),
    # "recently" / "but ..." / present tense: no session date as an answer
    ("Jon visited Paris recently", JAN20, [("Where did Jon visit?", "Paris")]),
    ("Jon lost his job but used it as an opportunity.", MAY25, [("What did Jon lose?", "his job")]),
    ("Jon is starting his own dance studio due to his passion for dancing.", JAN20,
     [("What is Jon starting?", "his own dance studio"),
      ("Why is Jon starting his own dance studio?", "his passion for dancing")]),
    # a month is a date, not a place; the date stays out of the When question
    ("Jon is hosting a dance competition in May 2023 to showcase local talent.", JAN20,
     [("What is Jon hosting?", "a dance competition"), ("When is Jon hosting a dance competition?", "May 2023")]),
    # objects continue through a short "for" phrase and stop at a second predicate
    ("Jon is looking for the ideal spot for his dance studio and is considering features.", JAN20,
     [("What is Jon looking for?", "the ideal spot for his dance studio")]),
    # "encourages X to do Y": the task is the fact; "took X to Y": Where, dated with Y
    ("Gina encourages Jon to keep pushing, assuring him he'll reach his dreams.", JAN20,
     [("What does Gina encourage Jon to do?", "keep pushing")]),
    ("Melanie took her kids to a pottery workshop last Friday.", dt.date(2023, 7, 15),
     [("Where did Melanie take her kids?", "a pottery workshop"),
      ("When did Melanie take her kids to a pottery workshop?", "the Friday before 15 July 2023")]),
    # opinions and feelings are not asked about; an adjective cut off before "and" is no answer
    ("Caroline finds art to be healing.", JAN20, []),
    ("Caroline appreciates the peaceful and calming nature of the lake.", JAN20, []),
    ("Jon is working hard on his business despite facing obstacles.", JAN20,
     [("What is Jon working on?", "his business")]),
])
def test_dated_memories(text, day, expected):
    assert R.rule_pairs(dated(text, day), max_pairs=3) == expected


JUL20 = dt.date(2023, 7, 20)


@pytest.mark.parametrize("text,expected", [
    ("Melanie has been married for 5 years.", [("How long has Melanie been married?", "5 years")]),
    ("Melanie is a big fan of pottery and finds it calming.", [("What is Melanie a fan of?", "pottery")]),
    ("Gina is passionate about fashion trends.", [("What is Gina passionate about?", "fashion trends")]),
    # every "a <noun> named <Name>"
    ("Melanie has a dog named Luna and a cat named Oliver.",
     [("What is the name of Melanie's cat?", "Oliver"), ("What is the name of Melanie's dog?", "Luna")]),
    # the user's group or relative as the subject
    ("Melanie and her family watched the Perseid meteor shower in 2022.",
     [("What did Melanie and her family watch?", "the Perseid meteor shower"),
      ("When did Melanie and her family watch the Perseid meteor shower?", "2022")]),
    ("Melanie's family visited the Grand Canyon and enjoyed it.",
     [("What did Melanie's family visit?", "the Grand Canyon"),
      ("When did Melanie's family visit the Grand Canyon?", "20 July 2023")]),
    # a second predicate is a clause of its own (not inside what is believed)
    ("Jon is working on a business plan and looking for investors.",
     [("What is Jon working on?", "a business plan"), ("Who is Jon looking for?", "investors")]),
    # "bring" ends in -ing but is no participle: "to showcase X and bring Y" is one purpose, no
    # second predicate "is Jon bring"
    ("Jon is hosting a dance competition to showcase local talent and bring more attention to his studio.",
     [("What is Jon hosting?", "a dance competition"),
      ("Why is Jon hosting a dance competition?", "to showcase local talent and bring more attention to his studio")]),
    ("Gina believes that good flooring helps avoid injuries and makes dancing fun.",
     [("What does Gina believe?", "good flooring helps avoid injuries and makes dancing fun")]),
    # double objects, "into", a lowercase place after "at", a generic head with its complement
    ("Gina gives Jon tips to stay confident.",
     [("What does Gina give Jon?", "tips"), ("Why does Gina give Jon tips?", "to stay confident")]),
    ("Jon is turning his passion for dance into a business.",
     [("What is Jon turning into a business?", "his passion for dance")]),
    ("Melanie volunteered with her family at a homeless shelter.", [("Where did Melanie volunteer?", "a homeless shelter")]),
    ("Gina loves spending time in the dance studio.", [("What does Gina love?", "spending time in the dance studio")]),
    # no question a person would not ask: "What did Caroline encourage? -> students", "take the first step"
    ("Caroline encouraged students to get involved.", []),
    ("Caroline took the first step towards becoming a mom.", []),
    # a subject pronoun after a noun opens a relative clause; a pronoun indirect object is dropped;
    # "to" + a verb is a purpose, not a destination; a person is no place; a possessive is no place
    ("Melanie shows Caroline a pottery plate she made.", [("What does Melanie show Caroline?", "a pottery plate")]),
    ("Melanie shows her some figurines that remind her of family love.", [("What does Melanie show?", "some figurines")]),
    ("Jon takes up a temporary job to cover his expenses.", [("What does Jon take up?", "a temporary job")]),
    ("Caroline writes a letter to the people she met on her hike.", [("What does Caroline write?", "a letter")]),
    ("Caroline showed interest in Melanie's paintings.", []),
    # acts of the conversation (praise, thank, share, mention, ask, ...): what they were about is talk
    # ("What did Melanie mention?"), their date the session's, their person the other speaker: no pair;
    # "encourages Jon to ..." stays
    ("Melanie praised Caroline for following her dreams.", []),
    ("Jon thanked Gina for her unwavering faith.", []),
    ("Gina shared her exciting news about a design internship interview.", []),
    ("Jon informed Gina on 3 April 2023 that he had closed his bank account.", []),
    ("Gina encouraged Jon to keep pushing.", [("What did Gina encourage Jon to do?", "keep pushing")]),
    ("Melanie mentioned that her family motivates her, while Caroline rested.", []),
    ("Jon mentioned losing his job.", []),
    ("Gina highlights the importance of staying positive.", []),
    ("Melanie respects Caroline's journey of finding acceptance.", []),
    ("Melanie asked about its main message.", []),
    ("Gina complimented the group's grace.", []),
    ("Caroline shares that finding self-acceptance was a long process for her.", []),
    # "X and Y" is one answer (nouns, or gerunds after a gerund), not its first half; a second predicate
    # is not ("his passion for dance and searching ..."); the first item of a comma list is no answer
    ("Gina chose furniture and decor for her store.",
     [("What did Gina choose?", "furniture and decor"), ("When did Gina choose furniture and decor?", "20 July 2023")]),
    ("Jon is writing down all his plans and goals to stay organized.",
     [("What is Jon writing down?", "all his plans and goals"),
      ("Why is Jon writing down all his plans and goals?", "to stay organized")]),
    ("Gina values building relationships and creating a strong brand image.",
     [("What does Gina value?", "building relationships and creating a strong brand image")]),
    ("Jon is following his passion for dance and searching for a place to open a studio.",
     [("What is Jon following?", "his passion for dance"), ("What is Jon searching for?", "a place to open a studio")]),
    ("Gina combines her passion for dance and fashion to show creativity.",
     [("What does Gina combine?", "her passion for dance and fashion"),
      ("Why does Gina combine her passion for dance and fashion?", "to show creativity")]),
    ("Melanie is realizing the importance of self-care and its impact on her family.",
     [("What is Melanie realizing?", "the importance of self-care")]),
    ("Caroline recommends doing research, preparing emotionally, and gathering documents.", []),
    ("Melanie bought flowers, candles, and a cake.", []),
    ("Jon values the support and encouragement.", []),
    ("Jon values the support and encouragement of his friends.",
     [("What does Jon value?", "the support and encouragement of his friends")]),
    # "update" is an act of talk only with a person: "updated Gina", not "is updating his business plan"
    ("Jon updated Gina on his studio.", []),
    ("Jon is networking and updating his business plan.", [("What is Jon updating?", "his business plan")]),
    # "going swimming" has no object; "a piece" says nothing; "each day" is a time, not part of the object
    ("Melanie is going swimming with the kids.", []),
    ("Caroline painted a piece inspired by a visit.", []),
    ("Melanie carves out me-time each day for running.", [("What does Melanie carve out?", "me-time")]),
    # an object that names people is asked with Who, by its head ("a mentorship program for LGBTQ youth": What)
    ("Gina met some investors at a networking event.",
     [("Who did Gina meet?", "some investors"), ("Where did Gina meet some investors?", "a networking event"),
      ("When did Gina meet some investors?", "20 July 2023")]),
    ("Caroline joined a mentorship program for LGBTQ youth.",
     [("What did Caroline join?", "a mentorship program for LGBTQ youth"),
      ("When did Caroline join a mentorship program for LGBTQ youth?", "20 July 2023")]),
    ("Melanie is managing kids and work.", [("What is Melanie managing?", "kids and work")]),
    # a person named after a person noun is a Who; "take" a person somewhere asks no What; two people
    # meeting at a clock time is the conversation itself; "horseback riding" is one noun
    ("Caroline reached out to her friend Melanie.",
     [("Who did Caroline reach out to?", "her friend Melanie"),
      ("When did Caroline reach out to her friend Melanie?", "20 July 2023")]),
    ("Melanie takes her family camping.", []),
    ("Gina and Jon caught up at 5:44 pm on 21 July, 2023.", []),
    ("Caroline reminisced about horseback riding with her dad.",
     [("What did Caroline reminisce about?", "horseback riding"),
      ("When did Caroline reminisce about horseback riding?", "20 July 2023")]),
    # a purpose verb the dictionary lacks is still a purpose
    ("Melanie begins running longer distances to destress.",
     [("What does Melanie begin?", "running longer distances"),
      ("Why does Melanie begin running longer distances?", "to destress")]),
    # a "to" with no verb after it is no purpose: no Why
    ("Jon is updating his business plan and pitch to investors.",
     [("What is Jon updating?", "his business plan and pitch")]),
    # "crew" is also the past of "crow": a noun first
    ("Jon showed Gina a photo of his dance crew winning a competition.",
     [("What did Jon show Gina?", "a photo of his dance crew"),
      ("When did Jon show Gina a photo of his dance crew?", "20 July 2023")]),
    # a vague object gets no question at all, not even a When ("When did Gina face challenges?")
    ("Gina faced challenges in her business.", []),
    # time spent or invested is how, not what ("What does Caroline spend? -> time with friends")
    ("Caroline spends time with friends biking.", []),
    ("Jon is investing his time in his business.", []),
    ("Melanie cherishes time with family.",
     [("What does Melanie cherish?", "time with family")]),
    ("Gina faced a lawsuit in her business.",
     [("What did Gina face?", "a lawsuit"), ("When did Gina face a lawsuit?", "20 July 2023")]),
    # a group of people is asked with Who; a support group is a thing
    ("Caroline met a group of religious conservatives on a hike.",
     [("Who did Caroline meet?", "a group of religious conservatives"),
      ("When did Caroline meet a group of religious conservatives?", "20 July 2023")]),
    ("Caroline joined a support group.",
     [("What did Caroline join?", "a support group"), ("When did Caroline join a support group?", "20 July 2023")]),
    # emphatic "does": the verb is the next word; a negated clause asks nothing
    ("Maya does miss her old team.", [("What does Maya miss?", "her old team")]),
    ("Maya did not go to the party.", []),
    ("Maya did research on birds.",  # "research" is the object here, not the verb
     [("What did Maya do?", "research"), ("When did Maya do research?", "20 July 2023")]),
    # a capitalised word before a noun names the field, not a place
    ("Maya finished an online course in UX research.",
     [("What did Maya finish?", "an online course"), ("When did Maya finish an online course?", "20 July 2023")]),
    ("Maya finished a course in Leeds.",
     [("What did Maya finish?", "a course"), ("Where did Maya finish a course?", "Leeds"),
      ("When did Maya finish a course in Leeds?", "20 July 2023")]),
    # "X's <noun> is <obj>" only when the noun is a thing and the object no lone adjective
    ("Maya's favorite book is Dune.", [("What is Maya's favorite book?", "Dune")]),
    ("Maya's doctor said Maya's iron was low.", []),
    ("Maya's colleague Priya is kind.", []),
    ("Maya's job is stressful.", []),
])
def test_templates(text, expected):
    assert R.rule_pairs(dated(text, JUL20), max_pairs=3) == expected


def test_undated_text_gets_no_session_date():
    assert R.rule_pairs("Gina designed her clothing store space.") == [("What did Gina design?", "her clothing store space")]


def test_synthesize_writes_pairs_from_an_ingested_store(tmp_path):
    """The regression: a store written by ingest (every memory dated) gave the rule writer 0 pairs."""
    user = "conv-t:Jon"
    store = MemoryStore(tmp_path / "store", HashingEmbedder())
    texts = ["Jon lost his job as a banker the day before the conversation.",
             "Jon is hosting a dance competition in May 2023 to showcase local talent.",
             "Jon finds dancing joyful."]
    for i, t in enumerate(texts):
        store.add(user, dated(t, JAN20), observed_at="2023-01-20", source={"session": 1, "dia_ids": [f"D1:{i}"]})
    pairs, rep = S.synthesize(store, user, None, S.SynthConfig(generator="rule", pairs_per_prompt=3), progress=False)
    store.close()
    assert [(p["question"], p["answer"]) for p in pairs] == [
        ("What did Jon lose?", "his job as a banker"), ("When did Jon lose his job as a banker?", "19 January 2023"),
        ("What is Jon hosting?", "a dance competition"), ("When is Jon hosting a dance competition?", "May 2023")]
    assert rep["generated"] == 4 and rep["dropped"]["malformed"] == 0


def test_merged_memories_date_each_clause_by_its_own_session():
    """The evolution's UPDATE format, ``c1 (D1); c2 (D2).``: each clause told on its own date;
    a date in parentheses is no When answer for a verb without an event ("values")."""
    text = dated("Caroline attended an LGBTQ support group (8 May 2023); Caroline gave a talk at a school "
                 "event (9 June 2023); Caroline values happy moments (17 August 2023).", dt.date(2023, 5, 8))
    assert R.rule_pairs(text, max_pairs=3) == [
        ("What did Caroline attend?", "an LGBTQ support group"),
        ("When did Caroline attend an LGBTQ support group?", "8 May 2023"),
        ("What did Caroline give?", "a talk"), ("Where did Caroline give a talk?", "a school event"),
        ("When did Caroline give a talk?", "9 June 2023"), ("What does Caroline value?", "happy moments")]


def test_only_clauses_about_the_user():
    # a remembered turn of Melanie's speaks of Caroline: no question about Caroline for Melanie
    text = dated("Caroline will be a great counselor. Melanie painted a lake sunrise.", JAN20)
    assert R.rule_pairs(text, 3, user="conv-26:Melanie") == [
        ("What did Melanie paint?", "a lake sunrise"), ("When did Melanie paint a lake sunrise?", "20 January 2023")]
    assert R.rule_pairs(text, 3, user="Caroline") == []  # "will be": no verb group to ask about
    assert R.rule_pairs(text, 3) == R.rule_pairs(text, 3, user="Melanie")
