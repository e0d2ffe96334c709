"""Stage 2 end to end on a small shapes world with the tiny-clip test teacher and the vilt-tiny student:
`mad distill` writes metrics, curves, a plot, a saved student and official predictions (read back by `mad score`
and reproduced by `mad eval`); store-fed and online-teacher modes give the same distillation loss on the same batch;
every off switch removes its term, and the baseline touches no teacher at all."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import last_json, mad
from mad_pipeline.stages import extract as extract_stage
from mad_pipeline.stages import score as score_stage
from mad_pipeline.stages.distill import DistillConfig
from mad_pipeline.stages.distill import run as distill_run

from mad_pipeline.data import load_dataset
from mad_pipeline.errors import InputError
from mad_pipeline.losses import MADConfig, MADLoss, TargetBuilder, build_targets
from mad_pipeline.students import build_student, load_student
from mad_pipeline.tasks import get_task
from mad_pipeline.training.collate import Collate, StudentTokenizer
from mad_pipeline.training.config import TrainConfig
from mad_pipeline.training.dataset import DistillDataset, OnlineTeacherInput, StorePaths
from mad_pipeline.training.online import OnlineTeacher
from mad_pipeline.training.trainer import student_batch

build_mad_config = MADConfig.from_switches


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mad_pipeline.shapes.formats import write_dataset

    out = tmp_path_factory.mktemp("shapes-distill")
    write_dataset(out, size=16, seed=0)
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("distill-cache")


def test_mad_distill_cli_end_to_end(tiny_clip, world, cache, tmp_path):
    cfg_file, weights = tiny_clip
    env = {"MAD_MODEL_CONFIGS": str(cfg_file), "MAD_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    res = last_json(mad("distill", "--task", "vqa", "--data-root", str(world / "vqa"), "--teacher", "tiny-clip",
                        "--weights", str(weights), "--out", str(run), "--steps", "4", "--batch-size", "8",
                        "--eval-every", "2", "--log-every", "2", "--vocab-min-count", "1", "--num-workers", "1",
                        "--test-split", "test", "--json", env=env))
    assert res["objective"] == "full" and res["steps"] == 4 and res["train_samples"] == 80
    assert res["metric"] == "vqa_accuracy" and 0 <= res["value"] <= 100
    assert res["teacher_zeroshot"]["metric"] == "vqa_accuracy"  # the teacher on the same official scale
    assert set(res["eval"]) == {"val", "test"}
    assert set(res["stores"]["train"]) == {"image", "text", "index", "zeroshot"}

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["value"] == res["value"]
    assert metrics["references"]["teacher zero-shot"] == res["teacher_zeroshot"]["value"]  # a line of the plots
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "eval" not in r]
    assert [r["step"] for r in train_rows] == [2, 4]
    assert all(r["distill"] > 0 and r["total"] > r["task"] for r in train_rows)
    assert [r["step"] for r in rows if "eval" in r] == [2, 4]
    assert (run / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    student = load_student(run / "student")
    assert student.task == "vqa" and student.num_classes == len(json.loads((run / "vocab.json").read_text())["answers"])

    # official results format, read back by `mad score` with the same accuracy
    preds = json.loads((run / "predictions" / "val.json").read_text())
    assert preds and set(preds[0]) == {"question_id", "answer"} and isinstance(preds[0]["question_id"], int)
    scored = score_stage.run(score_stage.ScoreConfig(
        task="vqa", predictions=run / "predictions" / "val.json",
        questions=world / "vqa" / "v2_OpenEnded_mscoco_val2014_questions.json",
        annotations=world / "vqa" / "v2_mscoco_val2014_annotations.json"))
    assert scored["overall"] == pytest.approx(res["value"])
    assert (run / "predictions" / "test.json").exists()

    # `mad eval` reloads the saved student and reproduces the predictions
    ev = _cli("eval", "--run", str(run), "--split", "val", "--out", str(tmp_path / "p.json"), "--json")
    assert ev["value"] == pytest.approx(res["value"])
    assert json.loads((tmp_path / "p.json").read_text()) == preds

    # the same settings again: the finished run is resumed from its last checkpoint, not retrained
    cfg = DistillConfig(task="vqa", data_root=world / "vqa", out=run, teacher="tiny-clip", weights=str(weights),
                        vocab_min_count=1, cache=cache, progress=False, test_splits=("test",),
                        train=TrainConfig(steps=4, batch_size=8, eval_every=2, log_every=2, num_workers=0))
    again = distill_run(cfg, log=lambda m: None)
    assert again.metrics["resumed"] and again.metrics["value"] == res["value"]
    # other settings in the same run directory are refused (one line, before any work)
    with pytest.raises(InputError, match=r"other settings \(train.steps: 4 there, 5 now\)"):
        distill_run(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=5)), log=lambda m: None)


def _cli(*args: str) -> dict:
    """Run a command of the real Typer app in this process (no interpreter start-up); its last JSON line."""
    from mad_pipeline.cli.main import _register, app
    from typer.testing import CliRunner

    _register()
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


def _extracted(task: str, tiny_clip, world, cache):
    """The task's training split extracted with tiny-clip: (dataset, stores, the fitted task, a vilt-tiny)."""
    _, weights = tiny_clip
    root = world / task
    ex = extract_stage.run(extract_stage.ExtractConfig(
        teacher="tiny-clip", weights=str(weights), data_root=root, dataset=task, split="train", task=task,
        cache=cache, num_workers=0, vocab_min_count=1, progress=False), log=lambda m: None)
    stores = StorePaths(**{k: ex.stores[k].path for k in ("image", "text", "index", "zeroshot")})
    ds = load_dataset(task, root, split="train")
    t = get_task(task, vocab_min_count=1)
    t.fit(ds.samples)
    t.fit_confidence(stores.zeroshot, ds.samples)
    torch.manual_seed(0)
    student = build_student("vilt-tiny", task, t.num_classes)
    return ds, stores, t, student


