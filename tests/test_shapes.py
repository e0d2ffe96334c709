"""The shapes world (generator, official formats, answer balance) and the shipped shapes-clip teacher."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mad_pipeline.errors import InputError
from mad_pipeline.shapes import items, world
from mad_pipeline.shapes.formats import split_sizes, write_dataset

ASSET = Path(__file__).resolve().parent.parent / "mad_pipeline" / "assets" / "teachers" / "shapes-clip"


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        write_dataset(root / name, size=12, seed=seed)
    return root


def _files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# ------------------------------------------------------------------------------------------------ determinism


def test_same_seed_same_bytes_other_seed_differs(worlds):
    a, b, c = _files(worlds / "a"), _files(worlds / "b"), _files(worlds / "c")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert a.keys() == c.keys()  # same layout and ids ...
    jpgs = [k for k in a if k.startswith("vqa/") and k.endswith(".jpg")]
    assert sum(a[k] != c[k] for k in jpgs) > len(jpgs) // 2  # ... other pictures
    q = "vqa/v2_OpenEnded_mscoco_train2014_questions.json"
    assert a[q] != c[q]


def test_scenes_do_not_depend_on_size():
    assert world.make_scene(5, "train", 3) == world.make_scene(5, "train", 3)
    assert world.make_scene(5, "train", 3) != world.make_scene(6, "train", 3)


def test_refuses_foreign_directory(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not an earlier shapes world"):
        write_dataset(tmp_path / "x", size=2, seed=0)
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------------------ official formats


def test_vqa_files(worlds):
    root = worlds / "a" / "vqa"
    for split, sub in (("train", "train2014"), ("val", "val2014"), ("test", "test2015"), ("shift", "shift2014")):
        q = json.loads((root / f"v2_OpenEnded_mscoco_{sub}_questions.json").read_text())
        a = json.loads((root / f"v2_mscoco_{sub}_annotations.json").read_text())
        assert set(q) == {"info", "task_type", "data_type", "data_subtype", "license", "questions"}
        assert (q["task_type"], q["data_type"], q["data_subtype"]) == ("Open-Ended", "mscoco", sub)
        assert set(a) == {"info", "license", "data_subtype", "data_type", "annotations"}
        assert len(q["questions"]) == len(a["annotations"]) >= split_sizes(12)[split]
        for rec in q["questions"]:
            assert set(rec) == {"image_id", "question", "question_id"}
            assert isinstance(rec["image_id"], int) and isinstance(rec["question_id"], int)
            img = root / sub / f"COCO_{sub}_{rec['image_id']:012d}.jpg"
            assert img.is_file()
        qids = {r["question_id"] for r in q["questions"]}
        assert len(qids) == len(q["questions"])
        for ann in a["annotations"]:
            assert set(ann) == {"question_id", "image_id", "question_type", "answer_type",
                                "multiple_choice_answer", "answers"}
            assert ann["question_id"] in qids
            assert ann["answer_type"] in ("yes/no", "number", "other")
            assert [x["answer_id"] for x in ann["answers"]] == list(range(1, 11))
            assert all(set(x) == {"answer", "answer_confidence", "answer_id"} for x in ann["answers"])
            assert all(x["answer_confidence"] in ("yes", "maybe", "no") for x in ann["answers"])
            assert Counter(x["answer"] for x in ann["answers"]).most_common(1)[0][0] == ann["multiple_choice_answer"]


def test_images_are_real_jpegs_shared_by_all_tasks(worlds):
    root = worlds / "a"
    scenes = [json.loads(line) for line in (root / "scenes" / "val.jsonl").read_text().splitlines()]
    for s in scenes:
        iid = s["image_id"]
        paths = [root / "vqa" / "val2014" / f"COCO_val2014_{iid:012d}.jpg",
                 root / "snli-ve" / "flickr30k_images" / f"{iid}.jpg",
                 root / "vcr" / "vcr1images" / "shapes_val" / f"{iid}.jpg"]
        data = [p.read_bytes() for p in paths]
        assert len({_sha(d) for d in data}) == 1  # the same bytes: one image-store row for all three tasks
        assert data[0][:2] == b"\xff\xd8"
        with Image.open(io.BytesIO(data[0])) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (64, 64)


def test_snli_ve_files(worlds):
    root = worlds / "a" / "snli-ve"
    for split in ("train", "dev", "test", "shift"):
        lines = (root / f"snli_ve_{split}.jsonl").read_text().splitlines()
        assert lines
        for line in lines:
            rec = json.loads(line)
            assert list(rec) == sorted(rec)  # keys sorted, as the official generator writes them
            assert {"Flickr30K_ID", "sentence1", "sentence2", "gold_label", "pairID", "captionID",
                    "annotator_labels"} <= set(rec)
            assert rec["gold_label"] in ("entailment", "neutral", "contradiction")
            assert isinstance(rec["Flickr30K_ID"], str) and rec["pairID"].startswith(rec["Flickr30K_ID"] + ".jpg#")
            assert rec["captionID"] == rec["Flickr30K_ID"] + ".jpg#0"
            assert (root / "flickr30k_images" / f"{rec['Flickr30K_ID']}.jpg").is_file()


def _check_tokens(tokens, n_objects):
    assert isinstance(tokens, list) and tokens
    for t in tokens:
        if isinstance(t, list):
            assert t and all(isinstance(i, int) and 0 <= i < n_objects for i in t)
        else:
            assert isinstance(t, str) and t


def test_vcr_files(worlds):
    root = worlds / "a" / "vcr"
    for split in ("train", "val", "test", "shift"):
        for line in (root / f"{split}.jsonl").read_text().splitlines():
            rec = json.loads(line)
            for f in ("annot_id", "question", "answer_choices", "rationale_choices", "answer_label",
                      "rationale_label", "objects", "img_fn", "metadata_fn", "movie", "img_id", "question_orig",
                      "answer_orig", "rationale_orig"):
                assert f in rec, f
            n = len(rec["objects"])
            assert all(o in world.SHAPES for o in rec["objects"])
            _check_tokens(rec["question"], n)
            for key in ("answer_choices", "rationale_choices"):
                assert len(rec[key]) == 4 and len({json.dumps(c) for c in rec[key]}) == 4
                for c in rec[key]:
                    _check_tokens(c, n)
            assert rec["answer_label"] in range(4) and rec["rationale_label"] in range(4)
            assert (root / "vcr1images" / rec["img_fn"]).is_file()
            meta = json.loads((root / "vcr1images" / rec["metadata_fn"]).read_text())
            assert {"boxes", "segms", "width", "height", "names"} <= set(meta)
            assert len(meta["boxes"]) == n and all(len(b) == 5 for b in meta["boxes"])
            assert all(0 <= b[0] < b[2] <= 64 and 0 <= b[1] < b[3] <= 64 for b in meta["boxes"])


def test_readers_parse_the_world(worlds):
    """The official-format readers accept what the generator writes (train/val/test splits)."""
    from mad_pipeline.data.snli_ve import read_snli_ve
    from mad_pipeline.data.vcr import read_vcr
    from mad_pipeline.data.vqa import read_vqa

    root = worlds / "a"
    vqa = read_vqa(root / "vqa", "val")
    snli = read_snli_ve(root / "snli-ve", "dev")
    vcr = read_vcr(root / "vcr", "val")
    assert len(vqa.samples) and len(snli.samples) and len(vcr.samples)
    for ds in (vqa, snli, vcr):
        for rel in ds.image_paths():
            assert (ds.root / rel).is_file()


# ------------------------------------------------------------------------------------------------ the world's rules


def test_shift_split_holds_the_held_out_pairs():
    held = set(world.HELD_OUT_PAIRS)
    for split in ("train", "val", "test"):
        for i in range(200):
            assert not world.make_scene(0, split, i).pairs() & held
    for i in range(50):
        assert world.make_scene(0, "shift", i).pairs() & held


def _generate(split, n, seed=0):
    vb, sb = items.Balancer(), items.Balancer()
    qs, hs = [], []
    for i in range(n):
        scene = world.make_scene(seed, split, i)
        rng = world.scene_rng(seed, split, i, 1)
        qs += items.ask_vqa(scene, vb, rng)
        hs += items.ask_snli(scene, sb, rng)
    return qs, hs


def _text_only_vs_prior(train, test, key, label):
    """Accuracy on ``test`` of (a) the training label prior's majority and (b) a text-only majority predictor."""
    prior = Counter(label(x) for x in train).most_common(1)[0][0]
    by_text: dict[str, Counter] = defaultdict(Counter)
    for x in train:
        by_text[key(x)][label(x)] += 1

    def guess(x):
        c = by_text.get(key(x))
        return c.most_common(1)[0][0] if c else prior

    return (float(np.mean([label(x) == prior for x in test])), float(np.mean([label(x) == guess(x) for x in test])))


