"""VCR predictions in the leaderboard's format: `mad eval --leaderboard` (and any evaluation of a split without labels)
writes, beside the JSON predictions, the CSV of per-choice probabilities the VCR leaderboard takes (the answers' and,
for each answer, the rationales' conditioned on it: 4 + 16 columns); a labelled split otherwise gets one QA->R pass
under the right answer and no CSV, with the same predictions. `mad score` scores it as the leaderboard does (Q->A,
QA->R given the right answer, Q->AR). The column names are the leaderboard's own (rowanz/r2c, models/README.md,
"Submitting to the leaderboard")."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from mad_pipeline.stages import evaluate as eval_stage
from mad_pipeline.stages import score as score_stage
from mad_pipeline.stages.distill import DistillConfig
from mad_pipeline.stages.distill import run as distill_run
from typer.testing import CliRunner

from mad_pipeline.data import load_dataset
from mad_pipeline.errors import InputError
from mad_pipeline.losses import MADConfig
from mad_pipeline.students import image_preprocess, load_student
from mad_pipeline.tasks import get_task
from mad_pipeline.tasks.vcr import qa2r_candidates
from mad_pipeline.training.collate import Collate, StudentTokenizer
from mad_pipeline.training.config import TrainConfig
from mad_pipeline.training.dataset import SampleDataset

FIX = REPO / "tests" / "fixtures" / "vcr" / "val.jsonl"  # gold: val-0 (answer 1, rationale 1), val-1 (1, 2)
# the header of the leaderboard's example submission, copied from rowanz/r2c models/README.md
LEADERBOARD_HEADER = (
    "annot_id,answer_0,answer_1,answer_2,answer_3,rationale_conditioned_on_a0_0,rationale_conditioned_on_a0_1,"
    "rationale_conditioned_on_a0_2,rationale_conditioned_on_a0_3,rationale_conditioned_on_a1_0,"
    "rationale_conditioned_on_a1_1,rationale_conditioned_on_a1_2,rationale_conditioned_on_a1_3,"
    "rationale_conditioned_on_a2_0,rationale_conditioned_on_a2_1,rationale_conditioned_on_a2_2,"
    "rationale_conditioned_on_a2_3,rationale_conditioned_on_a3_0,rationale_conditioned_on_a3_1,"
    "rationale_conditioned_on_a3_2,rationale_conditioned_on_a3_3")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mad_pipeline.shapes.formats import write_dataset

    out = tmp_path_factory.mktemp("shapes-vcr-lb")
    write_dataset(out, size=16, seed=0)
    return out


@pytest.fixture(scope="module")
def vcr_run(world, tmp_path_factory):
    """A 2-step VCR baseline run (no teacher needed for what is tested here), evaluated on val by the run (one QA->R
    pass, no CSV) and then by `mad eval --leaderboard` into the same files (the CSV beside them)."""
    out = tmp_path_factory.mktemp("vcr-lb") / "run"
    res = distill_run(DistillConfig(task="vcr", data_root=world / "vcr", out=out, teacher=None,
                                    mad=MADConfig.from_switches("baseline"), progress=False,
                                    train=TrainConfig(steps=2, batch_size=4, log_every=1, num_workers=0)),
                      log=lambda m: None)
    preds = out / "predictions" / "val.json"
    assert not preds.with_suffix(".leaderboard.csv").exists()  # labelled: no CSV unless asked for
    one_pass = preds.read_bytes()
    ev = eval_stage.run(eval_stage.EvalConfig(run=out, split="val", leaderboard=True, progress=False))
    assert set(ev["files"]) == {"predictions", "leaderboard"}
    assert preds.read_bytes() == one_pass and ev["metrics"] == res.metrics["eval"]["val"]  # the same predictions
    return out, res


def _read(path: Path) -> tuple[list[str], dict[str, dict[str, float]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], {r[0]: {k: float(v) for k, v in zip(rows[0][1:], r[1:], strict=True)} for r in rows[1:]}


def _cli(*args) -> tuple[int, str, BaseException | None]:
    from mad_pipeline.cli.main import _register, app

    _register()
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.stdout, res.exception


def test_eval_writes_the_leaderboard_csv_beside_the_predictions(vcr_run, world):
    out, res = vcr_run
    for split in ("val",):
        path = out / "predictions" / f"{split}.leaderboard.csv"
        header, rows = _read(path)
        assert ",".join(header) == LEADERBOARD_HEADER
        preds = json.loads((out / "predictions" / f"{split}.json").read_text())
        assert set(preds[0]) == {"annot_id", "answer", "rationale"}  # the JSON keeps its own format
        assert set(rows) == {p["annot_id"] for p in preds}
        gold = {s.id: s.meta.get("answer_label") for s in load_dataset("vcr", world / "vcr", split=split).samples}
        for p in preds:
            r = rows[p["annot_id"]]
            answers = np.array([r[f"answer_{i}"] for i in range(4)])
            rationales = np.array([[r[f"rationale_conditioned_on_a{i}_{j}"] for j in range(4)] for i in range(4)])
            assert answers.sum() == pytest.approx(1) and rationales.sum(1) == pytest.approx(np.ones(4))
            assert int(answers.argmax()) == p["answer"]
            # the JSON's rationale is the one chosen given the right answer (given its own answer without labels)
            given = p["answer"] if gold[p["annot_id"]] is None else gold[p["annot_id"]]
            assert int(rationales[given].argmax()) == p["rationale"]


def test_the_sixteen_columns_are_the_rationales_conditioned_on_each_answer(vcr_run, world):
    """Row ``a`` of the 4x4 block is the student's softmax over the four rationales read after answer ``a``."""
    out, _ = vcr_run
    _, rows = _read(out / "predictions" / "val.leaderboard.csv")
    student = load_student(out / "student").eval()
    task = get_task("vcr")
    ds = load_dataset("vcr", world / "vcr", split="val")
    s = ds.samples[0]
    collate = Collate(task, StudentTokenizer(student))
    batch = collate(SampleDataset(ds.samples, ds.root, task, image_preprocess(student)).__getitems__([0]))
    got = np.array([[rows[s.id][f"rationale_conditioned_on_a{a}_{j}"] for j in range(4)] for a in range(4)])
    with torch.no_grad():
        for a in range(4):
            enc = collate.tokenize(qa2r_candidates(s, a))
            o = student(batch.pixel_values, batch.crop_boxes, enc.input_ids[None], enc.attention_mask[None],
                        enc.char_spans[None])
            assert got[a] == pytest.approx(torch.softmax(o.logits.double(), -1)[0].numpy(), abs=1e-5)
    assert not np.allclose(got[0], got[1], atol=1e-9)  # each answer conditions its own rationale scores


