"""Official metrics: VQA v2 accuracy (a port of the VQA API's ``vqaEval.py``), SNLI-VE accuracy, VCR Q->A / QA->R /
Q->AR (of chosen answers and rationales, or of the leaderboard's per-choice probabilities).

VQA: ported from ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` of https://github.com/GT-Vision-Lab/VQA, rule
for rule, quirks included, in two versions (``rules``):

``official`` (the default): the code on the repository's ``master`` as it is today (its last change, "Fixed
processing answers bug", 2021):

- the ten ground-truth answers and the prediction are cleaned (newlines/tabs -> spaces, strip);
- **only when the cleaned answers are not all identical**, the answers *and* the prediction get
  ``processPunctuation`` then ``processDigitArticle`` (lower-case, number words -> digits, articles dropped,
  contractions restored);
- when the ten answers are identical nothing else is done: the cleaned prediction must equal them character for
  character (case, articles, number words and punctuation all count: "2" against ten "two" scores 0, and so does
  "the beach" against ten "beach");
- that code is Python 2: ``\\d`` in its ``periodStrip`` / ``commaStrip`` patterns matches the ASCII digits 0-9 only
  (the legacy port, on Python 3, matches any Unicode decimal digit there).

``legacy``: the Python 3 port of the 2017 code (branch ``feature/update_style``), which many papers used:

- the prediction is always cleaned, then ``processPunctuation`` and ``processDigitArticle``;
- the ten answers are never cleaned and get ``processPunctuation`` **only** when they are not all identical, and
  never ``processDigitArticle`` nor lower-casing ("2" against nine "two" and one "2" scores 30, against master's 100;
  "the beach" against ten "beach" scores 100, against master's 0).

Common to both:

- ``processPunctuation`` deletes a punctuation mark when it touches a space somewhere in the text (or when the text
  contains ``digit,digit``), else replaces it by a space; ``periodStrip`` (whose ``(?!<=\\d)`` is a look-*ahead*
  typo, so it removes every ``.`` not followed by a digit) runs with ``re.UNICODE`` passed as its *count*, i.e. at
  most 32 periods are removed;
- ``processDigitArticle``'s ``manualMap.setdefault(word, word)`` adds every unknown word to the map as itself (no
  effect on the result); the contraction keys with capitals (``Im``, ``Ive``...) never match after lower-casing;
- per question, accuracy = mean over the ten leave-one-annotator-out subsets of ``min(1, #matches / 3)``, where an
  annotator is left out by answer-record equality (the record dicts, after processing, as the official code compares
  them);
- overall / per-answer-type / per-question-type accuracy = mean of the per-question accuracies.

The official code rewrites the annotation records in place; these functions leave the caller's records untouched.
It reports ``round(100 * acc, 2)``; these functions return unrounded percentages so they can be checked to 1e-9.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
MANUAL_MAP: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = ("a", "an", "the")
PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
VQA_EVAL_RULES = ("official", "legacy")  # see the module docstring
DEFAULT_VQA_EVAL = "official"
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: "(?!<=" is the official typo (a look-ahead)
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
# master's vqaEval.py is Python 2 code: its str patterns, compiled without re.UNICODE, read \d as [0-9] only; the
# legacy port runs on Python 3, where \d is any Unicode decimal digit
DIGIT_PATTERNS = {
    "official": (re.compile(PERIOD_STRIP.pattern, re.ASCII), re.compile(COMMA_STRIP.pattern, re.ASCII)),
    "legacy": (PERIOD_STRIP, COMMA_STRIP),
}
# The official call is periodStrip.sub("", outText, re.UNICODE): the flag lands in the *count* argument.
PERIOD_STRIP_COUNT = int(re.UNICODE)  # 32


def process_punctuation(in_text: str, rules: str = DEFAULT_VQA_EVAL) -> str:
    """``VQAEval.processPunctuation`` (``rules`` decide only which digits ``\\d`` matches)."""
    period_strip, comma_strip = DIGIT_PATTERNS[rules]
    out_text = in_text
    for p in PUNCT:
        if (p + " " in in_text or " " + p in in_text) or (comma_strip.search(in_text) is not None):
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    return period_strip.sub("", out_text, count=PERIOD_STRIP_COUNT)


def process_digit_article(in_text: str) -> str:
    """``VQAEval.processDigitArticle``."""
    out_text = []
    for word in in_text.lower().split():
        word = MANUAL_MAP.get(word, word)
        if word not in ARTICLES:
            out_text.append(word)
    return " ".join(CONTRACTIONS.get(word, word) for word in out_text)


def clean_answer(answer: str) -> str:
    """The official cleaning of an answer: newlines and tabs become spaces, then the ends are stripped."""
    return answer.replace("\n", " ").replace("\t", " ").strip()


@functools.lru_cache(maxsize=1 << 16)
def normalize_answer(answer: str, rules: str = DEFAULT_VQA_EVAL) -> str:
    """Cleaning, ``processPunctuation`` and ``processDigitArticle``: the whole normalisation of an answer (memoised:
    human answers repeat a lot)."""
    return process_digit_article(process_punctuation(clean_answer(answer), rules))


def normalize_prediction(answer: str) -> str:
    """How the evaluation normalises a predicted answer (``legacy`` patterns, which differ from ``official`` only on
    non-ASCII digits); what answer vocabularies and the soft targets of every training step are made of."""
    return normalize_answer(answer, "legacy")


def vqa_question_accuracy(prediction: str, gt_answers: Sequence[str | Mapping[str, Any]],
                          rules: str = DEFAULT_VQA_EVAL) -> float:
    """Official accuracy (0..1) of one predicted answer against a question's ground-truth answers, under ``rules``
    (:data:`VQA_EVAL_RULES`).

    ``gt_answers``: the answer records of the annotation (``{"answer", "answer_confidence", "answer_id"}``, compared
    as records when leaving one annotator out, as the official code does) or plain strings (one annotator each).
    """
    records: list[dict[str, Any]] = [
        dict(a) if isinstance(a, Mapping) else {"answer": a, "_annotator": i} for i, a in enumerate(gt_answers)
    ]
    if not records:
        raise ValueError("no ground-truth answers")
    if rules == "official":
        res_ans = clean_answer(prediction)
        for r in records:
            r["answer"] = clean_answer(r["answer"])
        if len({r["answer"] for r in records}) > 1:
            for r in records:
                r["answer"] = normalize_answer(r["answer"], rules)
            res_ans = normalize_answer(res_ans, rules)
    elif rules == "legacy":
        res_ans = normalize_answer(prediction, rules)
        if len({r["answer"] for r in records}) > 1:
            for r in records:
                r["answer"] = process_punctuation(r["answer"], rules)
    else:
        raise ValueError(f"VQA accuracy rules {rules!r}: expected one of {', '.join(VQA_EVAL_RULES)}")
    gt_acc = []
    for gt_datum in records:
        other_gt = [item for item in records if item != gt_datum]
        matching = [item for item in other_gt if item["answer"] == res_ans]
        gt_acc.append(min(1, float(len(matching)) / 3))
    return float(sum(gt_acc)) / len(gt_acc)


def vqa_evaluate(predictions: Mapping[Any, str], annotations: Mapping[Any, Mapping[str, Any]],
                 rules: str = DEFAULT_VQA_EVAL) -> dict[str, Any]:
    """Score predictions ``{question_id: answer}`` against annotations ``{question_id: {"answers" or
    "answer_records", "answer_type", "question_type"}}`` under ``rules`` (:data:`VQA_EVAL_RULES`), iterating over
    the annotated questions (every one must have a prediction, as the official ``loadRes`` asserts).

    Returns percentages: ``overall``, ``per_answer_type``, ``per_question_type`` and ``per_question``; plus ``n``
    and ``n_per_answer_type``.
    """
    acc_qa: list[float] = []
    per_ans: dict[str, list[float]] = {}
    per_ques: dict[str, list[float]] = {}
    per_question: dict[Any, float] = {}
    for qid, ann in annotations.items():
        if qid not in predictions:
            raise KeyError(qid)
        answers = ann.get("answer_records") or ann["answers"]
        acc = vqa_question_accuracy(predictions[qid], answers, rules)
        acc_qa.append(acc)
        per_ans.setdefault(ann["answer_type"], []).append(acc)
        per_ques.setdefault(ann["question_type"], []).append(acc)
        per_question[qid] = 100 * acc
    if not acc_qa:
        raise ValueError("no annotated questions")
    return {
        "n": len(acc_qa),
        "overall": 100 * float(sum(acc_qa)) / len(acc_qa),
        "per_answer_type": {k: 100 * float(sum(v)) / len(v) for k, v in per_ans.items()},
        "n_per_answer_type": {k: len(v) for k, v in per_ans.items()},
        "per_question_type": {k: 100 * float(sum(v)) / len(v) for k, v in per_ques.items()},
        "per_question": per_question,
    }


def snli_ve_evaluate(predictions: Mapping[str, str], gold: Mapping[str, str]) -> dict[str, Any]:
    """Accuracy (percent) of predicted labels over every gold pair, plus per-gold-label accuracy (recall)."""
    if not gold:
        raise ValueError("no gold labels")
    hits: dict[str, list[bool]] = {}
    for pid, label in gold.items():
        hits.setdefault(label, []).append(predictions[pid] == label)
    total = sum(sum(v) for v in hits.values())
    return {
        "n": len(gold),
        "accuracy": 100 * total / len(gold),
        "per_label": {k: 100 * sum(v) / len(v) for k, v in hits.items()},
    }


def vcr_evaluate(predictions: Mapping[str, tuple[int, int]], gold: Mapping[str, tuple[int, int]]) -> dict[str, Any]:
    """VCR accuracies (percent): Q->A (answer right), QA->R (rationale right, given the right answer) and Q->AR
    (a question counts only when both its answer and its rationale are right)."""
    if not gold:
        raise ValueError("no gold labels")
    qa = qar = both = 0
    for aid, (ga, gr) in gold.items():
        pa, pr = predictions[aid]
        qa += pa == ga
        qar += pr == gr
        both += pa == ga and pr == gr
    n = len(gold)
    return {"n": n, "q2a": 100 * qa / n, "qa2r": 100 * qar / n, "q2ar": 100 * both / n}


def vcr_evaluate_probabilities(scores: Mapping[str, tuple[Sequence[float], Sequence[Sequence[float]]]],
                               gold: Mapping[str, tuple[int, int]]) -> dict[str, Any]:
    """VCR accuracies of the leaderboard's per-choice scores ``{annot_id: (answer (4,), rationale (4 answers, 4
    rationales))}``, as the leaderboard computes them: the answer is the argmax over the answers, the rationale the
    argmax over the rationales conditioned on the *right* answer (the first on a tie); then :func:`vcr_evaluate`."""
    def argmax(xs: Sequence[float]) -> int:
        xs = list(xs)
        return max(range(len(xs)), key=lambda i: (xs[i], -i))

    chosen = {aid: (argmax(scores[aid][0]), argmax(scores[aid][1][ga])) for aid, (ga, _) in gold.items()}
    return vcr_evaluate(chosen, gold)
