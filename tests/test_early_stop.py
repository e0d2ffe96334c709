"""Converged budgets: the dev split carved from the training fraction (disjoint by image, deterministic), early
stopping at the right dev evaluation with the best checkpoint as the run's student, warmup as a fraction of the
steps, patience 0 as today's fixed budget, and a crashed run that resumes exactly with the early-stopping state.
Also the confidence-weighting record (raw confidences and weights, per log step and as a histogram per run)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from mad_pipeline.stages import distill as stage
from mad_pipeline.stages.pipeline import load_config
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from mad_pipeline.errors import InputError, MadError
from mad_pipeline.losses import MADConfig
from mad_pipeline.training.config import TrainConfig, lr_at, warmup_steps
from mad_pipeline.training.early_stop import EarlyStop, dev_split

TIMING = ("step_time_s", "samples_per_s", "eval_seconds")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mad_pipeline.shapes.formats import write_dataset

    root = tmp_path_factory.mktemp("early-stop-world")
    write_dataset(root, size=16, seed=0)
    return root


def _cli(*args: str) -> dict:
    from mad_pipeline.cli.main import _register, app

    _register()
    res = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output.strip().splitlines()[-1])


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


# -- the dev split ----------------------------------------------------------------------------------------------------

def test_dev_split_is_disjoint_by_image_deterministic_and_at_least_min_dev(world):
    from mad_pipeline.data import load_dataset

    samples = load_dataset("vqa", world / "vqa", split="train").samples
    train, dev = dev_split(samples, 0.1, 8, seed=0)
    assert len(dev) >= 8 and len(train) + len(dev) == len(samples)
    assert {s.id for s in train}.isdisjoint({s.id for s in dev})
    assert {s.image for s in train}.isdisjoint({s.image for s in dev})  # no dev image is trained on
    again = dev_split(samples, 0.1, 8, seed=0)
    assert [s.id for s in again[1]] == [s.id for s in dev]  # the same split every time
    other = dev_split(samples, 0.1, 8, seed=1)[1]
    assert {s.id for s in other} != {s.id for s in dev}  # another seed, another split
    big = dev_split(samples, 0.3, 1, seed=0)[1]
    assert len(big) >= math.ceil(0.3 * len(samples))
    assert dev_split(samples, 0.0, 8, seed=0) == (list(samples), [])
    with pytest.raises(InputError, match=r"--dev-fraction 0\.1: a dev split of at least .* leaves none"):
        dev_split(samples, 0.1, len(samples), seed=0)


# -- the stopping rule on a constructed dev curve ---------------------------------------------------------------------

class _Trainer:
    """What EarlyStop uses of the trainer: a real model whose weights change each step, the step, logs, checkpoints."""

    def __init__(self, tmp: Path):
        torch.manual_seed(0)
        self.model = self.student = nn.Linear(3, 2)
        self.step, self.device, self.ckdir, self._saved = 0, torch.device("cpu"), tmp / "checkpoints", -1
        self.rows: list[dict] = []
        self.weights: dict[int, torch.Tensor] = {}

    def _append(self, row):
        self.rows.append(row)

    def log(self, msg):
        pass

    def checkpoint(self):
        self._saved = self.step

    def advance(self):
        self.step += 1
        with torch.no_grad():
            self.model.weight.add_(1.0)
        self.weights[self.step] = self.model.weight.detach().clone()


@pytest.mark.parametrize("curve, patience, stop_at, best_at, min_steps", [
    ([50, 60, 55, 58, 57, 70], 3, 5, 2, 0),   # three evaluations below 60 after the best: stop at the 5th
    ([50, 60, 55, 61, 57, 59, 58, 70], 3, 7, 4, 0),  # an improvement resets the count
    ([50, 50, 50, 50], 2, 3, 1, 0),           # equal is not better
    ([10, 20, 30, 40], 1, None, 4, 0),        # always improving: runs to the cap
    ([25, 25, 25, 25, 40, 60, 55, 50, 45], 2, 8, 6, 10),  # a plateau before min_steps (step 10) does not stop it
    ([25, 25, 25, 25, 25, 25, 25], 2, 5, 1, 10),  # patience ran out on it: the first evaluation at step 10 stops
    ([50, 40, 40, 40], 3, None, 1, 0),        # patience runs out at the last evaluation, the cap: not early
    ([25, 25, 25, 25], 2, None, 1, 8),        # held to the cap by min_steps: it ran to the cap, not stopped early
])
def test_early_stop_stops_at_the_right_evaluation_and_restores_the_best(tmp_path, curve, patience, stop_at, best_at,
                                                                         min_steps):
    values = iter(curve)
    trainer = _Trainer(tmp_path)
    cfg = TrainConfig(steps=len(curve) * 2, patience=patience, dev_fraction=0.1, dev_every=2, min_steps=min_steps)
    early = EarlyStop(cfg, lambda model: ({"metric": "acc", "value": float(next(values))}, []), tmp_path / "best", 7)
    evals = 0
    while trainer.step < cfg.steps and not early.stopped:
        trainer.advance()
        if early.due(trainer.step):
            early.evaluate(trainer)
            evals += 1
            trainer.checkpoint()
            trainer.state = early.state()
    assert evals == (stop_at or len(curve))
    assert early.stopped == (stop_at is not None)
    assert early.best_step == best_at * 2 and early.best == max(curve[:evals])
    assert [v for _, v in early.curve] == curve[:evals]
    assert [r["split"] for r in trainer.rows] == ["dev"] * evals
    assert f"step_{best_at * 2:06d}.safetensors" in {p.name for p in (tmp_path / "best").iterdir()}
    early.restore_best(trainer)  # the best weights back in the model, the other files removed
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == [f"step_{best_at * 2:06d}.safetensors"]
    assert torch.equal(trainer.model.weight, trainer.weights[best_at * 2])
    summary = early.summary()
    assert summary["best_step"] == best_at * 2 and summary["dev_samples"] == 7 and len(summary["curve"]) == evals


# -- warmup -----------------------------------------------------------------------------------------------------------

def test_warmup_takes_a_fraction_of_the_steps_or_a_count(tmp_path):
    frac = TrainConfig(steps=100, warmup=0.1, lr=1e-3)
    assert warmup_steps(frac) == 10
    assert lr_at(frac, 0) == pytest.approx(1e-4) and lr_at(frac, 9) == pytest.approx(1e-3)
    count = TrainConfig(steps=100, warmup=10.0, lr=1e-3)
    assert count.warmup == 10 and type(count.warmup) is int  # 10.0 is the count 10: the same run key as 10
    assert [lr_at(count, s) for s in range(100)] == [lr_at(frac, s) for s in range(100)]
    old = TrainConfig(steps=50, warmup=5)  # today's formula, unchanged for a count
    assert [lr_at(old, s) for s in range(5)] == [old.lr * (s + 1) / 5 for s in range(5)]
    with pytest.raises(InputError, match=r"--warmup 2\.5: a count of steps is a whole number"):
        TrainConfig(warmup=2.5)
    assert load_config(_yaml(tmp_path, "warmup: 0.05"), []).values["train"]["warmup"] == 0.05
    assert load_config(_yaml(tmp_path, ""), ["train.warmup=0.1"]).values["train"]["warmup"] == 0.1
    with pytest.raises(InputError, match=r"exp\.yaml: train\.warmup 1\.5: a count of steps is a whole number"):
        load_config(_yaml(tmp_path, "warmup: 1.5"), [])
    with pytest.raises(InputError, match=r"--patience 3: early stopping needs a dev split"):
        TrainConfig(patience=3)


def _yaml(tmp_path: Path, train: str) -> Path:
    f = tmp_path / "exp.yaml"
    f.write_text("task: vqa\ndata: {root: .}\n" + (f"train:\n  {train}\n" if train else ""))
    return f


# -- real runs --------------------------------------------------------------------------------------------------------

BASE = ("--task", "vqa", "--vocab-min-count", "1", "--batch-size", "4", "--num-workers", "0", "--log-every", "1",
        "--json")


def test_head_lr_mult_scales_the_heads_learning_rate_only(world, tmp_path, monkeypatch):
    """``--head-lr-mult 0`` leaves the task head as it was created (two runs of 2 and 4 steps end with the same head
    and different backbones); the default trains it; a run at the default multiplier has the fingerprint it always
    had (no ``head_lr_mult`` in it)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def run(name: str, *extra: str) -> tuple[dict, dict]:
        _cli("distill", *BASE, "--data-root", str(world / "vqa"), "--no-distill", "--out", str(tmp_path / name),
             "--lr", "1e-3", *extra)
        w = load_file(str(tmp_path / name / "student" / "model.safetensors"))
        fp = json.loads((tmp_path / name / "run.json").read_text())["fingerprint"]["train"]
        return w, fp

    frozen2, fp0 = run("frozen2", "--steps", "2", "--head-lr-mult", "0")
    frozen4, _ = run("frozen4", "--steps", "4", "--head-lr-mult", "0")
    trained, fp1 = run("trained", "--steps", "2")
    heads = [k for k in frozen2 if k.startswith("classifier.")]
    backbone = [k for k in frozen2 if k.startswith("vilt.encoder.")]
    assert heads and backbone
    assert all(torch.equal(frozen2[k], frozen4[k]) for k in heads)
    assert not all(torch.equal(frozen2[k], frozen4[k]) for k in backbone)
    assert not all(torch.equal(frozen2[k], trained[k]) for k in heads)
    assert fp0["head_lr_mult"] == 0 and "head_lr_mult" not in fp1