def test_score_reads_the_csv_like_the_json(vcr_run, world, bars_restored):
    out, res = vcr_run
    ann = world / "vcr" / "val.jsonl"
    from_json = score_stage.run(score_stage.ScoreConfig(task="vcr", predictions=out / "predictions" / "val.json",
                                                        annotations=ann))
    from_csv = score_stage.run(score_stage.ScoreConfig(
        task="vcr", predictions=out / "predictions" / "val.leaderboard.csv", annotations=ann))
    for k in ("n", "q2a", "qa2r", "q2ar"):
        assert from_csv[k] == from_json[k] == res.metrics["eval"]["val"][k]
    code, stdout, _ = _cli("score", "--task", "vcr", "--predictions", out / "predictions" / "val.leaderboard.csv",
                           "--annotations", ann)
    assert code == 0 and all(m in stdout for m in ("Q->A", "QA->R", "Q->AR"))
    # `mad eval --leaderboard` writes it beside its --out; without the option, a labelled split gets no CSV
    code, stdout, _ = _cli("eval", "--run", out, "--split", "val", "--out", out.parent / "ev.json", "-q",
                           "--leaderboard")
    assert code == 0 and f"leaderboard: {out.parent / 'ev.leaderboard.csv'}" in stdout.replace("\n", "")
    assert (out.parent / "ev.leaderboard.csv").read_text() == (out / "predictions" / "val.leaderboard.csv").read_text()
    code, stdout, _ = _cli("eval", "--run", out, "--split", "val", "--out", out.parent / "plain.json", "-q")
    assert code == 0 and "leaderboard:" not in stdout and not (out.parent / "plain.leaderboard.csv").exists()
    assert (out.parent / "plain.json").read_text() == (out.parent / "ev.json").read_text()


