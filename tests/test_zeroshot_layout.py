"""The zero-shot store's layout at VQA v2 size: ``logits`` in ~1 MB chunks of whole rows inside shards, rows ordered by
image (as training reads them), candidates every row shares stored once; stores written the old way (one chunk per
array, per-row labels and texts, dataset order) read the same; the store key is what it always was."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import bench_module

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = "a photo of {a}"  # question-independent: every row shares its texts too


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mad_pipeline.shapes.formats import write_dataset

    d = tmp_path_factory.mktemp("zs-layout")
    write_dataset(d / "shapes", size=20, seed=0)
    return d


def _extract(tiny_clip, world, template: str | None) -> str:
    from mad_pipeline.stages import extract

    _, weights = tiny_clip
    res = extract.run(extract.ExtractConfig(teacher="tiny-clip", weights=str(weights), dataset="vqa", split="val",
                                            data_root=world / "shapes" / "vqa", task="vqa", zs_prompt="template",
                                            zs_template=template, vocab_min_count=1, cache=world / "cache",
                                            num_workers=0, progress=False, device="cpu"), log=lambda m: None)
    return res.stores["zeroshot"].path


@pytest.fixture(scope="module")
def shared_store(tiny_clip, world) -> str:
    return _extract(tiny_clip, world, TEMPLATE)


@pytest.fixture(scope="module")
def task_and_samples(world):
    from mad_pipeline.data import load_dataset
    from mad_pipeline.tasks import get_task

    task = get_task("vqa", vocab_min_count=1)
    task.fit(load_dataset("vqa", world / "shapes" / "vqa", split="train").samples)
    return task, load_dataset("vqa", world / "shapes" / "vqa", split="val").samples


def test_shared_candidates_are_stored_once_and_logits_are_row_chunked(tiny_clip, world, shared_store,
                                                                      task_and_samples):
    from mad_pipeline.store.verify import verify_store

    task, samples = task_and_samples
    g = zarr.open_group(shared_store, mode="r")
    assert set(g.array_keys()) == {"sample_id", "image_hash", "logits", "shared_label", "shared_text"}
    man = g.attrs["mad"]
    assert man["constants"] == ["shared_label", "shared_text"] and man["row_order"].startswith("image_hash")
    answers = list(task.vocab.answers)
    assert list(g["shared_label"][:]) == answers  # once, not once per question
    assert list(g["shared_text"][:]) == [TEMPLATE.format(a=a) for a in answers]
    k = len(answers)
    logits = g["logits"]
    assert logits.shape == (len(samples), k) and logits.chunks[0] == math.ceil((1 << 20) / (4 * k))  # ~1 MB chunks
    assert logits.shards is not None  # inside shard files, like the token arrays
    values, hashes = logits[:], g["image_hash"][:]
    assert np.isfinite(values).all()  # no padding: every row has the same K candidates
    assert list(hashes) == sorted(hashes)  # rows by image: training's chunk-aware order reads them together
    for h in set(hashes.tolist()):  # the same texts for every question: an image's rows are equal
        same = values[hashes == h]
        assert np.array_equal(same, np.broadcast_to(same[0], same.shape))
    assert verify_store(shared_store).ok

    # the default template names the question: labels shared, texts per row (chunked like the logits)
    perq_path = _extract(tiny_clip, world, None)
    perq = zarr.open_group(perq_path, mode="r")
    assert "candidate_label" not in perq and list(perq["shared_label"][:]) == answers
    assert perq["candidate_text"].shape == perq["logits"].shape
    assert perq["candidate_text"].chunks == perq["logits"].chunks
    assert perq.attrs["mad"]["constants"] == ["shared_label"]
    assert verify_store(perq_path).ok


def test_the_key_is_the_digest_it_always_was(task_and_samples):
    from mad_pipeline.extraction.stores import candidates_digest
    from mad_pipeline.hashing import content_key
    from mad_pipeline.tasks.vqa import vqa_candidates

    task, samples = task_and_samples
    ids, hashes = [s.id for s in samples], [f"{i:064x}" for i in range(len(samples))]
    for template in (TEMPLATE, None):
        cands, _ = vqa_candidates(samples, "template", template, task.vocab)
        old = content_key([[i, h, list(c.labels), list(c.texts)] for i, h, c in zip(ids, hashes, cands, strict=True)])
        assert candidates_digest(ids, hashes, cands) == old  # streamed, byte for byte the same canonical JSON
    shared, _ = vqa_candidates(samples, "template", TEMPLATE, task.vocab)
    assert all(c is shared[0] for c in shared)  # one Candidates for every question: nothing repeated in memory


OLD_FORMAT_SPECS = (("sample_id", "str", ("sample",)), ("image_hash", "<U64", ("sample",)),
                    ("logits", "float32", ("sample", "candidate")), ("candidate_label", "str", ("sample", "candidate")),
                    ("candidate_text", "str", ("sample", "candidate")))


def _write_old_layout(new_path: str, cache_root: Path, samples) -> str:
    """The same store written the way stage 1 wrote it before: rows in dataset order, per-row labels and texts,
    one chunk per array (every array small)."""
    from mad_pipeline.cache import Cache
    from mad_pipeline.extraction.build import get_or_build
    from mad_pipeline.store.layout import ArraySpec

    g = zarr.open_group(new_path, mode="r")
    man = dict(g.attrs["mad"])
    k = g["logits"].shape[1]
    at = {sid: i for i, sid in enumerate(g["sample_id"][:].tolist())}
    rows = [at[s.id] for s in samples if s.id in at]  # dataset order
    cols = {"sample_id": g["sample_id"][:][rows], "image_hash": g["image_hash"][:][rows],
            "logits": g["logits"][:][rows],
            "candidate_label": np.tile(np.asarray(g["shared_label"][:], object), (len(rows), 1)),
            "candidate_text": np.tile(np.asarray(g["shared_text"][:], object), (len(rows), 1))}
    specs = [ArraySpec(n, () if len(d) == 1 else (k,), t, d, fill=float("nan") if n == "logits" else "")
             for n, t, d in OLD_FORMAT_SPECS]

    def fill(w):
        for s in range(w.n_shards):
            lo, hi = w.shard_range(s)
            w.write_shard(s, {n: v[lo:hi] for n, v in cols.items()})

    keep = {n: v for n, v in man.items() if n not in ("constants", "row_order", "format_version", "kind",
                                                        "cache_key", "n_rows", "created", "library_versions",
                                                        "layout", "chunks")}
    return get_or_build(Cache.at(cache_root), "zeroshot", man["cache_key"], len(rows), lambda: specs, fill,
                        lambda w: keep, log=lambda m: None).path


def test_a_store_written_the_old_way_reads_the_same(world, shared_store, task_and_samples, tmp_path):
    from mad_pipeline.extraction.zeroshot import zeroshot_results
    from mad_pipeline.store.verify import verify_store
    from mad_pipeline.training.dataset import DistillDataset, StorePaths

    task, samples = task_and_samples
    old = _write_old_layout(shared_store, tmp_path / "old-cache", samples)
    g = zarr.open_group(old, mode="r")
    assert g["logits"].chunks[0] == g["logits"].shape[0] and g["candidate_label"].ndim == 2  # the old layout
    assert "shared_label" not in g and verify_store(old).ok

    def items(path):
        ds = DistillDataset(samples, world / "shapes" / "vqa", task, _pixels, StorePaths(zeroshot=path))
        got = ds.__getitems__(list(range(len(ds))))
        return np.stack([it.teacher["zs_logits"] for it in got]), [it.teacher["zs_mask"] for it in got]

    (a, ma), (b, mb) = items(shared_store), items(old)
    assert np.array_equal(a, b) and ma == mb and all(ma)
    assert task.teacher_zeroshot(old, samples) == task.teacher_zeroshot(shared_store, samples)
    key = lambda r: r["question_id"]  # noqa: E731 - rows are in another order, the records the same
    assert sorted(zeroshot_results(old)[1], key=key) == sorted(zeroshot_results(shared_store)[1], key=key)


def _pixels(image):
    return np.zeros((3, 2, 2), np.float32), (0.0, 0.0, 1.0, 1.0)


def test_the_documented_snippet_reads_a_shared_store(shared_store):
    from mad_pipeline.extraction.zeroshot import zeroshot_results

    text = (REPO / "docs" / "store-format.md").read_text().split("## Zero-shot store", 1)[1].split("\n## ", 1)[0]
    (snippet,) = re.findall(r"```python\n(import numpy as np, zarr\n.*?)```", text, re.S)
    env = {"zeroshot_store": shared_store}
    exec(snippet, env)  # noqa: S102 - the documentation's own snippet
    _, records = zeroshot_results(shared_store)
    assert {str(r["question_id"]): r["answer"] for r in records} == env["answers"] and records


@pytest.fixture(scope="module")
def scale():
    return bench_module("scale")


def _zeroshot_epoch(scale, cache: Path, fraction: float) -> tuple[dict, float, int]:
    """One epoch of zero-shot reads in chunk-aware order over a VQA-v2-shaped store with the real 3,129 candidates,
    with a chunk cache that keeps only the batch in hand (as at VQA v2 size, where the store dwarfs any cache).
    Returns the zero-shot side's counts per sample, image chunks per sample (ViT-B/16: 4 images a chunk) and the
    logits' rows per chunk."""
    from mad_pipeline.cache import Cache
    from mad_pipeline.tasks import get_task
    from mad_pipeline.training.dataset import StorePaths
    from mad_pipeline.training.sampler import ChunkShuffleSampler, ResumableBatches

    samples, image_of, n_img = scale.vqa_like(fraction)
    ih = [scale.image_hash(i) for i in range(n_img)]
    path = scale.build_zeroshot(Cache.at(cache), {"bench": "zs-flat", "fraction": fraction}, samples,
                                [ih[i] for i in image_of], 3129, log=lambda m: None)
    task = get_task("vqa")
    task.fit(samples)
    data = scale._store_only_class()(samples, cache, task, None, StorePaths(zeroshot=path), cache_chunks=1)
    image_row = np.argsort(np.argsort(ih))[image_of]  # image store rows are sorted by hash
    for idx in ResumableBatches(ChunkShuffleSampler(image_row, 4, 8, seed=0), 32):
        data.__getitems__(idx)
    return (data.read_counts()["zeroshot"], len(set((image_row // 4).tolist())) / len(samples),
            int(zarr.open_group(path, mode="r")["logits"].chunks[0]))


def test_zeroshot_reads_per_sample_stay_flat(scale, tmp_path):
    small, img_small, rows = _zeroshot_epoch(scale, tmp_path, 0.001)  # 444 questions
    large, img_large, _ = _zeroshot_epoch(scale, tmp_path, 0.003)  # 1,331 questions
    assert rows == math.ceil((1 << 20) / (4 * 3129)) == 84  # ~1 MB of logits a chunk, whatever the store's size
    for c, img in ((small, img_small), (large, img_large)):
        # an image chunk's questions are next to each other: at most two zero-shot chunks for each image chunk, the
        # same bound at every size (stored in dataset order they would cost one chunk per image of the window)
        assert c["chunks"] <= 2 * img, (c, img)
        assert c["bytes_decoded"] <= 2 * img * rows * 3129 * 4 + 1  # only logits are decoded: labels are shared
    for c in (small, large):  # what a chunk decodes to is ~1 MB at any size (the old layout: the whole array)
        assert 0.5 * rows * 3129 * 4 <= c["bytes_decoded"] / c["chunks"] <= rows * 3129 * 4