def test_flat_dev_curve_stops_and_the_best_checkpoint_is_the_student(world, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = tmp_path / "run"
    # a learning rate too small to change a prediction: the dev curve is flat, so the first evaluation stays the
    # best and two more without improvement stop the run at step 6 of 40
    res = _cli("distill", *BASE, "--data-root", str(world / "vqa"), "--no-distill", "--out", str(run),
               "--steps", "40", "--lr", "1e-6", "--patience", "2", "--dev-fraction", "0.2", "--min-dev", "8",
               "--dev-every", "2")
    es = res["early_stop"]
    assert res["steps"] == 6 and es["stopped_early"] and es["best_step"] == 2 and es["patience"] == 2
    assert [s for s, _ in es["curve"]] == [2, 4, 6] and es["dev_samples"] >= 8
    assert res["train_samples"] + es["dev_samples"] == 80  # the 16-image world's training questions
    best = load_file(str(run / "checkpoints" / "best" / "step_000002.safetensors"))
    last = load_file(str(run / "checkpoints" / "step_000006" / "model.safetensors"))
    saved = load_file(str(run / "student" / "model.safetensors"))
    head = "student.head.3.weight"  # the answer classifier (classifier.3 in the saved transformers checkpoint)
    assert not torch.equal(best[head], last[head])  # training did move the weights
    assert torch.equal(saved["classifier.3.weight"], best[head])  # the student saved is the best checkpoint
    rows = _rows(run)
    assert [r["step"] for r in rows if r.get("split") == "dev"] == [2, 4, 6]
    assert (run / "training.png").stat().st_size > 0


def test_patience_zero_is_todays_fixed_budget(world):
    """The defaults carve no dev split and build no early stopping (with ``--warmup 0`` the run is today's:
    tests/test_pins.py pins its figures); only a dev split makes one. The default warmup is 5% of the steps."""
    from mad_pipeline.tasks import get_task

    cfg = TrainConfig()
    assert (cfg.patience, cfg.dev_fraction, cfg.warmup) == (0, 0.0, 0.05) and warmup_steps(cfg) == 10
    dcfg = stage.DistillConfig(task="vqa", data_root=world / "vqa", out=world / "unused", vocab_min_count=1)
    data = stage._load_data(dcfg, get_task("vqa", vocab_min_count=1))
    assert data.dev == [] and len(data.train) == 80
    with_dev = stage._load_data(stage.DistillConfig(task="vqa", data_root=world / "vqa", out=world / "unused",
                                                    vocab_min_count=1, train=TrainConfig(dev_fraction=0.2, min_dev=8)),
                                get_task("vqa", vocab_min_count=1))
    assert len(with_dev.dev) >= 16 and len(with_dev.train) + len(with_dev.dev) == 80


def _distill_cfg(world: Path, out: Path, cache: Path) -> stage.DistillConfig:
    train = TrainConfig(steps=12, batch_size=4, lr=3e-3, warmup=0.25, patience=2, dev_fraction=0.25, min_dev=8,
                        dev_every=2, checkpoint_every=2, log_every=1, num_workers=0)
    return stage.DistillConfig(task="vqa", data_root=world / "vqa", out=out, mad=MADConfig.baseline(), train=train,
                               vocab_min_count=1, cache=cache, progress=False)


def test_a_crashed_run_resumes_exactly_with_its_early_stop_state(world, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    def quiet(message: str) -> None:
        pass

    ref = stage.run(_distill_cfg(world, tmp_path / "ref", tmp_path / "cache"), log=quiet).metrics
    run = tmp_path / "crashed"
    monkeypatch.setenv("MAD_TEST_FAIL", "checkpoint@6")  # the disk fills while checkpointing step 6
    with pytest.raises(MadError, match="cannot write checkpoint"):
        stage.run(_distill_cfg(world, run, tmp_path / "cache"), log=quiet)
    monkeypatch.delenv("MAD_TEST_FAIL")
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000004"
    resumed = stage.run(_distill_cfg(world, run, tmp_path / "cache"), log=quiet).metrics
    assert resumed["resumed"] and not ref["resumed"]
    assert resumed["early_stop"] == ref["early_stop"] and resumed["steps"] == ref["steps"]
    assert resumed["eval"] == ref["eval"]
    assert _rows(run) == _rows(tmp_path / "ref")  # the same losses and dev evaluations
    again = stage.run(_distill_cfg(world, run, tmp_path / "cache"), log=quiet).metrics
    assert again["eval"] == ref["eval"] and _rows(run) == _rows(tmp_path / "ref")  # a finished run re-evaluates only
    for name in ("student/model.safetensors", f"checkpoints/step_{ref['steps']:06d}/model.safetensors"):
        a, b = load_file(str(tmp_path / "ref" / name)), load_file(str(run / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_checkpoints_along_the_way_change_nothing_and_a_finished_run_keeps_its_last(world, tmp_path, monkeypatch):
    """A study may checkpoint every N steps so a killed run resumes: the run must be the same as without them, and a
    finished run must keep one checkpoint, not two (a study of a hundred runs would carry the other on disk)."""
    import dataclasses

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    every = _distill_cfg(world, tmp_path / "every2", tmp_path / "cache")  # early stopping on, a checkpoint every 2
    at_end = dataclasses.replace(every, out=tmp_path / "at-end", train=dataclasses.replace(every.train,
                                                                                         checkpoint_every=0))
    a = stage.run(every, log=lambda _m: None).metrics
    b = stage.run(at_end, log=lambda _m: None).metrics
    assert (a["steps"], a["early_stop"], a["eval"]) == (b["steps"], b["early_stop"], b["eval"])
    assert _rows(tmp_path / "every2") == _rows(tmp_path / "at-end")
    wa = load_file(str(tmp_path / "every2" / "student" / "model.safetensors"))
    wb = load_file(str(tmp_path / "at-end" / "student" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    for run in ("every2", "at-end"):
        kept = sorted(p.name for p in (tmp_path / run / "checkpoints").glob("step_*"))
        assert kept == [f"step_{a['steps']:06d}"], (run, kept)


# -- the confidence record --------------------------------------------------------------------------------------------

def test_confidence_distribution_is_logged_and_counted(tmp_path):
    from test_losses import ALL_ON, make_batch, run

    from mad_pipeline.losses.terms import confidence_weights
    from mad_pipeline.training.confidence import write_confidence

    loss, _, out, _ = run(ALL_ON)
    raw = confidence_weights("prob", make_batch()[1].zs_logits, torch.tensor([0, 2]), normalise=False)
    w = raw / raw.mean()
    assert out["conf_min"].item() == pytest.approx(raw.min().item())
    assert out["conf_max"].item() == pytest.approx(raw.max().item())
    assert out["conf_q50"].item() == pytest.approx(raw.mean().item())  # the median of two
    assert out["w_min"].item() == pytest.approx(w.min().item()) and out["w_max"].item() == pytest.approx(w.max().item())
    assert loss.conf_hist[0].sum().item() == 2 and loss.conf_moments[0, 0].item() == 2  # counted while training
    assert "conf_q50" not in run(ALL_ON.replace(confidence="none"))[2]
    record = write_confidence(loss, tmp_path)
    assert record["raw"]["n"] == 2 and record["raw"]["mean"] == pytest.approx(raw.mean().item(), abs=1e-4)
    assert record["weights"]["mean"] == pytest.approx(1.0, abs=1e-4)
    bins = (raw * 20).floor().long().tolist()
    assert [i for i, c in enumerate(record["raw"]["counts"]) for _ in range(c)] == sorted(bins)
    assert (tmp_path / "confidence.png").read_bytes()[:4] == b"\x89PNG"
    loss.eval()
    loss(*_again(make_batch, ALL_ON))  # evaluation does not count
    assert loss.conf_moments[0, 0].item() == 2


def _again(make_batch, cfg):
    from mad_pipeline.losses import build_targets

    student, teacher = make_batch()
    return student, build_targets(cfg, teacher, student), torch.tensor(1.5), torch.tensor([0, 2])


def test_dev_metric_selects_on_another_metric_the_task_reports(world, tmp_path, monkeypatch):
    """``--dev-metric q2ar`` on VCR: the dev evaluations answer QA->R too (they do not by default), the curve and the
    best step follow Q->AR, and the record names it. A metric the task does not report is one error line, before any
    work, on the command line and in a ``mad run`` config; the default keeps every earlier run's key."""
    from mad_pipeline.settings import keyed

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    common = ("--task", "vcr", "--data-root", str(world / "vcr"), "--no-distill", "--batch-size", "4",
              "--num-workers", "0", "--log-every", "1", "--json", "--steps", "6", "--lr", "3e-3", "--patience", "5",
              "--dev-fraction", "0.25", "--min-dev", "4", "--dev-every", "2")
    runs = {}
    for name, extra in (("default", ()), ("q2ar", ("--dev-metric", "q2ar"))):
        res = _cli("distill", *common, "--out", str(tmp_path / name), *extra)
        dev = [r for r in _rows(tmp_path / name) if r.get("split") == "dev"]
        runs[name] = (res["early_stop"], dev)
    es, dev = runs["q2ar"]
    assert es["metric"] == "q2ar" and [s for s, _ in es["curve"]] == [2, 4, 6]
    assert [v for _, v in es["curve"]] == [r["eval"]["q2ar"] for r in dev]
    assert es["best"] == max(r["eval"]["q2ar"] for r in dev)
    assert all({"q2a", "qa2r", "q2ar"} <= set(r["eval"]) for r in dev)
    es0, dev0 = runs["default"]
    assert es0["metric"] == "q2a" and all("qa2r" not in r["eval"] for r in dev0)  # only Q->A by default
    assert es0["curve"] == [[s, r["eval"]["q2a"]] for (s, _), r in zip(es0["curve"], dev0, strict=True)]

    from mad_pipeline.cli.main import _register, app

    _register()
    bad = CliRunner().invoke(app, ["distill", *common, "--out", str(tmp_path / "bad"), "--dev-metric", "qa"])
    assert isinstance(bad.exception, InputError) and not (tmp_path / "bad").exists()  # `mad`: one line, exit 2
    assert str(bad.exception) == "--dev-metric 'qa': vcr selects on one of q2a, qa2r, q2ar"
    cfg = tmp_path / "run.yaml"
    cfg.write_text("task: [vqa, vcr]\ndata: {shapes: {size: 8}}\nmethods: [baseline]\nfractions: [1.0]\n"
                   "train: {dev_metric: q2ar}\nper_task: {vqa: {train: {dev_metric: ''}}}\n")
    load_config(cfg)  # VCR selects on Q->AR, VQA on its headline
    cfg.write_text("task: [vqa, vcr]\ndata: {shapes: {size: 8}}\nmethods: [baseline]\nfractions: [1.0]\n"
                   "train: {dev_metric: q2ar}\n")
    with pytest.raises(InputError, match=r"train\.dev_metric: 'q2ar': vqa selects on one of overall"):
        load_config(cfg)
    assert "dev_metric" not in keyed(TrainConfig, TrainConfig().__dict__)
    assert keyed(TrainConfig, TrainConfig(dev_metric="q2ar").__dict__)["dev_metric"] == "q2ar"