def test_answers_need_the_image():
    """Per question type, knowing the question text predicts the answer no better than the label prior."""
    train_q, train_h = _generate("train", 700)
    val_q, val_h = _generate("val", 300)
    for fam in items.FAMILIES:
        tr = [q for q in train_q if q.family == fam]
        va = [q for q in val_q if q.family == fam]
        assert len(tr) > 300 and len(va) > 100
        prior, text_only = _text_only_vs_prior(tr, va, lambda q: q.text, lambda q: q.answer)
        assert text_only <= prior + 0.05, (fam, prior, text_only)
        answers = Counter(q.answer for q in tr)
        assert answers.most_common(1)[0][1] / len(tr) < 1.8 / len(answers), (fam, answers)  # near-balanced
    prior, text_only = _text_only_vs_prior(train_h, val_h, lambda h: h.text, lambda h: h.label)
    assert abs(prior - 1 / 3) < 0.01 and text_only <= prior + 0.05
    assert Counter(h.label for h in train_h) == {lab: 700 for lab in items.LABELS}


def test_labels_follow_the_picture():
    for i in range(100):
        scene = world.make_scene(0, "val", i)
        for t in items.TEMPLATES:
            for p in t.all_params():
                a = t.answer(scene, p)
                assert a is None or a in t.answers
        for h in items.HYPOTHESES:
            for p in h.all_params():
                lab = h.label(scene, p)
                if h.name == "color_shape_at":
                    c, s, cell = p
                    o = scene.at(cell)
                    want = ("neutral" if cell == scene.occluder else
                            "entailment" if o and (o.colour, o.shape) == (c, s) else "contradiction")
                    assert lab == want


