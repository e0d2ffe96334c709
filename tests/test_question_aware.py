"""Question-aware token selection: the teacher's patches ranked by their relevance to the sample's text in the
teacher's joint space (``cos(V_k @ visual_proj, t)``), selected per sample in the data pipeline; the visual
projection written by extraction into the image store; the one-line fallbacks (another text teacher, a store that
predates the projection)."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import bench_module

from mad_pipeline.losses import MADConfig, TargetBuilder, TeacherBatch, patch_centers, select_tokens
from mad_pipeline.training import joint
from mad_pipeline.training.dataset import StorePaths

# ----------------------------------------------------------------------------------------------------------------------
# a constructed case: two objects, a question about one


def _two_objects(seed: int = 0):
    """A 4x4 teacher grid over a 64x64 image: object A on patch 5, object B on patch 10, background elsewhere. In the
    joint space (after ``proj``) patch A points along the text's direction; the CLS token (and so teacher-saliency)
    resembles object B."""
    g = torch.Generator().manual_seed(seed)
    d, e = 24, 16
    proj = torch.linalg.qr(torch.randn(d, d, generator=g))[0][:, :e]  # orthonormal columns: (D, E)
    a, b = torch.zeros(e), torch.zeros(e)
    a[0], b[1] = 1.0, 1.0
    patches = 0.3 * torch.randn(16, d, generator=g)
    patches[5] = proj @ a * 4 + 0.05 * torch.randn(d, generator=g)  # object A (the question's)
    patches[10] = proj @ b * 4 + 0.05 * torch.randn(d, generator=g)  # object B
    cls = proj @ b * 4
    tokens = torch.cat([cls[None], patches])[None]  # (1, 17, D)
    text = a[None] + 0.1 * b[None]  # the question's embedding: about A
    return tokens, proj, text


def _batch(tokens, text):
    box = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    return TeacherBatch(image_tokens=tokens.half(), image_grid=(4, 4), crop_box=box,
                        image_valid=torch.ones(1, dtype=torch.bool), text_pooled=text.half()), box


def test_ranks_the_mentioned_object_first():
    tokens, proj, text = _two_objects()
    teacher, box = _batch(tokens, text)
    centers = patch_centers(box, (4, 4))
    qa = TargetBuilder(MADConfig(select_v="question-aware", k_v=1), joint_proj=proj).build(teacher, centers, None)
    sal = TargetBuilder(MADConfig(select_v="teacher-saliency", k_v=1)).build(teacher, centers, None)
    assert qa.image.policy == "question-aware" and qa.image.index.tolist() == [[5]]  # object A, the question's
    assert sal.image.index.tolist() == [[10]]  # the CLS resembles object B
    # the whole ranking is cos(proj(V_k), t)
    k4 = TargetBuilder(MADConfig(select_v="question-aware", k_v=4), joint_proj=proj).build(teacher, centers, None)
    scores = torch.nn.functional.cosine_similarity(tokens.half()[0, 1:].float() @ proj, text.half().float(), dim=-1)
    assert sorted(k4.image.index[0].tolist()) == sorted(scores.topk(4).indices.tolist())


def test_selection_is_per_sample_and_cached_per_image():
    """Two questions about one image keep different patches; the per-image cache gives the same targets, bit for
    bit, as computing each batch afresh, in any batch composition."""
    tokens, proj, text_a = _two_objects()
    text_b = torch.zeros_like(text_a)
    text_b[0, 1] = 1.0  # a question about B
    tokens2 = tokens.repeat(3, 1, 1)
    tokens2[2, 1:] = tokens2[2, 1:].flip(0)  # another image
    texts = torch.cat([text_a, text_b, text_a])
    box = torch.tensor([[0.0, 0.0, 64.0, 64.0]]).repeat(3, 1)
    teacher = TeacherBatch(image_tokens=tokens2.half(), image_grid=(4, 4), crop_box=box, text_pooled=texts.half())
    centers = patch_centers(box, (4, 4))
    cfg = MADConfig(select_v="question-aware", k_v=0.25)
    fresh = TargetBuilder(cfg, joint_proj=proj).build(teacher, centers, None)
    assert fresh.image.index[0].tolist() != fresh.image.index[1].tolist()
    assert 5 in fresh.image.index[0].tolist() and 10 in fresh.image.index[1].tolist()
    cached = TargetBuilder(cfg, cache_mb=64, joint_proj=proj)
    first = cached.build(teacher, centers, None, image_keys=[7, 7, 8])
    again = cached.build(teacher, centers, None, image_keys=[7, 7, 8])  # every image from the cache
    assert cached.cached(7) and cached.cached(8)
    for out in (first, again):
        for f in ("index", "tokens", "mask"):
            assert torch.equal(getattr(out.image, f), getattr(fresh.image, f).to(getattr(out.image, f).dtype))
    alone = TargetBuilder(cfg, joint_proj=proj).build(
        TeacherBatch(image_tokens=tokens2[1:2].half(), image_grid=(4, 4), crop_box=box[:1],
                     text_pooled=texts[1:2].half()), centers[:1], None)
    n = int(alone.image.mask.sum())
    assert torch.equal(alone.image.index[0, :n], fresh.image.index[1, :n])
    assert torch.equal(alone.image.tokens[0, :n], fresh.image.tokens[1, :n].to(alone.image.tokens.dtype))


def test_without_joint_space_it_ranks_as_teacher_saliency():
    """No projection (the fallback): the targets are teacher-saliency's, under the policy's own name (so the
    objective accepts them); text tokens are ranked against their own EOS in either case."""
    tokens, proj, text = _two_objects()
    teacher, box = _batch(tokens, text)
    centers = patch_centers(box, (4, 4))
    qa = TargetBuilder(MADConfig(select_v="question-aware", k_v=3)).build(teacher, centers, None)
    sal = TargetBuilder(MADConfig(select_v="teacher-saliency", k_v=3)).build(teacher, centers, None)
    assert qa.image.policy == "question-aware"
    assert torch.equal(qa.image.index, sal.image.index) and torch.equal(qa.image.tokens, sal.image.tokens)
    with pytest.raises(ValueError, match="text"):
        select_tokens("question-aware", 1, torch.randn(1, 4, 3), None, torch.ones(1, 4, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------------------------------
# real stores: the shipped shapes-clip teacher on two rendered scenes


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    import mad_pipeline as mad
    from mad_pipeline.shapes.world import COLOURS, Obj, Scene, encode_jpeg, render

    root = tmp_path_factory.mktemp("qa-scenes")
    scenes = [Scene((Obj("red", "square", 0, 10.7, 10.7, 7.0, COLOURS["red"]),
                     Obj("blue", "circle", 8, 53.3, 53.3, 7.0, COLOURS["blue"])), 4, (242, 242, 236)),
              Scene((Obj("green", "triangle", 2, 53.3, 10.7, 7.0, COLOURS["green"]),), 6, (242, 242, 236))]
    rows = []
    for i, sc in enumerate(scenes):
        (root / f"s{i}.jpg").write_bytes(encode_jpeg(render(sc)))
    for i, (img, q) in enumerate([(0, "What color is the square?"), (0, "Where is the blue circle?"),
                                  (1, "What shape is the green object?")]):
        rows.append({"id": f"q{i}", "image": f"s{img}.jpg", "text": q})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache = root / "cache"
    res = mad.extract(teacher="shapes-clip", manifest=str(root / "manifest.jsonl"), data_root=str(root),
                      cache=str(cache), num_workers=0, progress=False, log=lambda m: None)
    return {"root": root, "cache": cache, "image": Path(res.stores["image"].path),
            "text": Path(res.stores["text"].path), "index": Path(res.stores["index"].path), "rows": rows}


def test_extraction_writes_the_visual_projection(stores):
    from mad_pipeline.features import features_for, open_features
    from mad_pipeline.store.reader import open_store
    from mad_pipeline.store.verify import verify_store

    st = open_store(stores["image"])
    assert st.manifest["constants"] == ["visual_proj"] and "visual_proj" in st.manifest["chunks"]
    proj = st["visual_proj"][...]
    geo = st.manifest["geometry"]
    assert proj.shape == (geo["width"], geo["embed_dim"]) and proj.dtype == np.float32
    # the stored CLS token (after ln_post) times the projection is the stored pooled embedding
    cls = st["tokens"][:][:, 0].astype(np.float32)
    np.testing.assert_allclose(cls @ proj, st["pooled"][:].astype(np.float32), atol=1e-2)
    assert verify_store(str(stores["image"])).problems == []
    assert open_features(str(stores["image"])).visual_proj.dims == ("channel", "embed")
    feats = features_for(["q0", "q2"], index=str(stores["index"]), image=str(stores["image"]))
    assert "image_visual_proj" not in feats and feats.image_pooled.shape == (2, geo["embed_dim"])  # not per sample


def _teacher_batch(stores, ids):
    from mad_pipeline.hashing import sha256_file, sha256_text
    from mad_pipeline.store.reader import open_store

    image, text = open_store(stores["image"]), open_store(stores["text"])
    rows = {r["id"]: r for r in stores["rows"]}
    irow = image.rows_for([sha256_file(stores["root"] / rows[i]["image"]) for i in ids])
    trow = text.rows_for([sha256_text(rows[i]["text"]) for i in ids])
    return TeacherBatch(image_tokens=torch.from_numpy(image["tokens"][:][irow]), image_grid=(8, 8),
                        crop_box=torch.from_numpy(image["crop_box"][:][irow]),
                        text_pooled=torch.from_numpy(text["pooled"][:][trow])), irow


def test_real_stores_rank_in_the_joint_space(stores):
    paths = StorePaths(image=str(stores["image"]), text=str(stores["text"]))
    cfg = MADConfig(select_v="question-aware", k_v=8)
    proj = joint.joint_projection(cfg, paths)
    assert proj is not None and proj.shape == (128, 128)
    teacher, irow = _teacher_batch(stores, ["q0", "q1", "q2"])
    centers = patch_centers(teacher.crop_box, (8, 8))  # a student on the teacher's own grid
    out = TargetBuilder(cfg, cache_mb=16, joint_proj=proj).build(teacher, centers, None, image_keys=irow.tolist())
    for i in range(3):
        joint_tokens = teacher.image_tokens[i, 1:].float() @ proj
        scores = torch.nn.functional.cosine_similarity(joint_tokens, teacher.text_pooled[i].float(), dim=-1)
        assert sorted(out.image.index[i].tolist()) == sorted(scores.topk(8).indices.tolist())
    assert out.image.index[0].tolist() != out.image.index[1].tolist()  # one image, two questions


def test_another_text_teacher_says_so_once(stores, tmp_path, caplog):
    """A text store of another model (here: a copy whose manifest names MiniLM) is another space: one warning line,
    once, and the policy ranks as teacher-saliency."""
    other = tmp_path / "text.zarr"
    shutil.copytree(stores["text"], other)
    g = zarr.open_group(str(other), mode="r+", use_consolidated=False)
    man = dict(g.attrs["mad"])
    man["teacher"] = {"name": "minilm", "tower": "text", "family": "transformers", "weights_sha256": "0" * 64}
    g.attrs["mad"] = man
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(other))
    joint._said.clear()
    cfg = MADConfig(select_v="question-aware")
    with caplog.at_level(logging.WARNING, logger="mad_pipeline"):
        for _ in range(2):
            assert joint.joint_projection(cfg, StorePaths(image=str(stores["image"]), text=str(other))) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "text teacher minilm is not the image teacher shapes-clip's own text tower" in lines[0]
    assert "ranks the patches as teacher-saliency does" in lines[0]
    # another policy needs no joint space: nothing is said
    assert joint.joint_projection(MADConfig(), StorePaths(image=str(stores["image"]), text=str(other))) is None


def test_a_store_that_predates_the_projection(stores, tmp_path, caplog):
    """A store published before extraction wrote ``visual_proj`` (same key, no array) is read as before; the policy
    says in one line that it predates the projection and falls back."""
    from mad_pipeline.store.reader import open_store

    old = tmp_path / stores["image"].name
    shutil.copytree(stores["image"], old)
    shutil.rmtree(old / "visual_proj")
    g = zarr.open_group(str(old), mode="r+", use_consolidated=False)
    man = dict(g.attrs["mad"])
    man.pop("constants")
    man["chunks"] = {k: v for k, v in man["chunks"].items() if k != "visual_proj"}
    g.attrs["mad"] = man
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(old))
    st = open_store(old)
    assert "visual_proj" not in st.array_names() and st.manifest["cache_key"] == open_store(stores["image"]).manifest[
        "cache_key"]
    joint._said.clear()
    with caplog.at_level(logging.WARNING, logger="mad_pipeline"):
        got = joint.joint_projection(MADConfig(select_v="question-aware"), StorePaths(image=str(old),
                                                                                       text=str(stores["text"])))
    assert got is None
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"image store {st.manifest['cache_key'][:12]} predates the visual projection" in line


# ----------------------------------------------------------------------------------------------------------------------
# the kept-patch-on-object figure's ground truth (bench/selection_objects.py)


def test_the_objects_a_text_mentions_and_their_patches():
    from mad_pipeline.shapes.world import COLOURS, Obj, Scene

    bench = bench_module("selection_objects")
    square = Obj("red", "square", 0, 10.7, 10.7, 7.0, COLOURS["red"])
    circle = Obj("blue", "circle", 8, 53.3, 53.3, 7.0, COLOURS["blue"])
    scene = Scene((square, circle), 4, (242, 242, 236))
    assert bench.mentioned("vqa", "What color is the square?", scene) == [square]
    assert bench.mentioned("vqa", "Is there a blue circle in the bottom right?", scene) == [circle]
    assert bench.mentioned("vqa", "Is there a red circle in the top left?", scene) == []  # names no visible object
    assert bench.mentioned("vqa", "How many shapes are orange?", scene) is None  # not a generator question
    assert bench.mentioned("snli-ve", "There is a red square in the top left.", scene) == [square]
    on = bench.patch_on_object(bench.object_mask([square]), 8, (0, 0, 64, 64)).reshape(8, 8)
    # the square spans x, y in [4.75, 16.65]: it covers patch (1, 1) whole, (0, 1) and (1, 0) by 40%, (0, 0) by 16%
    expected = np.zeros((8, 8), bool)
    expected[0, 1] = expected[1, 0] = expected[1, 1] = True
    assert (on == expected).all()
