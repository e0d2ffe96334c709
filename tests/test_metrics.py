"""Official metrics (VQA normalisation rules and 10-choose-9 accuracy, under the official and the legacy rules;
SNLI-VE, VCR) and the task definitions."""

from __future__ import annotations

from pathlib import Path

import pytest

from mad_pipeline.data.snli_ve import read_snli_ve
from mad_pipeline.data.vcr import read_vcr
from mad_pipeline.data.vqa import read_vqa
from mad_pipeline.errors import InputError
from mad_pipeline.tasks import get_task
from mad_pipeline.tasks import snli_ve as snli_task
from mad_pipeline.tasks import vcr as vcr_task
from mad_pipeline.tasks.metrics import (
    VQA_EVAL_RULES,
    normalize_prediction,
    process_digit_article,
    process_punctuation,
    snli_ve_evaluate,
    vcr_evaluate,
    vqa_evaluate,
    vqa_question_accuracy,
)
from mad_pipeline.tasks.vqa import (
    AnswerVocab,
    build_answer_vocab,
    candidate_texts,
    soft_score,
    soft_scores,
)

FIX = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("text, expect", [
    ("t-shirt", "t shirt"),          # mark not touching a space: replaced by a space
    ("red, white", "red white"),     # "," touches a space: every "," is deleted
    ("red,white", "red white"),
    ("1,000", "1000"),               # digit,digit present: all marks deleted
    ("yes!", "yes "),
    ("2.5.", "2.5"),                 # only the period not followed by a digit goes
    ("a.m.", "am"),
    ("don't", "don't"),              # "'" is not in the official punctuation list
    ("(left) side", " left side"),   # each mark decided alone: ")" touches a space (deleted), "(" does not
])
def test_process_punctuation(text, expect):
    assert process_punctuation(text) == expect


def test_period_strip_count_quirk():
    # official: periodStrip.sub("", outText, re.UNICODE) -> re.UNICODE (32) is the *count*: 40 periods -> 8 left
    assert process_punctuation("." * 40) == "." * 8


@pytest.mark.parametrize("text, expect", [
    ("Two", "2"), ("none", "0"), ("ten", "10"), ("eleven", "eleven"),
    ("The Dog", "dog"), ("an apple a day", "apple day"),
    ("dont  know", "don't know"), ("  whats   up ", "what's up"),
    ("Im", "im"),  # the official map's capitalised keys never match after lower-casing
])
def test_process_digit_article(text, expect):
    assert process_digit_article(text) == expect


def test_normalize_prediction_cleans_whitespace():
    assert normalize_prediction("\tThe  Two\ndogs. ") == "2 dogs"


@pytest.mark.parametrize("rules", VQA_EVAL_RULES)
def test_question_accuracy_partial_agreement(rules):
    # c matching annotators out of 10: mean over the 10 leave-one-out subsets of min(1, matches/3)
    # c=1: (1*0 + 9*1/3)/10 = 0.3; c=2: (2*1/3 + 8*2/3)/10 = 0.6; c=3: (3*2/3 + 7*1)/10 = 0.9; c=4: 1
    for c, expect in [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]:
        gts = ["cat"] * c + ["dog"] * (10 - c)
        assert vqa_question_accuracy("cat", gts, rules) == pytest.approx(expect, abs=1e-12)
        assert soft_score(c) == pytest.approx(expect, abs=1e-12)
    # answers that disagree get punctuation processing under both rule sets
    assert vqa_question_accuracy("hot-dog", ["hot-dog"] * 9 + ["hotdog"], rules) == 1.0