# ------------------------------------------------------------------------------------------------ zero-shot prompts


def test_every_question_parses_to_its_candidates():
    from mad_pipeline.shapes import zeroshot

    for t in items.TEMPLATES:
        for p in t.all_params()[:20]:
            fam, answers, prompts = zeroshot.candidates(t.text(p))
            assert fam == t.family and answers == t.answers
            assert len(set(prompts)) == len(prompts)
            assert zeroshot.prompt(t.text(p), answers[0]) == prompts[0]
    assert zeroshot.candidates("What is the man holding?") is None


# ------------------------------------------------------------------------------------------------ the teacher


@pytest.fixture(scope="module")
def shapes_clip():
    from mad_pipeline.teachers import load_teacher

    return load_teacher("shapes-clip", device="cpu")


def test_shipped_teacher_files():
    cfg = json.loads((ASSET / "open_clip_config.json").read_text())
    assert {"model_cfg", "preprocess_cfg", "description"} <= set(cfg)
    assert cfg["preprocess_cfg"]["image_size"] == 64
    weights = ASSET / "open_clip_model.safetensors"
    assert weights.is_file() and weights.stat().st_size < 20e6


def test_shipped_teacher_loads_offline_through_the_registry(shapes_clip, monkeypatch):
    import open_clip

    from mad_pipeline.teachers import get_teacher_spec

    assert get_teacher_spec("shapes-clip").model.startswith("local-dir:")
    t = shapes_clip
    assert t.num_tokens == 65 and t.width == 128 and t.embed_dim == 128 and t.grid == (8, 8)
    assert t.max_length == 32 and t.text_width == 128
    tok = open_clip.get_tokenizer(f"local-dir:{ASSET}")
    assert tok(["a red circle"]).shape == (1, 32)
    img = Image.open(io.BytesIO(world.encode_jpeg(world.render(world.make_scene(0, "val", 0)))))
    px = t.preprocess(img).unsqueeze(0)
    assert px.shape == (1, 3, 64, 64)
    tokens, pooled = t.encode_image_tokens(px)
    assert tokens.shape == (1, 65, 128) and pooled.shape == (1, 128)
    batch = t.tokenize(["a red circle in the top left", "no cross on the right"])
    ttok, tpooled = t.encode_text_tokens(batch)
    assert ttok.shape == (2, 32, 128) and tpooled.shape == (2, 128)
    assert batch.lengths.tolist() == [9, 7]