def _write(path: Path, rows: list[list], header: str = LEADERBOARD_HEADER) -> Path:
    path.write_text(header + "\n" + "".join(",".join(str(x) for x in r) + "\n" for r in rows))
    return path


def _row(annot_id: str, answer: int, rationale_by_answer: dict[int, int]) -> list:
    """A row choosing ``answer`` and, under answer ``a``, rationale ``rationale_by_answer[a]`` (default 0)."""
    ans = [0.1] * 4
    ans[answer] = 0.7
    rat = []
    for a in range(4):
        r = [0.1] * 4
        r[rationale_by_answer.get(a, 0)] = 0.7
        rat += r
    return [annot_id, *ans, *rat]


def test_csv_scored_as_the_leaderboard_does(tmp_path):
    """Answer: argmax of answer_*; rationale: argmax of the rationales conditioned on the RIGHT answer."""
    p = _write(tmp_path / "sub.csv", [
        _row("val-0", 1, {1: 1, 0: 3}),   # answer right, rationale under the right answer right: Q->AR
        _row("val-1", 0, {0: 1, 1: 2}),   # answer wrong; under its own answer a wrong rationale, under the right
    ])                                    # one the right rationale: QA->R right, Q->AR wrong
    res = score_stage.run(score_stage.ScoreConfig(task="vcr", predictions=p, annotations=FIX))
    assert (res["q2a"], res["qa2r"], res["q2ar"]) == (50.0, 100.0, 50.0)
    # column order does not matter (the leaderboard reads columns by name); any suffix is read by its header
    cols = LEADERBOARD_HEADER.split(",")
    order = [0, *reversed(range(1, len(cols)))]
    rows = [_row("val-0", 1, {1: 1}), _row("val-1", 1, {1: 2})]
    q = _write(tmp_path / "sub.txt", [[r[i] for i in order] for r in rows], ",".join(cols[i] for i in order))
    res = score_stage.run(score_stage.ScoreConfig(task="vcr", predictions=q, annotations=FIX))
    assert (res["q2a"], res["qa2r"], res["q2ar"]) == (100.0, 100.0, 100.0)


@pytest.mark.parametrize("mutate, expect", [
    (lambda h, rows: (h.replace(",answer_3", ""), [r[:4] + r[5:] for r in rows]), r"sub\.csv:1: missing column "
                                                                                  r"'answer_3'"),
    (lambda h, rows: (h + ",answer_4", [r + [0.1] for r in rows]), r"sub\.csv:1: unknown column 'answer_4'"),
    (lambda h, rows: (h, rows + [rows[0]]), r"sub\.csv:4 \(annot_id=val-0\): duplicate prediction"),
    (lambda h, rows: (h, [["val-9", *rows[0][1:]], rows[1]]), r"sub\.csv:2 \(annot_id=val-9\): not in"),
    (lambda h, rows: (h, rows[:1]), r"sub\.csv: no prediction for annot_id=val-1 \(1 of 2"),
    (lambda h, rows: (h, [[*rows[0][:3], "nan", *rows[0][4:]], rows[1]]),
     r"sub\.csv:2 \(annot_id=val-0\): column 'answer_2' must be a finite number, got 'nan'"),
    (lambda h, rows: (h, [rows[0][:-1], rows[1]]), r"sub\.csv:2: 20 fields, the header has 21"),
])
def test_csv_mistakes_are_one_line(tmp_path, mutate, expect):
    header, rows = mutate(LEADERBOARD_HEADER, [_row("val-0", 1, {}), _row("val-1", 1, {})])
    p = _write(tmp_path / "sub.csv", rows, header)
    with pytest.raises(InputError, match=expect):
        score_stage.run(score_stage.ScoreConfig(task="vcr", predictions=p, annotations=FIX))


def test_cli_csv_error_is_one_line(tmp_path):
    p = _write(tmp_path / "sub.csv", [_row("val-0", 1, {})])
    code, _, exc = _cli("score", "--task", "vcr", "--predictions", p, "--annotations", FIX)
    assert isinstance(exc, InputError) and str(exc).startswith(f"{p}: no prediction for annot_id=val-1")
    assert "\n" not in str(exc)  # main() prints it as one `error: ...` line, exit 2
