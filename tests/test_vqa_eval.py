"""The VQA accuracy's rule set (``vqa_eval``: official, the default, or legacy) through every path that scores:
``mad distill`` and ``mad eval`` on a real run, the keys of ``mad run``'s stages and of a run directory (VQA's change
with the rules, SNLI-VE's and VCR's do not), the YAML schema; and why the shapes world's VQA figures are the same
under both rule sets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from mad_pipeline.stages.distill import DistillConfig, fingerprint
from mad_pipeline.stages.distill import run as distill_run
from mad_pipeline.stages.pipeline import schema
from typer.testing import CliRunner

from mad_pipeline.cache import Cache
from mad_pipeline.data.vqa import read_vqa
from mad_pipeline.errors import InputError
from mad_pipeline.losses import MADConfig
from mad_pipeline.pipeline import plan as plan_lib
from mad_pipeline.pipeline.config import from_dict
from mad_pipeline.pipeline.resolve import Resolver
from mad_pipeline.shapes.formats import write_dataset
from mad_pipeline.shapes.items import TEMPLATES
from mad_pipeline.shapes.zeroshot import candidates
from mad_pipeline.tasks.metrics import (
    VQA_EVAL_RULES,
    clean_answer,
    normalize_answer,
    process_punctuation,
    vqa_question_accuracy,
)
from mad_pipeline.training.config import TrainConfig


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes-vqa-eval")
    write_dataset(out, size=8, seed=0)
    return out


def _stage_keys(world: Path, cache: Path, task: str, rules: str | None) -> dict[str, tuple[str, dict]]:
    """Keys (and params) of the distill and eval stages of a one-run baseline config, as `mad run` computes them."""
    raw = {"task": task, "data": {"root": str(world / task)}, "methods": ["baseline"]}
    if rules is not None:
        raw["vqa_eval"] = rules
    values = from_dict(raw, schema(), source="x.yaml").values
    resolver = Resolver(values, "x.yaml", Cache.at(cache), dry_run=True)
    out = {}
    for st in plan_lib.expand(values):
        if st.kind in ("distill", "eval"):
            resolver.resolve(st)
            st.record = {}  # as if it had run: the eval stage's key reads its distill stage's
            resolver.by_id[st.id] = st
            out[st.kind] = (st.key, st.meta["_params"])
    return out


def test_rules_enter_the_keys_of_vqa_stages_only(world, tmp_path):
    for task in ("vqa", "snli-ve", "vcr"):
        default, official, legacy = (_stage_keys(world, tmp_path / "cache", task, r)
                                     for r in (None, "official", "legacy"))
        for kind in ("distill", "eval"):
            assert default[kind][0] == official[kind][0], (task, kind)  # official is the default
            if task == "vqa":  # a result scored with the other rules is never served
                assert legacy[kind][0] != official[kind][0], kind
                assert legacy[kind][1]["vqa_eval"] == "legacy" and official[kind][1]["vqa_eval"] == "official"
            else:  # the option means nothing here: the keys are exactly what they were before it existed
                assert legacy[kind][0] == official[kind][0], (task, kind)
                assert "vqa_eval" not in official[kind][1], (task, kind)
    # a run directory's fingerprint likewise
    cfg = DistillConfig(task="snli-ve", data_root=world / "snli-ve", out=tmp_path / "r")
    assert "vqa_eval" not in fingerprint(cfg)
    assert fingerprint(cfg) == fingerprint(dataclasses.replace(cfg, vqa_eval="legacy"))
    cfg = dataclasses.replace(cfg, task="vqa", data_root=world / "vqa")
    assert fingerprint(cfg)["vqa_eval"] == "official"
    assert fingerprint(dataclasses.replace(cfg, vqa_eval="legacy"))["vqa_eval"] == "legacy"


def test_yaml_key_is_the_setting():
    key = schema()["vqa_eval"]
    assert key.default == "official" and key.choices == VQA_EVAL_RULES and "legacy" in key.help
    with pytest.raises(InputError, match=r"x.yaml: vqa_eval: 'newest' is not one of official, legacy"):
        from_dict({"task": "vqa", "data": {"root": "."}, "vqa_eval": "newest"}, schema(), source="x.yaml")


def test_distill_and_eval_score_with_the_chosen_rules(world, tmp_path):
    """A real (baseline, one step) VQA run: its metrics and fingerprint carry the rules; the same run directory with
    the other rules is refused before any work; `mad eval --vqa-eval` rescores it under either set."""
    run = tmp_path / "run"
    cfg = DistillConfig(task="vqa", data_root=world / "vqa", out=run, teacher=None, mad=MADConfig.baseline(),
                        train=TrainConfig(steps=1, batch_size=4, num_workers=0), vocab_min_count=1,
                        cache=tmp_path / "cache", progress=False)
    res = distill_run(cfg, log=lambda m: None)
    assert res.metrics["vqa_eval"] == "official"
    assert json.loads((run / "run.json").read_text())["fingerprint"]["vqa_eval"] == "official"
    with pytest.raises(InputError, match="vqa_eval"):
        distill_run(dataclasses.replace(cfg, vqa_eval="legacy"), log=lambda m: None)

    # ground truth where the two rule sets part: nine "the <prediction>" and one "x" per question. official: the
    # answers disagree, so they lose their article and all nine match (100); legacy: the answers only get
    # punctuation processing, so "the <prediction>" never matches the (normalised) prediction (0)
    preds = {p["question_id"]: p["answer"] for p in json.loads(Path(res.predictions["val"]).read_text())}
    ann_file = world / "vqa" / "v2_mscoco_val2014_annotations.json"
    original = ann_file.read_text()
    doc = json.loads(original)
    for a in doc["annotations"]:
        for k, r in enumerate(a["answers"]):
            r["answer"] = "x" if k == 9 else f"the {preds[a['question_id']]}"
    ann_file.write_text(json.dumps(doc))
    try:
        from mad_pipeline.cli import main as cli_main

        cli_main._register()
        got = {}
        for flag in ([], ["--vqa-eval", "legacy"]):
            out = CliRunner().invoke(cli_main.app, ["eval", "--run", str(run), "--split", "val", "--num-workers", "0",
                                                    "--out", str(tmp_path / "p.json"), "--json", *flag])
            assert out.exit_code == 0, out.output
            ev = json.loads(out.output[out.output.rindex('{"task"'):])  # after any progress bar on stderr
            got[tuple(flag)] = (ev["vqa_eval"], ev["value"])
        assert got == {(): ("official", 100.0), ("--vqa-eval", "legacy"): ("legacy", 0.0)}
        out = CliRunner().invoke(cli_main.app, ["eval", "--run", str(run), "--split", "val", "--vqa-eval", "2014"])
        assert isinstance(out.exception, InputError) and "--vqa-eval '2014'" in str(out.exception)
    finally:
        ann_file.write_text(original)


def test_shapes_world_vqa_figures_do_not_depend_on_the_rules(world):
    """The shapes world's VQA figures (the study's tables, the demo's) are the same under both rule sets: every
    answer of every question template is already in normalised form -- a fixed point of cleaning, processPunctuation
    and processDigitArticle under both rules (no capitals, punctuation, number words, articles or doubled spaces) --
    and the ten answers of every question, the student's vocabulary (normalised training answers) and the teacher's
    zero-shot candidates all come from those answer spaces. Both rule sets then compare the strings as they are."""
    space = sorted({a for t in TEMPLATES for a in t.answers})
    for a in space:
        for rules in VQA_EVAL_RULES:
            assert clean_answer(a) == a and process_punctuation(a, rules) == a and normalize_answer(a, rules) == a
    n = 0
    for split in ("train", "val", "test", "shift"):
        for s in read_vqa(world / "vqa", split).samples:
            answers = s.meta["answer_records"]
            assert {r["answer"] for r in answers} <= set(space)
            assert set(candidates(s.texts[0])[1]) <= set(space)  # the teacher's zero-shot answers
            for pred in space:  # everything a student or the teacher can answer
                official = vqa_question_accuracy(pred, answers, "official")
                assert official == vqa_question_accuracy(pred, answers, "legacy"), (s.id, pred)
                n += 1
    assert n > 1000
