"""Dense joint-space patch features (``mad extract --dense``): MaskCLIP's value path of an open_clip ViT's last block,
written into the image store as ``dense (N, T, E)`` float16 from the same forward as the tokens, checked against a
direct computation from the model's own modules; the default store (key, arrays) unchanged; question-aware selection
ranking by them when the store has them, and saying so in one line."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_photos


@pytest.fixture(scope="module")
def dense_stores(tiny_clip, tmp_path_factory):
    """A default and a --dense extraction of the tiny random-weight ViT teacher over 5 photos, in one cache."""
    import mad_pipeline as mad

    _, weights = tiny_clip
    root = tmp_path_factory.mktemp("dense")
    names = make_photos(root, 5, size=48)
    (root / "m.jsonl").write_text("".join(json.dumps({"id": f"s{i}", "image": n, "text": f"photo number {i}"}) + "\n"
                                          for i, n in enumerate(names)))
    common = dict(teacher="tiny-clip", weights=str(weights), manifest=str(root / "m.jsonl"), data_root=str(root),
                  cache=str(root / "cache"), num_workers=0, progress=False, log=lambda m: None, batch_size=2)
    plain = mad.extract(**common)
    dense = mad.extract(**common, dense=True)
    return {"root": root, "names": names, "weights": weights, "plain": plain, "dense": dense}


def _direct_dense(weights, pixels: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's value path written out on open_clip's own modules: the blocks before the last one as usual, then
    the last block's value projection (the last third of ``in_proj_weight``), ``out_proj``, ``ln_post``, ``proj``."""
    import open_clip

    model = open_clip.create_model("tiny-clip", pretrained=str(weights)).eval()
    v = model.visual
    with torch.no_grad():
        x = v._embeds(pixels)
        for blk in v.transformer.resblocks[:-1]:
            x = blk(x)
        last = v.transformer.resblocks[-1]
        d = x.shape[-1]
        val = F.linear(last.ln_1(x), last.attn.in_proj_weight[2 * d :], last.attn.in_proj_bias[2 * d :])
        return v.ln_post(last.attn.out_proj(val)) @ v.proj


def test_dense_array_matches_the_models_own_modules(dense_stores):
    from mad_pipeline.hashing import sha256_file
    from mad_pipeline.store.reader import open_store
    from mad_pipeline.store.verify import verify_store
    from mad_pipeline.teachers import load_teacher

    st = open_store(dense_stores["dense"].stores["image"].path)
    geo = st.manifest["geometry"]
    dense = st["dense"][:]
    assert dense.dtype == np.float16 and dense.shape == (5, geo["num_tokens"], geo["embed_dim"])
    assert st["dense"].chunks[0] == st["tokens"].chunks[0]  # row-chunked like the tokens
    assert st.manifest["dense"]["method"] == "maskclip-value-path"
    teacher = load_teacher("tiny-clip", str(dense_stores["weights"]), "cpu", "fp32", None)
    root = dense_stores["root"]
    from PIL import Image

    rows = st.rows_for([sha256_file(root / n) for n in dense_stores["names"]])
    pixels = torch.stack([teacher.preprocess(Image.open(root / n).convert("RGB")) for n in dense_stores["names"]])
    want = _direct_dense(dense_stores["weights"], pixels).numpy()
    np.testing.assert_allclose(dense[rows].astype(np.float32), want, atol=2e-3, rtol=1e-2)
    # the same forward: the dense store's tokens are the default store's, and the dense rows are not the tokens'
    # projection (the value path skips the attention that mixes positions)
    plain = open_store(dense_stores["plain"].stores["image"].path)
    np.testing.assert_array_equal(st["tokens"][:], plain["tokens"][:])
    np.testing.assert_array_equal(st["pooled"][:], plain["pooled"][:])
    proj_tokens = st["tokens"][:].astype(np.float32) @ st["visual_proj"][...]
    assert not np.allclose(proj_tokens[:, 1:], dense[:, 1:].astype(np.float32), atol=1e-2)
    assert verify_store(str(st.path)).problems == []
    from mad_pipeline.features import open_features

    assert open_features(str(st.path)).dense.dims == ("image", "token", "embed")


def test_default_store_key_and_arrays_unchanged(dense_stores, tiny_clip):
    from mad_pipeline.cache import make_key
    from mad_pipeline.hashing import hash_of_set
    from mad_pipeline.store.reader import open_store

    plain = open_store(dense_stores["plain"].stores["image"].path)
    dense_key = dense_stores["dense"].stores["image"].key
    assert "dense" not in plain.array_names() and "dense" not in plain.manifest
    # the default key is made of the teacher identity and the image hashes only, as it always was
    want = make_key("image", teacher={k: v for k, v in plain.manifest["teacher"].items() if k not in ("name", "tower")},
                    inputs=hash_of_set(sorted(plain["image_hash"][:].tolist())))
    assert plain.manifest["cache_key"] == want != dense_key
    # the other stores are shared (only the image store's key has the option)
    assert dense_stores["plain"].stores["text"].key == dense_stores["dense"].stores["text"].key


def test_dense_needs_an_open_clip_image_teacher(tmp_path):
    from mad_pipeline.stages import extract as stage

    from mad_pipeline.errors import InputError

    names = make_photos(tmp_path, 1, size=32)
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "a", "image": names[0], "text": "x"}) + "\n")
    with pytest.raises(InputError, match="--dense: teacher minilm is not an open_clip image teacher"):
        stage.run(stage.ExtractConfig(teacher="minilm", data_root=tmp_path, manifest=tmp_path / "m.jsonl",
                                      cache=tmp_path / "c", progress=False, dense=True), log=lambda m: None)


