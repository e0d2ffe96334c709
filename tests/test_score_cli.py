"""``mad score``: agrees with the official VQA evaluation (vqaEval.py as it is today, and its legacy Python 3 port
with ``--vqa-eval legacy``) to 1e-9 on a crafted set exercising every normalisation rule and partial agreement;
SNLI-VE accuracy; VCR Q->A, QA->R, Q->AR; user errors are one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import mad_inproc
from mad_pipeline.cli import main as cli_main
from typer.testing import CliRunner

from mad_pipeline.errors import InputError

FIX = Path(__file__).parent / "fixtures"

# (question_id, answer_type, ten human answers, prediction, expected legacy accuracy, expected official accuracy)
# With c = number of the ten (processed) answers equal to the processed prediction, the accuracy is the mean over
# the 10 leave-one-out subsets of min(1, matches/3) = (c*min(1,(c-1)/3) + (10-c)*min(1,c/3)) / 10:
#   c=0 -> 0;  c=1 -> (0 + 9/3)/10 = 0.3;  c=2 -> (2/3 + 16/3)/10 = 0.6;  c=3 -> (2 + 7)/10 = 0.9;  c>=4 -> 1.
# legacy (the comments below count c under these rules): the prediction always gets processPunctuation +
# processDigitArticle; the ten answers get processPunctuation only, and only when they are not all identical.
# official: answers and prediction are cleaned (strip); when the answers are not all identical both get
# processPunctuation + processDigitArticle, else they are compared as they are. It differs on rows 2 ("two" = ten
# "two": c=10 -> 1.0), 12 (answers lower-cased too: c=10 -> 1.0) and 13 ("hot-dog" = ten "hot-dog": 1.0); on every
# other row the answers either disagree and are already normalised, or the prediction is matched the same way.
CRAFTED = [
    # number words: "two" -> "2"; answers disagree, 3 say "2"                                      c=3 -> 0.9
    (1, "number", ["2"] * 3 + ["3"] * 7, "two", 0.9, 0.9),
    # unanimous answers are not processed at all: "two" (pred -> "2") never equals "two"             c=0 -> 0.0
    (2, "number", ["two"] * 10, "two", 0.0, 1.0),
    # article "a" dropped                                                                            c=2 -> 0.6
    (3, "other", ["dog"] * 2 + ["cat"] * 8, "a dog", 0.6, 0.6),
    # article "the" + upper case                                                                     c=4 -> 1.0
    (4, "other", ["frisbee"] * 4 + ["kite"] * 6, "The Frisbee", 1.0, 1.0),
    # punctuation after a word: "!" not touching a space -> replaced by a space, then split/joined   c=1 -> 0.3
    (5, "yes/no", ["yes"] + ["no"] * 9, "yes!", 0.3, 0.3),
    # punctuation inside a word, in prediction and answers: "t-shirt" -> "t shirt" (2 + 1 already)   c=3 -> 0.9
    (6, "other", ["t-shirt"] * 2 + ["t shirt"] + ["shirt"] * 7, "t-shirt", 0.9, 0.9),
    # "," touching a space is deleted: "red, white" -> "red white"                                    c=2 -> 0.6
    (7, "other", ["red white"] * 2 + ["red"] * 8, "red, white", 0.6, 0.6),
    # digit,digit switches every mark to deletion: "1,000" -> "1000"                                c=1 -> 0.3
    (8, "number", ["1000"] + ["100"] * 9, "1,000", 0.3, 0.3),
    # periodStrip: trailing "." goes, decimal point stays: "2.5." -> "2.5"                          c=3 -> 0.9
    (9, "number", ["2.5"] * 3 + ["2"] * 7, "2.5.", 0.9, 0.9),
    # contractions: "dont" -> "don't" (the answers keep their apostrophe: "'" is not a mark)          c=1 -> 0.3
    (10, "other", ["don't know"] + ["no"] * 9, "dont know", 0.3, 0.3),
    # extra spaces, tab, newline, case: "  Fire   hydrant\t\n" -> "fire hydrant"                      c=9 -> 1.0
    (11, "other", ["fire hydrant"] * 9 + ["hydrant"], "  Fire   hydrant\t\n", 1.0, 1.0),
    # answers are never lower-cased: "YES" -> "yes" matches only the two "yes"                        c=2 -> 0.6
    (12, "yes/no", ["Yes"] * 8 + ["yes"] * 2, "YES", 0.6, 1.0),
    # unanimous "hot-dog" is left as is; prediction becomes "hot dog"                                c=0 -> 0.0
    (13, "other", ["hot-dog"] * 10, "hot-dog", 0.0, 1.0),
    # same prediction, answers disagree -> processed to "hot dog" (9)                                 c=9 -> 1.0
    (14, "other", ["hot-dog"] * 9 + ["hotdog"], "hot-dog", 1.0, 1.0),
    # no match                                                                                       c=0 -> 0.0
    (15, "other", ["apple"] * 10, "banana", 0.0, 0.0),
    # "none" -> "0"                                                                                  c=4 -> 1.0
    (16, "number", ["0"] * 4 + ["1"] * 6, "none", 1.0, 1.0),
]
# legacy, per answer type:  number = (0.9 + 0 + 0.3 + 0.9 + 1.0) / 5 = 3.1 / 5 = 0.62
#                           yes/no = (0.3 + 0.6) / 2 = 0.45
#                           other  = (0.6 + 1.0 + 0.9 + 0.6 + 0.3 + 1.0 + 0 + 1.0 + 0) / 9 = 5.4 / 9 = 0.6
#                           overall = (3.1 + 0.9 + 5.4) / 16 = 9.4 / 16 = 0.5875
# official: rows 2, 12 and 13 score 1.0: number 4.1 / 5 = 0.82, yes/no 1.3 / 2 = 0.65, other 6.4 / 9,
#           overall (4.1 + 1.3 + 6.4) / 16 = 11.8 / 16 = 0.7375
EXPECTED = {"legacy": {"overall": 58.75, "number": 62.0, "yes/no": 45.0, "other": 60.0},
            "official": {"overall": 73.75, "number": 82.0, "yes/no": 65.0, "other": 640 / 9}}
# where the two rule sets part (each alone): (question_id, answer_type, answers, prediction, legacy, official)
DIFFERENCES = [
    (17, "number", ["two"] * 9 + ["2"], "2", 0.3, 1.0),     # legacy: answers keep "two" -> 1 match; official: all "2"
    (18, "other", ["beach"] * 10, "the beach", 1.0, 0.0),   # legacy: prediction -> "beach"; official: compared as is
    (19, "number", ["2"] * 5 + ["2 "] * 5, "two", 1.0, 0.0),  # official: cleaned answers identical -> as is
    (20, "other", ["\u0663\u0665"] * 9 + ["x"], "\u0663.\u0665", 0.0, 1.0),  # official (Python 2): "." goes, \d is 0-9
]


def _write_vqa(tmp_path: Path, crafted=CRAFTED, predictions=None) -> tuple[Path, Path, Path]:
    info = {"description": "crafted", "version": "2.0", "year": 2017}
    lic = {"name": "Creative Commons Attribution 4.0 International License",
           "url": "http://creativecommons.org/licenses/by/4.0/"}
    qs, anns = [], []
    for qid, atype, gts, *_ in crafted:
        qs.append({"image_id": 100 + qid, "question": f"Question {qid}?", "question_id": qid})
        anns.append({"question_type": "what is" if atype == "other" else "how many" if atype == "number" else "is",
                     "multiple_choice_answer": gts[0],
                     "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                 for i, a in enumerate(gts)],
                     "image_id": 100 + qid, "answer_type": atype, "question_id": qid})
    q = tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json"
    a = tmp_path / "v2_mscoco_val2014_annotations.json"
    p = tmp_path / "results.json"
    q.write_text(json.dumps({"info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": lic,
                             "data_subtype": "val2014", "questions": qs}))
    a.write_text(json.dumps({"info": info, "license": lic, "data_subtype": "val2014", "annotations": anns,
                             "data_type": "mscoco"}))
    if predictions is None:
        predictions = [{"question_id": qid, "answer": pred} for qid, _t, _g, pred, *_ in crafted]
    p.write_text(json.dumps(predictions))
    return q, a, p


@pytest.fixture(scope="module")
def runner():
    cli_main._register()
    return CliRunner()


def _invoke(runner, args):
    return runner.invoke(cli_main.app, ["score", *map(str, args)])


@pytest.mark.parametrize("rules", [None, "official", "legacy"])
def test_vqa_crafted_set_matches_official(runner, tmp_path, rules):
    q, a, p = _write_vqa(tmp_path)
    flag = [] if rules is None else ["--vqa-eval", rules]
    res = _invoke(runner, ["--task", "vqa", "--predictions", p, "--questions", q, "--annotations", a, "--json", *flag])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    rules = rules or "official"  # the default
    expected = EXPECTED[rules]
    assert out["task"] == "vqa" and out["n"] == 16 and out["vqa_eval"] == rules
    assert out["overall"] == pytest.approx(expected["overall"], abs=1e-9)
    for t in ("number", "yes/no", "other"):
        assert out["per_answer_type"][t] == pytest.approx(expected[t], abs=1e-9)
    assert out["n_per_answer_type"] == {"number": 5, "other": 9, "yes/no": 2}
    assert out["per_question_type"]["how many"] == pytest.approx(expected["number"], abs=1e-9)


@pytest.mark.parametrize("rules", ["legacy", "official"])
def test_vqa_per_question_values(tmp_path, rules):
    # each crafted question alone, through the stage, to 1e-9
    from mad_pipeline.stages.score import ScoreConfig, run

    column = {"legacy": 4, "official": 5}[rules]
    for row in CRAFTED + DIFFERENCES:
        d = tmp_path / str(row[0])
        d.mkdir()
        q, a, p = _write_vqa(d, [row])
        out = run(ScoreConfig(task="vqa", predictions=p, annotations=a, questions=q, vqa_eval=rules))
        assert out["overall"] == pytest.approx(100 * row[column], abs=1e-9), row


def test_vqa_table_output(runner, tmp_path):
    q, a, p = _write_vqa(tmp_path)
    res = _invoke(runner, ["--task", "vqa", "--predictions", p, "--questions", q, "--annotations", a])
    assert res.exit_code == 0, res.output
    for s in ("official VQA rules", "overall", "73.75", "number", "82.00", "yes/no", "65.00", "other", "71.11"):
        assert s in res.output
    res = _invoke(runner, ["--task", "vqa", "--predictions", p, "--questions", q, "--annotations", a,
                           "--vqa-eval", "legacy"])
    assert res.exit_code == 0, res.output
    for s in ("legacy VQA rules", "overall", "58.75", "number", "62.00", "yes/no", "45.00", "other", "60.00"):
        assert s in res.output


def test_vqa_eval_option(runner, tmp_path):
    q, a, p = _write_vqa(tmp_path)
    res = _invoke(runner, ["--task", "vqa", "--predictions", p, "--questions", q, "--annotations", a,
                           "--vqa-eval", "2017"])
    assert isinstance(res.exception, InputError)
    assert str(res.exception) == "--vqa-eval '2017': expected one of official, legacy"
    # other tasks ignore it: same figures, and no rules in their results
    ann = FIX / "snli_ve" / "snli_ve_dev.jsonl"
    p = tmp_path / "preds.json"
    p.write_text(json.dumps([{"pairID": "1000092795.jpg#2r1e", "label": "entailment"},
                             {"pairID": "1000092795.jpg#2r1n", "label": "neutral"},
                             {"pairID": "1000092795.jpg#2r1c", "label": 0}]))
    outs = []
    for rules in ("official", "legacy"):
        res = _invoke(runner, ["--task", "snli-ve", "--predictions", p, "--annotations", ann, "--json",
                               "--vqa-eval", rules])
        assert res.exit_code == 0, res.output
        outs.append(json.loads(res.output.strip().splitlines()[-1]))
    assert outs[0] == outs[1] and "vqa_eval" not in outs[0]


@pytest.mark.parametrize("preds, expect", [
    ([{"question_id": 1, "answer": "2"}], "no prediction for question_id=2"),
    ([{"question_id": i, "answer": "x"} for i in range(1, 17)] + [{"question_id": 99, "answer": "x"}],
     "question_id=99: not in"),
    ([{"question_id": 1, "answer": "x"}] * 2, "question_id=1: duplicate prediction"),
    ([{"question_id": 1, "answer": 2}], "question_id=1: field 'answer' must be a string"),
    ([{"question_id": "1", "answer": "2"}], "[0]: field 'question_id' must be an integer"),
    ({"question_id": 1}, "expected a JSON array"),
])
def test_vqa_prediction_errors(runner, tmp_path, preds, expect):
    q, a, p = _write_vqa(tmp_path, predictions=preds)
    res = _invoke(runner, ["--task", "vqa", "--predictions", p, "--questions", q, "--annotations", a])
    assert isinstance(res.exception, InputError)
    assert str(p) in str(res.exception) and expect in str(res.exception)


def test_snli_ve_score(runner, tmp_path):
    ann = FIX / "snli_ve" / "snli_ve_dev.jsonl"
    p = tmp_path / "preds.json"
    p.write_text(json.dumps([{"pairID": "1000092795.jpg#2r1e", "label": "entailment"},
                             {"pairID": "1000092795.jpg#2r1n", "label": "contradiction"},
                             {"pairID": "1000092795.jpg#2r1c", "label": 2}]))
    res = _invoke(runner, ["--task", "snli-ve", "--predictions", p, "--annotations", ann, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["n"] == 3 and out["accuracy"] == pytest.approx(200 / 3, abs=1e-9)
    assert out["per_label"] == {"entailment": 100.0, "neutral": 0.0, "contradiction": 100.0}
    res = _invoke(runner, ["--task", "snli-ve", "--predictions", p, "--annotations", ann])
    assert "66.67" in res.output


def test_vcr_score_q2ar_needs_both(runner, tmp_path):
    ann = FIX / "vcr" / "val.jsonl"  # gold: val-0 (answer 1, rationale 1), val-1 (answer 1, rationale 2)
    p = tmp_path / "preds.json"
    p.write_text(json.dumps([{"annot_id": "val-0", "answer": 1, "rationale": 1},    # both right
                             {"annot_id": "val-1", "answer": 0, "rationale": 2}]))  # rationale right only
    res = _invoke(runner, ["--task", "vcr", "--predictions", p, "--annotations", ann, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert (out["q2a"], out["qa2r"], out["q2ar"]) == (50.0, 100.0, 50.0)
    res = _invoke(runner, ["--task", "vcr", "--predictions", p, "--annotations", ann])
    assert "Q->AR" in res.output and "50.00" in res.output
    p.write_text(json.dumps([{"annot_id": "val-0", "answer": 1, "rationale": 7}]))
    res = _invoke(runner, ["--task", "vcr", "--predictions", p, "--annotations", ann])
    assert isinstance(res.exception, InputError) and "annot_id=val-0: field 'rationale'" in str(res.exception)


def test_cli_user_errors_are_one_line_exit_2(tmp_path):
    q, a, p = _write_vqa(tmp_path)
    p.write_text('[{"question_id": 1, "answer": "x"},\n{"question_id": 2')
    cmd = [sys.executable, "-m", "mad_pipeline.cli", "score", "--task", "vqa", "--predictions", str(p),
           "--questions", str(q), "--annotations", str(a)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: {p}:2: malformed JSON (") and len(r.stderr.strip().splitlines()) == 1
    # --questions missing (the same entry point, in this process)
    r = mad_inproc(*cmd[3:-4], "--annotations", str(a), check=False)
    assert r.returncode == 2 and r.stderr.startswith("error: --questions is required")
    assert "Traceback" not in r.stderr
