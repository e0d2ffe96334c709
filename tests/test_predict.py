"""`mad predict --run RUN --image IMG --text "..."`: the student's answer (a table, or `--json`) equals its own
forward pass on the image as `mad eval` preprocesses it; a multiple-choice run picks the best choice; a missing run,
image or student is one `error:` line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES

from mad_pipeline.students import build_student, load_student
from mad_pipeline.tasks import get_task
from mad_pipeline.tasks.vqa import AnswerVocab

ANSWERS = ("red", "blue", "green", "two", "yes", "no", "circle")
PHOTO = EXAMPLES / "images" / "chelsea.jpg"  # non-square: the student's centre crop applies


def _run_dir(root: Path, task_name: str) -> Path:
    """A run directory as `mad distill` leaves it (run.json, the task's files, student/), without training."""
    task = get_task(task_name)
    if task_name == "vqa":
        task.vocab = AnswerVocab(ANSWERS, (1,) * len(ANSWERS), 1)
    torch.manual_seed(0)
    student = build_student("vilt-tiny", task_name, 4 if task.multiple_choice else task.num_classes)
    student.labels = task.label_names()
    student.eval().save(root / "student")
    task.save(root)
    (root / "run.json").write_text(json.dumps({"format": 1, "task": task_name, "dataset": task_name,
                                               "data_root": str(root), "student_dir": "student"}))
    return root


@pytest.fixture(scope="module")
def vqa_run(tmp_path_factory):
    return _run_dir(tmp_path_factory.mktemp("predict-vqa"), "vqa")


def _mad(capsys, *args: str) -> tuple[int, str, str]:
    """The real entry point (`mad_pipeline.cli.main.main`) in this process: exit code, stdout, stderr."""
    from mad_pipeline.cli.main import main

    code = 0
    try:
        main(list(args))
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def _own_logits(run: Path, texts: list[str], choices: bool = False) -> torch.Tensor:
    from PIL import Image

    student = load_student(run / "student")
    pixels, box = student.preprocess_image(Image.open(PHOTO))
    enc = student.tokenize(texts)
    ids, mask = (enc.input_ids[None], enc.attention_mask[None]) if choices else (enc.input_ids, enc.attention_mask)
    with torch.no_grad():
        return student(pixels[None], torch.tensor([box]), ids, mask).logits


def test_predict_vqa_json_is_the_students_answer(vqa_run, capsys):
    texts = ["what colour is the cat?", "how many cats are there?"]
    code, out, err = _mad(capsys, "predict", "--run", str(vqa_run), "--image", str(PHOTO), "--text", texts[0],
                          "--text", texts[1], "--top-k", "3", "--json")
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["task"] == "vqa" and not res["multiple_choice"] and [p["text"] for p in res["predictions"]] == texts
    for text, pred in zip(texts, res["predictions"], strict=True):
        logits = _own_logits(vqa_run, [text])[0]
        order = logits.argsort(descending=True)[:3].tolist()
        assert pred["label"] == ANSWERS[order[0]]
        assert [t["label"] for t in pred["top"]] == [ANSWERS[i] for i in order]
        assert pred["score"] == pytest.approx(torch.sigmoid(logits[order[0]]).item(), abs=1e-5)  # VQA: sigmoid


def test_predict_prints_a_table(vqa_run, capsys):
    code, out, err = _mad(capsys, "predict", "--run", str(vqa_run), "--image", str(PHOTO), "--text", "what is it?",
                          "--top-k", "2")
    assert code == 0, err
    best = ANSWERS[_own_logits(vqa_run, ["what is it?"])[0].argmax().item()]
    assert "mad predict: vqa, chelsea.jpg" in out and "what is it?" in out and best in out
    assert "prediction" in out and "score" in out


def test_predict_multiple_choice_picks_the_best_choice(tmp_path, capsys):
    run = _run_dir(tmp_path / "vcr", "vcr")
    choices = ["why is the cat here? it lives here", "why is the cat here? it is lost",
               "why is the cat here? it is hungry", "why is the cat here? it is a dog"]
    code, out, err = _mad(capsys, "predict", "--run", str(run), "--image", str(PHOTO),
                          *[a for c in choices for a in ("--text", c)], "--json")
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    logits = _own_logits(run, choices, choices=True)[0]
    assert res["multiple_choice"] and res["choice"] == logits.argmax().item()
    assert res["text"] == choices[res["choice"]]
    assert [c["logit"] for c in res["choices"]] == pytest.approx(logits.tolist(), abs=1e-5)


def test_predict_errors_are_one_line(vqa_run, tmp_path, capsys):
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not an image")
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "run.json").write_text(json.dumps({"task": "vqa"}))
    cases = [
        (["--run", str(tmp_path / "nope"), "--image", str(PHOTO)], f"--run {tmp_path / 'nope'}: no such directory"),
        (["--run", str(tmp_path), "--image", str(PHOTO)], "not a mad distill run directory (no run.json)"),
        (["--run", str(tmp_path / "unfinished"), "--image", str(PHOTO)], "no trained student yet"),
        (["--run", str(vqa_run), "--image", str(tmp_path / "missing.jpg")], "missing.jpg: file not found"),
        (["--run", str(vqa_run), "--image", str(not_image)], "notes.jpg: not a recognised image format"),
    ]
    for args, message in cases:
        code, out, err = _mad(capsys, "predict", *args, "--text", "what is it?")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, err)
        assert message in lines[0], (message, lines[0])
