"""tsubasa_fast.eval.metrics against hand-computed values (not the code's own output)."""

import ast
import math
from pathlib import Path

import pytest

from tsubasa_fast.eval import metrics as m
from tsubasa_fast.eval.metrics import (
    CATEGORY_NAMES, LENIENT_ADVERSARIAL_PHRASES, adversarial_correct, aggregate_scores, bleu1, locomo_f1,
    locomo_multi_f1, locomo_normalize, score_answer, stem, token_f1,
)

approx = pytest.approx


def test_category_mapping_is_the_datasets():
    # LoCoMo's task_eval code: 1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial
    assert CATEGORY_NAMES == {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}


def test_metrics_imports_only_the_core_types():
    """The metrics stay comparable with the field's code: nothing of ours but the category names
    and the set F1, which lives in tsubasa_fast.text (shared with the synthesis filter) and
    imports nothing of ours."""
    import tsubasa_fast.text as text

    allowed = {"core": ["CATEGORY_NAMES"], "text": ["set_tokens", "token_f1"]}
    for module, names in ((m, allowed), (text, {})):
        tree = ast.parse(Path(module.__file__).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                ours = node.level > 0 or (node.module or "").startswith("tsubasa_fast")
                if ours:
                    key = (node.module or "").rpartition(".")[2]
                    assert key in names and node.level in (0, 2), ast.dump(node)
                    assert [a.name for a in node.names] == names[key], ast.dump(node)
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("tsubasa_fast") for a in node.names)


# ------------------------------------------------------------------ Mem0-style set F1
@pytest.mark.parametrize("pred,gold,expected", [
    ("The cat sat.", "the cat", 0.8),            # {the,cat,sat} vs {the,cat}: P 2/3, R 1
    ("cat cat cat dog", "cat", 2 / 3),           # unique tokens: {cat,dog}: P 1/2, R 1
    ("cat cat", "cat", 1.0),                     # sets, so repetition is free
    ("PARIS", "paris", 1.0),
    ("(7 May, 2023)", "7 May 2023", 1.0),        # every punctuation mark goes
    ("In 2022.", 2022, 2 / 3),                   # int answers are coerced
    (2022, 2022, 1.0),
    ("running", "runs", 0.0),                    # no stemming here
    ("1,000", "1000", 0.0),                      # comma -> space: {1, 000}
    ("", "Paris", 0.0),
    (None, "Paris", 0.0),
    ("!!!", "Paris", 0.0),
    ("Paris", "", 0.0),
])
def test_token_f1(pred, gold, expected):
    assert token_f1(pred, gold) == approx(expected)


# ------------------------------------------------------------------ LoCoMo's stemmed F1
def test_porter_stems():
    assert [stem(w) for w in ("running", "runs", "ran", "caresses", "ponies", "hiking", "paintings")] == \
        ["run", "run", "ran", "caress", "poni", "hike", "paint"]


def test_locomo_normalize():
    # commas vanish (not spaces), punctuation vanishes, a/an/the/and go, spaces squeezed
    assert locomo_normalize("The Cat, and a dog;  an apple's 7:30 1,000") == "cat dog apples 730 1000"
    assert locomo_normalize("Anna and the band") == "anna band"  # word boundaries: 'Anna', 'band' stay


@pytest.mark.parametrize("pred,gold,expected", [
    ("running", "runs", 1.0),                    # both stem to 'run'
    ("He runs", "running", 2 / 3),               # [he, run] vs [run]
    ("the apple and an orange", "Apple, orange", 1.0),
    ("cat cat", "cat", 2 / 3),                   # token counts: overlap 1, P 1/2, R 1
    ("cat", "cat cat dog", 0.5),                 # P 1, R 1/3
    (7, "7 May 2023", 0.5),
    ("1,000", 1000, 1.0),
    ("I don't know", "dont", 0.5),               # apostrophe dropped: [i, dont, know]: P 1/3, R 1
    ("", "Paris", 0.0),
    ("the", "the", 0.0),                         # nothing left after normalising
])
def test_locomo_f1(pred, gold, expected):
    assert locomo_f1(pred, gold) == approx(expected)


def test_locomo_multi_f1():
    # gold parts: London -> best 1.0 (pred 'London'), Berlin -> 0.0; mean 0.5
    assert locomo_multi_f1("Paris, London", "London, Berlin") == approx(0.5)
    # one predicted part [paint, hike] against gold 'painting' and 'hiking': 2/3 each
    assert locomo_multi_f1("painting and hiking", "painting, hiking") == approx(2 / 3)
    assert locomo_multi_f1("", "a, b") == 0.0


# ------------------------------------------------------------------ BLEU-1
@pytest.mark.parametrize("pred,gold,expected", [
    ("the cat sat", "the cat sat on the mat", math.exp(-1)),   # p1 1, BP exp(1 - 6/3)
    ("the the the the", "the cat", 0.25),                      # clipped: 1 of 4, hyp longer: BP 1
    ("a b c d e", "a b", 0.4),
    ("cat sat", "cat ran", 0.5),                               # equal lengths: BP exp(0) = 1
    ("Paris.", "Paris", 0.5),                                  # '.' is a token: [paris, .] vs [paris]
    ("PARIS", "paris", 1.0),
    (2022, 2022, 1.0),
    ("7 May", "7 May 2023", math.exp(1 - 3 / 2)),              # p1 1, BP exp(-0.5)
    ("dog", "cat", 0.0),                                       # method1 never smooths unigrams
    ("", "cat", 0.0),
    (None, "cat", 0.0),
])
def test_bleu1(pred, gold, expected):
    assert bleu1(pred, gold) == approx(expected)