def _spread(n_items: int, n: int) -> list[int]:
    return list(range(0, n_items, max(1, n_items // n)))[:n]


def _batch_pair(task: str, tiny_clip, world, cache, n: int = 6):
    """The same samples read store-fed and online: the student, the teacher, the store widths, the store-fed batch
    with its raw store features, and the online batch."""
    from mad_pipeline.teachers import load_teacher

    ds, stores, t, student = _extracted(task, tiny_clip, world, cache)
    teacher = load_teacher("tiny-clip", str(tiny_clip[1]), "cpu", "auto")
    fed = DistillDataset(ds.samples, ds.root, t, student.image_preprocess, stores)
    onl = DistillDataset(ds.samples, ds.root, t, student.image_preprocess, stores,
                         OnlineTeacherInput(teacher.preprocess, teacher.crop_box_fn))
    idx = _spread(len(fed), n)
    collate = Collate(t, StudentTokenizer(student), None, student.grid, fed.grid)
    items = fed.__getitems__(idx)
    b_fed, raw = collate(items), collate.teacher_batch(items)
    b_onl = collate(onl.__getitems__(idx))
    assert b_onl.online.texts == [fed.teacher_texts[i] for i in idx]
    return student, teacher, stores.widths(), b_fed, raw, b_onl


def _planned(task, tiny_clip, world, cache, cfg, n: int = 6):
    """The samples of :func:`_batch_pair`, with the targets made by the data pipeline (TargetBuilder in Collate)."""
    ds, stores, t, student = _extracted(task, tiny_clip, world, cache)
    builder = TargetBuilder(cfg, cache_mb=256)
    data = DistillDataset(ds.samples, ds.root, t, student.image_preprocess, stores, has_image_targets=builder.cached)
    collate = Collate(t, StudentTokenizer(student), builder, student.grid, data.grid)
    return data, collate, _spread(len(data), n)


@pytest.mark.parametrize("task", ["vqa", "snli-ve", "vcr"])
def test_store_fed_equals_online_teacher(task, tiny_clip, world, cache):
    student, teacher, w, b_fed, t_fed, b_onl = _batch_pair(task, tiny_clip, world, cache)
    t_onl = OnlineTeacher(teacher, teacher)(b_onl)
    # the features themselves: stored fp16 vs computed fp32
    for name in ("image_tokens", "image_pooled", "text_tokens", "text_pooled"):
        a, b = getattr(t_fed, name).float(), getattr(t_onl, name).float()
        assert a.shape == b.shape, name
        assert torch.allclose(a, b, rtol=1e-2, atol=1e-2), name
    for name in ("crop_box", "text_spans", "text_length"):
        assert torch.equal(getattr(t_fed, name).to(getattr(t_onl, name).dtype), getattr(t_onl, name)), name
    cfg = MADConfig.full(select_v="teacher-saliency", select_t="teacher-saliency", alpha_schedule="constant",
                         alpha0=1.0, logit_kd=True)  # with selection: the planned batch carries only the top half
    torch.manual_seed(1)
    objective = MADLoss(cfg, student.hidden_size, w["image"], w["text"], w["image_pooled"], w["text_pooled"])
    with torch.no_grad():
        out = student(*b_fed.student_args())
        sb = student_batch(out, b_fed)
        task_l = torch.tensor(1.0)
        l_fed = objective(sb, build_targets(cfg, t_fed, sb), task_l, target=b_fed.target)
        l_onl = objective(sb, build_targets(cfg, t_onl, sb), task_l, target=b_onl.target)
    for k in ("tok_v", "tok_t", "pool", "kd", "distill", "total", "conf_mean"):
        assert l_fed[k].item() == pytest.approx(l_onl[k].item(), rel=2e-3, abs=2e-4), k
    assert l_fed["tok_v"] > 0 and l_fed["pool"] > 0 and l_fed["kd"] > 0
    assert l_fed["tok_t"] > 0  # CLIP BPE and WordPiece spans align on these texts
    # what training uses: alignment and selection done by the data pipeline, only K tokens per sample carried
    data, collate, idx = _planned(task, tiny_clip, world, cache, cfg)
    b_plan = collate(data.__getitems__(idx))
    assert b_plan.targets.image.tokens.shape[1] == 32  # top half of the 8 x 8 student grid
    assert torch.equal(b_plan.pixel_values, b_fed.pixel_values) and torch.equal(b_plan.target, b_fed.target)
    with torch.no_grad():
        l_plan = objective(sb, b_plan.targets, task_l, target=b_plan.target)
    for k in ("tok_v", "tok_t", "pool", "kd", "distill", "total", "conf_mean"):
        assert l_plan[k].item() == pytest.approx(l_onl[k].item(), rel=2e-3, abs=2e-4), k


def test_vcr_trains_both_questions(tiny_clip, world, cache):
    """A VCR training epoch visits each sample as Q->A and as QA->R: the QA->R item reads the rationale texts given
    the right answer, is trained on the rationale, distils the teacher's rationale scores and the same teacher text
    (a prefix of its choice), so its text targets are those of its Q->A item."""
    from mad_pipeline.store.reader import open_store
    from mad_pipeline.store.zeroshot import candidate_labels
    from mad_pipeline.tasks.vcr import q2a_candidates, qa2r_candidates

    ds, stores, t, student = _extracted("vcr", tiny_clip, world, cache)
    n = len(ds.samples)
    cfg = MADConfig.full()
    builder = TargetBuilder(cfg, cache_mb=256)
    data = DistillDataset(t.training_samples(ds.samples), ds.root, t, student.image_preprocess, stores)
    assert len(data) == 2 * n and len({s.id for s in data.samples}) == n
    idx = [0, n, 3, n + 3]  # two samples, each as Q->A and as QA->R
    items = data.__getitems__(idx)
    zs = open_store(stores.zeroshot)
    labels = candidate_labels(zs)
    zs_row = {sid: i for i, sid in enumerate(np.asarray(zs["sample_id"][:], dtype=object).astype(str).tolist())}
    for j in (0, 2):
        s = ds.samples[idx[j]]
        a, r = items[j], items[j + 1]
        assert a.texts == q2a_candidates(s) and a.target == s.meta["answer_label"] == a.choice
        assert r.texts == qa2r_candidates(s) and r.target == s.meta["rationale_label"] == r.choice
        row = np.asarray(zs["logits"][zs_row[s.id]], np.float32)
        lab = labels if isinstance(labels, tuple) else np.asarray(zs["candidate_label"][zs_row[s.id]])
        cols = {p: [k for k, x in enumerate(lab) if str(x).startswith(p)] for p in "ar"}
        assert np.array_equal(a.teacher["zs_logits"], row[cols["a"]]) and a.teacher["zs_mask"]
        assert np.array_equal(r.teacher["zs_logits"], row[cols["r"]]) and r.teacher["zs_mask"]
        assert not np.array_equal(a.teacher["zs_logits"], r.teacher["zs_logits"])
    collate = Collate(t, StudentTokenizer(student), builder, student.grid, data.grid)
    batch = collate(items)
    text = batch.targets.text
    assert text.mask[0].any()
    for j in (0, 2):  # the same teacher tokens at the same student positions (the shared prefix)
        assert torch.equal(text.mask[j], text.mask[j + 1]) and torch.equal(text.index[j], text.index[j + 1])
        assert torch.equal(text.tokens[j], text.tokens[j + 1])
    assert torch.equal(batch.target, torch.tensor([it.target for it in items]))


def test_precomputed_targets_do_not_depend_on_the_batch_or_the_cache(tiny_clip, world, cache):
    """A row's image targets are the same bit for bit whether computed alone, with other rows, or from the cache
    (so a resumed run, whose cache starts empty, sees the same values)."""
    cfg = MADConfig.full()
    data, collate, idx = _planned("vqa", tiny_clip, world, cache, cfg, n=8)
    builder = collate.targets
    together = collate(data.__getitems__(idx)).targets.image.rows()
    assert len(builder._cache) == len({int(r) for r in data.image_rows()[idx]})
    cached_items = data.__getitems__(idx[::-1])
    assert all(it.teacher["image_tokens"] is None for it in cached_items)  # cached rows: no token read
    again = collate(cached_items).targets.image.rows()  # every row from the cache
    fresh, fresh_collate, _ = _planned("vqa", tiny_clip, world, cache, cfg, n=8)
    alone = [fresh_collate(fresh.__getitems__([i])).targets.image for i in idx]
    for a, b, c in zip(together, again[::-1], alone, strict=True):
        for name in ("index", "tokens", "mask"):
            x = getattr(a, name)
            assert torch.equal(x, getattr(b, name)) and torch.equal(x, getattr(c, name))
    # the cache is bounded: a budget of one row keeps only the current batch's rows
    builder.cache_mb = 1e-6
    builder._cache.clear()
    builder._cache_bytes = 0
    collate(data.__getitems__(idx[:2]))
    collate(data.__getitems__(idx[2:3]))
    assert len(builder._cache) == 1
    # random / student-gap selection needs the step (its generator, the student's tokens): the data pipeline hands
    # every aligned position over as a candidate
    step_side = TargetBuilder(cfg.replace(select_v="random", select_t="student-gap"))
    targets = Collate(collate.task, collate.tokenize, step_side, collate.student_grid,
                      collate.teacher_grid)(data.__getitems__(idx)).targets
    assert not targets.image.selected and not targets.text.selected
    assert targets.image.tokens.shape[1] == 64  # every cell of the 8 x 8 student grid


def test_every_off_switch_removes_its_term(tiny_clip, world, cache):
    student, _, w, batch, raw, _ = _batch_pair("vqa", tiny_clip, world, cache)
    with torch.no_grad():
        out = student(*batch.student_args())
    sb = student_batch(out, batch)
    task_l = torch.tensor(2.5)

    def losses(cfg):
        torch.manual_seed(1)
        obj = MADLoss(cfg, student.hidden_size, w["image"], w["text"], w["image_pooled"], w["text_pooled"])
        with torch.no_grad():
            return obj(sb, build_targets(cfg, raw, sb), task_l, target=batch.target)

    on = losses(MADConfig.full(logit_kd=True, alpha_schedule="constant", alpha0=1.0))
    assert all(on[k] > 0 for k in ("tok_v", "tok_t", "pool", "kd"))
    assert on["conf_mean"] != 1.0
    base = losses(build_mad_config("baseline"))
    assert base["total"] is task_l and base["distill"] == 0
    for switch, term in (("image_tokens", "tok_v"), ("text_tokens", "tok_t"), ("pooled", "pool"),
                         ("logit_kd", "kd")):
        off = losses(build_mad_config("full", alpha_schedule="constant", alpha=1.0,
                                      **{"logit_kd": True, switch: False}))
        assert off[term] == 0, switch
        assert off["distill"] < on["distill"], switch
    assert losses(build_mad_config("full", confidence="none"))["conf_mean"] == 1.0
    naive = build_mad_config("naive")
    assert (naive.select_v, naive.confidence, naive.alpha_schedule) == ("all", "none", "constant")
    custom = build_mad_config("full", select="random", top_k="8", confidence="none", alpha_schedule="cosine",
                              alpha=5.0, image_tokens=False, text_tokens=False, pooled=False, logit_kd=True)
    assert (custom.select_v, custom.select_t, custom.k_v, custom.k_t) == ("random", "random", 8, 8)
    assert (custom.confidence, custom.alpha_schedule, custom.alpha0) == ("none", "cosine", 5.0)
    assert not (custom.tokens_v or custom.tokens_t or custom.use_pooled) and custom.logit_kd
    assert build_mad_config("full", top_k="0.25").k_v == 0.25


def test_baseline_needs_no_teacher_and_has_no_distill_term(world, tmp_path):
    res = distill_run(DistillConfig(task="snli-ve", data_root=world / "snli-ve", out=tmp_path / "base", teacher=None,
                                    mad=build_mad_config("baseline"), cache=tmp_path / "empty-cache", progress=False,
                                    train=TrainConfig(steps=2, batch_size=8, log_every=1)), log=lambda m: None)
    assert res.metrics["objective"] == "baseline" and res.metrics["teacher_zeroshot"] is None
    assert res.metrics["stores"] == {} and not (tmp_path / "empty-cache").exists()  # nothing extracted
    rows = [json.loads(ln) for ln in (tmp_path / "base" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "eval" not in r]
    assert len(train) == 2 and all(r["distill"] == 0 and r["total"] == r["task"] for r in train)
    preds = json.loads(Path(res.predictions["dev"]).read_text())
    assert {p["label"] for p in preds} <= {"entailment", "neutral", "contradiction"}
    assert np.isfinite(res.metrics["value"])


def test_online_teacher_run_matches_store_fed_run(tiny_clip, world, cache, tmp_path):
    """The whole loop with the teacher run online: same student init, same batches, same losses (fp16 tolerance)."""
    _, weights = tiny_clip
    rows = {}
    for online in (False, True):
        cfg = DistillConfig(task="vcr", data_root=world / "vcr", out=tmp_path / f"online-{online}",
                            teacher="tiny-clip", weights=str(weights), cache=cache, progress=False,
                            online_teacher=online, mad=build_mad_config("full", logit_kd=True),
                            train=TrainConfig(steps=2, batch_size=2, log_every=1))
        res = distill_run(cfg, log=lambda m: None)
        assert res.metrics["online_teacher"] is online
        lines = (tmp_path / f"online-{online}" / "metrics.jsonl").read_text().splitlines()
        rows[online] = [json.loads(ln) for ln in lines if '"eval"' not in ln]
    for a, b in zip(rows[False], rows[True], strict=True):
        for k in ("task", "tok_v", "tok_t", "pool", "kd", "distill", "total"):
            assert a[k] == pytest.approx(b[k], rel=5e-3, abs=1e-4), (a["step"], k)


def test_batches_of_similar_length_train_vcr_with_less_padding(world, tmp_path, monkeypatch):
    """--group-by-length: VCR's short Q->A items and long QA->R items in batches of their own (a real run: the
    widths the student's texts are padded to, batch by batch), every item once an epoch, and a run key of its own."""
    from mad_pipeline.training import collate as collate_module

    widths: list[int] = []
    call = collate_module.Collate.__call__

    def record(self, items):
        batch = call(self, items)
        widths.append(batch.text.input_ids.shape[-1])
        return batch

    monkeypatch.setattr(collate_module.Collate, "__call__", record)
    runs = {}
    for group in (0, 4):
        widths.clear()
        res = distill_run(DistillConfig(task="vcr", data_root=world / "vcr", out=tmp_path / f"group-{group}",
                                        teacher=None, mad=build_mad_config("baseline"), cache=tmp_path / "cache",
                                        progress=False, train=TrainConfig(steps=4, batch_size=8, log_every=1,
                                                                          group_by_length=group)),
                          log=lambda m: None)
        runs[group] = (res.metrics["train_samples"], list(widths[:4]))
    (n, plain), (n2, grouped) = runs[0], runs[4]
    assert n == n2 == 16  # 16 questions: 32 items (Q->A and QA->R), one epoch in 4 steps of 8
    assert np.mean(grouped) < np.mean(plain) and min(grouped) < min(plain), (plain, grouped)
    train = {g: json.loads((tmp_path / f"group-{g}" / "run.json").read_text())["fingerprint"]["train"] for g in runs}
    assert train[4]["group_by_length"] == 4 and "group_by_length" not in train[0]  # off: the keys stay as they were


def test_sub_batches_of_similar_length_train_vcr_like_one_batch(tiny_clip, world, tmp_path, monkeypatch):
    """--length-buckets: each VCR batch through the student as a short (Q->A) and a long (QA->R) sub-batch, in a
    real store-fed MAD run: the student sees two widths per step, the step's losses are one forward's (the first
    step's to rounding, the next within a small drift), and the run has a key of its own."""
    from mad_pipeline.students.vilt import ViltStudent

    _, weights = tiny_clip
    widths: list[int] = []
    forward = ViltStudent.forward

    def record(self, pixels, boxes, ids, *rest):
        if self.training:
            widths.append(ids.shape[-1])
        return forward(self, pixels, boxes, ids, *rest)

    monkeypatch.setattr(ViltStudent, "forward", record)
    rows, calls = {}, {}
    for groups in (1, 2):
        widths.clear()
        out = tmp_path / f"buckets-{groups}"
        distill_run(DistillConfig(task="vcr", data_root=world / "vcr", out=out, teacher="tiny-clip",
                                  weights=str(weights), cache=tmp_path / "cache", progress=False,
                                  student="vilt-mini-l3", mad=build_mad_config("full"),
                                  train=TrainConfig(steps=2, batch_size=8, log_every=1, length_buckets=groups)),
                    log=lambda m: None)
        calls[groups] = list(widths)
        rows[groups] = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' not in ln]
    assert len(calls[1]) == 2 and len(calls[2]) == 4, calls  # one call a step, then two
    assert max(calls[2][:2]) == calls[1][0] and min(calls[2][:2]) < calls[1][0], calls
    for k in ("task", "tok_v", "tok_t", "pool", "distill", "total"):
        assert rows[2][0][k] == pytest.approx(rows[1][0][k], rel=1e-4, abs=1e-6), k
        assert rows[2][1][k] == pytest.approx(rows[1][1][k], rel=1e-2, abs=1e-4), k
    train = {g: json.loads((tmp_path / f"buckets-{g}" / "run.json").read_text())["fingerprint"]["train"] for g in rows}
    assert train[2]["length_buckets"] == 2 and "length_buckets" not in train[1]
