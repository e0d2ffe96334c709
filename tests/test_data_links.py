"""Symbolic links inside a data root are the user's own layout (COCO or VCR images linked in, not copied) and are
followed; a path written in a manifest or annotation file stays confined to the root (no `..` above it, no absolute
path). A linked layout and a copied one give the same store keys: rows are keyed by content, not by path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import make_photos, write_manifest

from mad_pipeline.data import load_dataset
from mad_pipeline.data.manifest import read_jsonl_manifest
from mad_pipeline.data.paths import safe_relpath
from mad_pipeline.errors import InputError


def _linked_root(tmp_path: Path, n: int = 4) -> tuple[Path, Path, list[str]]:
    """(a root holding the images, a root whose img/ is a link to the first one's, the image paths)."""
    real = tmp_path / "elsewhere"
    rels = make_photos(real, n)
    root = tmp_path / "root"
    root.mkdir()
    (root / "img").symlink_to(real / "img", target_is_directory=True)
    return real, root, rels


def test_links_inside_the_root_are_followed(tmp_path):
    real, root, rels = _linked_root(tmp_path)
    records = [{"id": i, "image": r, "text": f"photo {i}"} for i, r in enumerate(rels)]
    man = write_manifest(tmp_path / "m.jsonl", records)
    ds = read_jsonl_manifest(man, root)
    assert [s.image for s in ds.samples] == rels
    assert all((root / s.image).read_bytes() == (real / s.image).read_bytes() for s in ds.samples)
    # a linked file (not a folder) and a root that is itself a link are followed too
    (root / "one.jpg").symlink_to(real / rels[0])
    assert read_jsonl_manifest(write_manifest(tmp_path / "one.jsonl", [{"id": 0, "image": "one.jpg", "text": "x"}]),
                               root).samples[0].image == "one.jpg"
    (tmp_path / "root-link").symlink_to(root, target_is_directory=True)
    assert len(read_jsonl_manifest(man, tmp_path / "root-link").samples) == len(rels)


@pytest.mark.parametrize("path, expect", [
    ("../elsewhere/img/0000.jpg", "escapes the data root"),
    ("img/../../elsewhere/img/0000.jpg", "escapes the data root"),
    ("/etc/passwd", "is absolute"),
    ("~/x.jpg", "is absolute"),
])
def test_paths_written_in_a_manifest_stay_confined(tmp_path, path, expect):
    _, root, _ = _linked_root(tmp_path, 1)
    man = write_manifest(tmp_path / "m.jsonl", [{"id": 0, "image": path, "text": "x"}])
    with pytest.raises(InputError, match=expect) as e:
        read_jsonl_manifest(man, root)
    assert "m.jsonl" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match=expect):
        safe_relpath(path, root)


def test_a_benchmark_with_its_image_folder_linked_in(tmp_path):
    """VQA v2 laid out as usual: the annotation files in the root, train2014/ a link to the COCO images."""
    from mad_pipeline.shapes.formats import write_dataset

    write_dataset(tmp_path / "world", size=4, seed=0)
    src = tmp_path / "world" / "vqa"
    root = tmp_path / "vqa"
    root.mkdir()
    for p in src.iterdir():
        if p.is_dir():
            (root / p.name).symlink_to(p.resolve(), target_is_directory=True)
        else:
            shutil.copyfile(p, root / p.name)
    linked, copied = load_dataset("vqa", root, split="train"), load_dataset("vqa", src, split="train")
    assert [s.image for s in linked.samples] == [s.image for s in copied.samples]
    assert all((root / s.image).is_file() for s in linked.samples)


def test_a_linked_layout_keeps_the_store_keys(tiny_clip, tmp_path):
    from mad_pipeline.stages import extract as extract_stage

    real, root, rels = _linked_root(tmp_path, 3)
    records = [{"id": i, "image": r, "text": f"photo {i}"} for i, r in enumerate(rels)]
    keys = {}
    for name, data_root in (("real", real), ("linked", root)):
        man = write_manifest(tmp_path / f"{name}.jsonl", records)
        res = extract_stage.run(extract_stage.ExtractConfig(
            teacher="tiny-clip", weights=str(tiny_clip[1]), data_root=data_root, manifest=man,
            cache=tmp_path / "cache", num_workers=0, progress=False), log=lambda m: None)
        keys[name] = {k: s.key for k, s in res.stores.items()}
        if name == "linked":
            assert all(s.cached for s in res.stores.values())  # the same rows: nothing computed again
    assert keys["linked"] == keys["real"]
    assert set(keys["real"]) >= {"image", "text", "index"}