def test_training_preprocessing_matches_the_shipped_transform(shapes_clip):
    from mad_pipeline.shapes.train import normalize_images

    data = world.encode_jpeg(world.render(world.make_scene(0, "val", 1)))
    ours = normalize_images(torch.from_numpy(world.decode_jpeg(data)).unsqueeze(0))[0]
    theirs = shapes_clip.preprocess(Image.open(io.BytesIO(data)).convert("RGB"))
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_short_text_encoding_equals_full_context(shapes_clip):
    from mad_pipeline.shapes.train import encode_text_short

    ids = shapes_clip.tokenizer(["a red circle in the top left", "two crosses", "no orange shape at the bottom"])
    full = torch.nn.functional.normalize(shapes_clip.model.encode_text(ids), dim=-1)
    assert torch.allclose(encode_text_short(shapes_clip.model, ids), full, atol=1e-5)


def test_shipped_teacher_answers_from_the_picture(shapes_clip):
    """A quick sanity check of the measured zero-shot accuracy (docs/shapes.md has the full numbers)."""
    from mad_pipeline.shapes.train import normalize_images
    from mad_pipeline.shapes.zeroshot import generated_questions, model_encoders, predict

    images, fams, qs, truth, image_of = generated_questions(0, "val", 40)
    enc_img, enc_txt = model_encoders(shapes_clip.model, normalize_images, images, shapes_clip.tokenizer)
    preds = predict(enc_img, enc_txt, qs, image_of)
    acc = np.mean([p == t for p, t in zip(preds, truth, strict=True)])
    assert acc > 0.6, acc


def test_training_smoke_roundtrip(tmp_path):
    """A step of each phase of the real loop, saved and loaded back through the registry's local-dir path."""
    from mad_pipeline.shapes.train import TrainSettings, make_pool, save_teacher, train
    from mad_pipeline.teachers import TeacherSpec, load_teacher, register_teacher

    s = TrainSettings(steps=1, probe_steps=1, batch_size=8, pool_size=16, warmup=1, group_fraction=0.1)
    pool = make_pool(0, 16)
    model, hist = train(s, pool=pool)
    assert len(hist["history"]) == 2 and all(np.isfinite(h["loss"]) for h in hist["history"])
    model2, hist2 = train(s, pool=pool)
    assert [h["loss"] for h in hist2["history"]] == [h["loss"] for h in hist["history"]]  # reproducible
    out = save_teacher(model, tmp_path / "sc", s)
    register_teacher(TeacherSpec("shapes-smoke", "open_clip", f"local-dir:{out}"), overwrite=True)
    t = load_teacher("shapes-smoke", device="cpu")
    sd = model.state_dict()
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, sd[k].half().float()), k


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_make_shapes(tmp_path):
    from conftest import last_json, mad, mad_inproc

    out = last_json(mad("datasets", "make", "shapes", "--out", str(tmp_path / "w"), "--size", "4", "--json"))
    assert out["splits"]["train"]["images"] == 4 and (tmp_path / "w" / "shapes.json").is_file()
    bad = mad_inproc("datasets", "make", "clevr", "--out", str(tmp_path / "z"), check=False)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: unknown dataset kind 'clevr'; known: shapes"