# (prediction, ten answers, legacy accuracy, official accuracy), each worked out from the two versions' rules:
# legacy: prediction cleaned + processPunctuation + processDigitArticle; answers processPunctuation only, and only
# when not all identical. official: answers and prediction cleaned; when the cleaned answers are not all identical,
# both get processPunctuation + processDigitArticle, else they are compared as they are.
RULE_CASES = [
    # the two examples of the difference: number words on the answer side, an article on the prediction side
    # legacy: answers not identical -> punctuation only: nine "two", one "2"; "2" matches 1 -> 0.3
    # official: answers -> "2" x10 (processDigitArticle), prediction "2": 10 -> 1.0
    ("2", ["two"] * 9 + ["2"], 0.3, 1.0),
    # legacy: prediction -> "beach" matches 10 -> 1.0; official: identical answers, "the beach" != "beach" -> 0.0
    ("the beach", ["beach"] * 10, 1.0, 0.0),
    # unanimous answers: legacy normalises the prediction only ("two" -> "2" != "two"); official compares as is
    ("two", ["two"] * 10, 0.0, 1.0),
    ("hot-dog", ["hot-dog"] * 10, 0.0, 1.0),
    ("Beach", ["beach"] * 10, 1.0, 0.0),            # official: case counts when nothing is processed
    ("fire  hydrant", ["fire hydrant"] * 10, 1.0, 0.0),  # ... and so do doubled spaces
    (" beach\n", ["beach"] * 10, 1.0, 1.0),         # cleaning (strip, newline) applies under both
    # answers never lower-cased (legacy): "YES" -> "yes" matches the two "yes" -> 0.6; official lower-cases all -> 1.0
    ("YES", ["Yes"] * 8 + ["yes"] * 2, 0.6, 1.0),
    # official cleans the answers before comparing them: "2" and "2 " are identical, so "two" is compared as is
    # legacy: not identical; punctuation leaves "2" / "2 "; prediction "2" matches the five "2" -> 1.0
    ("two", ["2"] * 5 + ["2 "] * 5, 1.0, 0.0),
    # official is Python 2 code: \d is 0-9 only, so the "." between Arabic-Indic digits goes (pred -> "\u0663\u0665",
    # 9 matches -> 1.0); legacy (Python 3) keeps it: "\u0663.\u0665" matches none -> 0.0
    ("\u0663.\u0665", ["\u0663\u0665"] * 9 + ["x"], 0.0, 1.0),
    # articles in the answers: legacy keeps "a dog" (punctuation only), the prediction becomes "dog": 1 match -> 0.3
    # official: every "a dog" -> "dog": 3 matches -> 0.9
    ("dog", ["a dog"] * 2 + ["dog"] + ["cat"] * 7, 0.3, 0.9),
]


@pytest.mark.parametrize("pred, gts, legacy, official", RULE_CASES)
def test_official_and_legacy_rules(pred, gts, legacy, official):
    assert vqa_question_accuracy(pred, gts, "legacy") == pytest.approx(legacy, abs=1e-12)
    assert vqa_question_accuracy(pred, gts, "official") == pytest.approx(official, abs=1e-12)
    assert vqa_question_accuracy(pred, gts) == pytest.approx(official, abs=1e-12)  # the default


def test_rules_are_chosen_by_name_everywhere():
    anns = {1: {"answers": ["two"] * 9 + ["2"], "answer_type": "number", "question_type": "how many"},
            2: {"answers": ["beach"] * 10, "answer_type": "other", "question_type": "what"}}
    preds = {1: "2", 2: "the beach"}
    assert vqa_evaluate(preds, anns)["overall"] == pytest.approx(50.0)  # official: 100 and 0
    assert vqa_evaluate(preds, anns, "legacy")["overall"] == pytest.approx(65.0)  # legacy: 30 and 100
    with pytest.raises(ValueError, match="expected one of official, legacy"):
        vqa_question_accuracy("2", ["2"], "newest")
    # the task carries its rules; a name outside them is one line naming the option
    assert get_task("vqa").vqa_eval == "official" and get_task("vqa", vqa_eval="legacy").vqa_eval == "legacy"
    with pytest.raises(InputError, match="--vqa-eval 'newest': expected one of official, legacy"):
        get_task("vqa", vqa_eval="newest")
    # other tasks ignore the option: it is no setting of theirs and enters none of their keys
    assert get_task("snli-ve", vqa_eval="legacy").settings_in_key({"vqa_eval": "legacy"}) == {}
    assert get_task("vqa").settings_in_key({"vqa_eval": "legacy", "x": 1}) == {"vqa_eval": "legacy"}


def test_punctuation_digits_follow_the_rules():
    # official (Python 2): only 0-9 are digits for periodStrip / commaStrip; legacy (Python 3): any decimal digit
    assert process_punctuation("\u0663.\u0665", "official") == "\u0663\u0665"
    assert process_punctuation("\u0663.\u0665", "legacy") == "\u0663.\u0665"
    assert process_punctuation("\u0663,\u0665", "official") == "\u0663 \u0665"  # no digit,digit: "," -> " "
    assert process_punctuation("\u0663,\u0665", "legacy") == "\u0663\u0665"
    assert process_punctuation("3.5,", "official") == process_punctuation("3.5,", "legacy") == "3.5 "