def test_question_aware_ranks_by_dense_features_when_the_store_has_them(dense_stores, caplog):
    from mad_pipeline.hashing import sha256_text
    from mad_pipeline.losses import MADConfig, TargetBuilder, TeacherBatch, patch_centers
    from mad_pipeline.store.reader import open_store
    from mad_pipeline.training import joint
    from mad_pipeline.training.dataset import StorePaths

    cfg = MADConfig(select_v="question-aware", k_v=3)
    res = dense_stores["dense"]
    joint._said.clear()
    with caplog.at_level(logging.WARNING, logger="mad_pipeline"):
        space = joint.joint_space(cfg, StorePaths(image=res.stores["image"].path, text=res.stores["text"].path))
        plain = joint.joint_space(cfg, StorePaths(image=dense_stores["plain"].stores["image"].path,
                                                  text=res.stores["text"].path))
    assert space.dense and space.proj is not None and not plain.dense
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "dense joint-space features (dense" in lines[0]
    assert "by tokens @ visual_proj" in lines[1] and "mad extract --dense" in lines[1]

    image, text = open_store(res.stores["image"].path), open_store(res.stores["text"].path)
    trow = text.rows_for([sha256_text(f"photo number {i}") for i in range(5)])
    grid = tuple(image.manifest["geometry"]["grid"])
    teacher = TeacherBatch(image_tokens=torch.from_numpy(image["tokens"][:]), image_grid=grid,
                           crop_box=torch.from_numpy(image["crop_box"][:]),
                           text_pooled=torch.from_numpy(text["pooled"][:][trow]),
                           image_dense=torch.from_numpy(image["dense"][:]))
    centers = patch_centers(teacher.crop_box, grid)  # a student on the teacher's own grid
    out = TargetBuilder(cfg, joint_proj=space.proj, dense=True).build(teacher, centers, None).image
    old = TargetBuilder(cfg, joint_proj=space.proj).build(teacher, centers, None).image
    for i in range(5):
        scores = F.cosine_similarity(teacher.image_dense[i, 1:].float(), teacher.text_pooled[i].float(), dim=-1)
        assert sorted(out.index[i].tolist()) == sorted(scores.topk(3).indices.tolist())
    assert out.index.tolist() != old.index.tolist()  # the two joint spaces rank differently
    # cached per image or not, the same selection
    cached = TargetBuilder(cfg, cache_mb=8, joint_proj=space.proj, dense=True)
    again = cached.build(teacher, centers, None, image_keys=list(range(5))).image
    assert again.index.tolist() == out.index.tolist()



def test_distill_dense_reads_the_dense_rows(tiny_clip, tmp_path):
    """``mad distill --dense --select question-aware``: stage 1 writes the dense array, the run ranks by it (one line
    says so), and the training data carries each image's dense rows to the target builder."""
    from mad_pipeline.stages.distill import DistillConfig, fingerprint
    from mad_pipeline.stages.distill import run as distill_run

    from mad_pipeline.losses import MADConfig
    from mad_pipeline.shapes.formats import write_dataset
    from mad_pipeline.store.reader import open_store
    from mad_pipeline.tasks import get_task
    from mad_pipeline.training.collate import Collate
    from mad_pipeline.training.config import TrainConfig
    from mad_pipeline.training.dataset import DistillDataset, StorePaths
    from mad_pipeline.training.joint import _said

    _, weights = tiny_clip
    write_dataset(tmp_path / "world", size=8, seed=0)
    root = tmp_path / "world" / "vqa"
    cfg = DistillConfig(task="vqa", data_root=root, out=tmp_path / "run", teacher="tiny-clip", weights=str(weights),
                        vocab_min_count=1, cache=tmp_path / "cache", progress=False, dense=True,
                        mad=MADConfig.from_switches(select="question-aware"),
                        train=TrainConfig(steps=1, batch_size=4, eval_every=1, log_every=1, num_workers=0))
    assert "dense" not in fingerprint(DistillConfig(task="vqa", data_root=root, out=tmp_path / "r"))  # default
    lines: list[str] = []
    _said.clear()

    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("mad_pipeline").addHandler(handler)
    try:
        res = distill_run(cfg, log=lambda m: None)
    finally:
        logging.getLogger("mad_pipeline").removeHandler(handler)
    assert any("dense joint-space features (dense" in ln for ln in lines), lines
    stores = res.metrics["stores"]["train"]
    image = open_store(tmp_path / "cache" / "stores" / "image" / f"{stores['image']}.zarr")
    assert "dense" in image.array_names()
    paths = StorePaths(image=str(image.path),
                       text=str(tmp_path / "cache" / "stores" / "text" / f"{stores['text']}.zarr"),
                       index=str(tmp_path / "cache" / "stores" / "index" / f"{stores['index']}.zarr"))
    from mad_pipeline.data import load_dataset

    task = get_task("vqa", vocab_min_count=1)
    samples = load_dataset("vqa", root, split="train").samples
    task.fit(samples)
    data = DistillDataset(samples, root, task, lambda im: (torch.zeros(3, 8, 8), np.zeros(4, np.float32)), paths,
                          read_dense=True)
    items = data.__getitems__([0, 1])
    teacher = Collate(task, None, teacher_grid=data.grid).teacher_batch(items)
    assert teacher.image_dense is not None and teacher.image_dense.shape == (2, *image["dense"].shape[1:])