def test_bleu1_matches_nltk_sentence_bleu():
    bleu_score = pytest.importorskip("nltk.translate.bleu_score")
    smooth = bleu_score.SmoothingFunction().method1
    pairs = [("She moved to Bristol in August 2023.", "Bristol"),
             ("Chopin's Nocturne, Op. 9 No. 2", "Chopin's Nocturne in E-flat major, Op. 9 No. 2"),
             ("about four months", "About four months (4 November 2023 to 10 March 2024)"),
             ("No. She went. He stayed!", "she went")]
    for pred, gold in pairs:
        hyp, ref = m.bleu_tokens(pred), m.bleu_tokens(gold)
        want = bleu_score.sentence_bleu([ref], hyp, weights=(1, 0, 0, 0), smoothing_function=smooth)
        assert bleu1(pred, gold) == approx(want), (pred, gold)


def test_bleu_tokens_split_sentences_and_contractions():
    assert m.bleu_tokens("She didn't go. He went home!") == \
        ["she", "did", "n't", "go", ".", "he", "went", "home", "!"]


# ------------------------------------------------------------------ category 5 and whole answers
@pytest.mark.parametrize("pred,strict,lenient", [
    ("No information available.", True, True),
    ("That is Not Mentioned in the conversation.", True, True),
    ("The information is not available.", False, True),
    ("I don't know", False, True),
    ("She went to Paris.", False, False),
    ("", False, False),
])
def test_adversarial_rule(pred, strict, lenient):
    assert adversarial_correct(pred) is strict
    assert adversarial_correct(pred, LENIENT_ADVERSARIAL_PHRASES) is lenient


def test_score_answer_per_category():
    assert score_answer("No information available", None, 5) == {"f1": 1.0, "f1_stemmed": 1.0, "bleu1": 1.0}
    assert score_answer("Paris", "Paris", 5) == {"f1": 0.0, "f1_stemmed": 0.0, "bleu1": 0.0}
    # category 3: the stemmed F1 scores against the part before ';' ([like, ye] vs [ye]: 2/3),
    # f1 and bleu1 against the whole answer ({yes} vs 5 words: P 1, R 1/5 -> 1/3;
    # BLEU: 1 hyp token vs 6 ref tokens incl. ';' -> exp(1 - 6))
    got = score_answer("Yes", "Likely yes; she enjoys it", 3)
    assert got == {"f1": approx(1 / 3), "f1_stemmed": approx(2 / 3), "bleu1": approx(math.exp(-5))}
    # category 4 keeps the whole answer for the stemmed F1 too: [like, ye, she, enjoy, it] -> 1/3
    assert score_answer("Yes", "Likely yes; she enjoys it", 4)["f1_stemmed"] == approx(1 / 3)
    # category 1 splits on commas
    assert score_answer("Paris, London", "London, Berlin", 1)["f1_stemmed"] == approx(0.5)
    assert score_answer("Paris, London", "London, Berlin", 2)["f1_stemmed"] == approx(0.5)  # [paris, london] vs [london, berlin]
    assert score_answer("2022", 2022, 2) == {"f1": 1.0, "f1_stemmed": 1.0, "bleu1": 1.0}
    assert score_answer("", "Paris", 4) == {"f1": 0.0, "f1_stemmed": 0.0, "bleu1": 0.0}
    with pytest.raises(ValueError, match="category"):
        score_answer("x", "x", 6)


def test_aggregate_scores():
    rows = [
        {"category": 1, "f1": 1.0, "f1_stemmed": 0.5, "bleu1": 0.0, "judge": 1},
        {"category": 2, "f1": 0.0, "f1_stemmed": 1.0, "bleu1": 1.0, "judge": 0},
        {"category": 2, "f1": 0.5, "f1_stemmed": 0.5, "bleu1": 0.5, "judge": None},
        {"category": 5, "f1": 1.0, "f1_stemmed": 1.0, "bleu1": 1.0},
    ]
    out = aggregate_scores(rows)
    assert out["questions"] == 3  # category 5 is reported separately, not in overall
    assert out["overall"] == {"f1": approx(50.0), "f1_stemmed": approx(200 / 3), "bleu1": approx(50.0),
                              "judge": approx(50.0)}
    assert out["by_category"]["2"] == {"questions": 2, "f1": approx(25.0), "f1_stemmed": approx(75.0),
                                       "bleu1": approx(75.0), "judge": approx(0.0)}
    assert out["by_category"]["5"] == {"questions": 1, "f1": 100.0, "f1_stemmed": 100.0, "bleu1": 100.0,
                                       "judge": None}
    assert list(out["by_category"]) == ["1", "2", "5"] and out["category_names"]["3"] == "open-domain"
    empty = aggregate_scores([])
    assert empty["questions"] == 0 and empty["overall"] == {"f1": None, "f1_stemmed": None, "bleu1": None,
                                                            "judge": None}