def test_question_accuracy_answer_records_compared_as_records():
    # the official leave-one-out removes every record equal to the left-out one; records carry answer_id
    recs = [{"answer": "cat", "answer_confidence": "yes", "answer_id": i + 1} for i in range(3)]
    recs += [{"answer": "dog", "answer_confidence": "yes", "answer_id": i + 4} for i in range(7)]
    assert vqa_question_accuracy("cat", recs) == pytest.approx(0.9, abs=1e-12)
    same = [{"answer": "cat"}] * 3 + [{"answer": "dog", "answer_id": i} for i in range(7)]
    # identical records: leaving one "cat" out leaves none -> (3*0 + 7*1)/10
    assert vqa_question_accuracy("cat", same) == pytest.approx(0.7, abs=1e-12)


def test_answer_vocab_soft_scores_and_candidates(tmp_path):
    train = read_vqa(FIX / "vqa", "train").samples
    # multiple_choice_answer normalised: yes, yes, "two"->"2", "No"->"no"
    vocab = build_answer_vocab(train, min_count=1)
    assert vocab.answers == ("yes", "2", "no") and vocab.counts == (2, 1, 1)
    assert build_answer_vocab(train).answers == ()  # default threshold 9
    assert build_answer_vocab(train, min_count=2).answers == ("yes",)
    # count="all": yes 8+10+4=22, no 2, two->2: 4+3=7, 3: 3, No->no: 6 -> no 8
    all_vocab = build_answer_vocab(train, min_count=3, count="all")
    assert dict(zip(all_vocab.answers, all_vocab.counts, strict=True)) == {"yes": 22, "no": 8, "2": 7, "3": 3}
    assert vocab.index("Two") == 1 and vocab.index("maybe") is None and "no" in vocab
    # question 25000: four "two" + three "2" -> 7 annotators say "2" after normalisation
    s = next(x for x in train if x.id == "25000")
    assert soft_scores(s.meta["answers"], vocab) == {1: 1.0}
    assert soft_scores(["yes"] * 2 + ["no"] * 8, vocab) == {0: pytest.approx(0.6), 2: 1.0}
    assert candidate_texts("How many?", vocab) == ["question: How many? answer: yes",
                                                    "question: How many? answer: 2",
                                                    "question: How many? answer: no"]
    assert candidate_texts("Q?", vocab, template="a photo showing {a}")[1] == "a photo showing 2"
    vocab.save(tmp_path / "vocab.json")
    assert AnswerVocab.load(tmp_path / "vocab.json") == vocab


def test_snli_ve_task_and_accuracy():
    ds = read_snli_ve(FIX / "snli_ve", "dev")
    assert snli_task.LABELS == ("entailment", "neutral", "contradiction")
    assert snli_task.label_index("contradiction") == 2
    assert snli_task.candidate_texts(ds.samples[0]) == ["Animals are outdoors."]
    gold = {s.id: s.meta["gold_label"] for s in ds.samples}
    preds = dict(gold)
    preds["1000092795.jpg#2r1n"] = "entailment"
    res = snli_ve_evaluate(preds, gold)
    assert res["accuracy"] == pytest.approx(200 / 3) and res["per_label"]["neutral"] == 0.0


def test_vcr_task_and_q2ar_needs_both():
    s = read_vcr(FIX / "vcr", "val").samples[0]
    c = vcr_task.candidate_texts(s)
    assert c["q2a"][1] == "What is person0 about to do? She is going to sit down."
    assert c["qa2r"][3] == ("What is person0 about to do? She is going to sit down. "
                            "It's late and everyone is tired.")
    gold = {"a": (1, 1), "b": (0, 2), "c": (3, 3), "d": (2, 0)}
    preds = {"a": (1, 1),  # both right
             "b": (0, 1),  # answer right, rationale wrong
             "c": (2, 3),  # answer wrong, rationale right
             "d": (1, 2)}  # both wrong
    res = vcr_evaluate(preds, gold)
    # Q->A 2/4, QA->R 2/4, Q->AR only "a": 1/4
    assert (res["q2a"], res["qa2r"], res["q2ar"]) == (50.0, 50.0, 25.0)
