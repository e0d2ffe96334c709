"""The inputs people already have: webdataset tar shards, parquet and CSV manifests, and caption lists.

The same images and texts give the same image / text store keys and arrays whichever reader listed them (content
keys: sha256 of the image bytes, of the text's UTF-8); a bad tar member is named ``shard:member``; an interrupted
extraction from shards resumes like one from files."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from conftest import make_photos, write_manifest
from mad_pipeline.stages import extract as stage

from mad_pipeline.data import load_dataset
from mad_pipeline.errors import InputError, StoreError
from mad_pipeline.store import writer as store_writer
from mad_pipeline.testhooks import FAIL_ENV

N = 6
CAPTIONS = [f"photo number {i}, a crop of a classic test image" for i in range(N)]
PATTERN = "shards/{00000..00001}.tar"


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_shards(root: Path, rels: list[str], captions: list, bad: dict[int, bytes] | None = None) -> None:
    """Two shards of three samples each, as img2dataset writes them: KEY.jpg + KEY.txt (+ KEY.json); sample 4 has
    its caption in the json instead (the other json fields become metadata)."""
    (root / "shards").mkdir(exist_ok=True)
    for s in range(2):
        with tarfile.open(root / "shards" / f"{s:05d}.tar", "w") as tf:
            for i in range(3 * s, 3 * s + 3):
                key = f"{i:06d}"
                _add(tf, f"{key}.jpg", (bad or {}).get(i, (root / rels[i]).read_bytes()))
                if i == 4 or not isinstance(captions[i], str):
                    _add(tf, f"{key}.json", json.dumps({"caption": captions[i], "url": f"https://x/{i}.jpg"}).encode())
                else:
                    _add(tf, f"{key}.txt", captions[i].encode() + b"\n")
                    _add(tf, f"{key}.json", json.dumps({"url": f"https://x/{i}.jpg", "key": key}).encode())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The same six photos and captions as a JSONL manifest + files, tar shards, a parquet file holding the image
    bytes, and a CSV of paths."""
    root = tmp_path_factory.mktemp("inputs")
    rels = make_photos(root, N, size=64)
    write_manifest(root / "m.jsonl", [{"id": f"{i:06d}", "image": r, "text": c}
                                      for i, (r, c) in enumerate(zip(rels, CAPTIONS, strict=True))])
    write_shards(root, rels, CAPTIONS)
    pq.write_table(pa.table({"key": [f"{i:06d}" for i in range(N)], "image": [(root / r).read_bytes() for r in rels],
                             "caption": CAPTIONS}), root / "m.parquet", row_group_size=4)
    (root / "m.csv").write_text("file_name,text\n" + "".join(f'{r},"{c}"\n' for r, c in zip(rels, CAPTIONS,
                                                                                           strict=True)))
    return root, rels


def _cfg(tiny_clip, cache: Path, **kw) -> stage.ExtractConfig:
    _, weights = tiny_clip
    kw = {"num_workers": 0, **kw}
    return stage.ExtractConfig(teacher="tiny-clip", weights=str(weights), cache=cache, progress=False, **kw)


def _arrays(path: str) -> dict[str, np.ndarray]:
    g = zarr.open_group(path, mode="r")
    return {name: a[...] for name, a in g.arrays()}


def _same_arrays(a: str, b: str) -> None:
    x, y = _arrays(a), _arrays(b)
    assert sorted(x) == sorted(y)
    for name in x:
        assert x[name].shape == y[name].shape and np.array_equal(x[name], y[name]), name


@pytest.fixture(scope="module")
def jsonl_route(tiny_clip, corpus, tmp_path_factory):
    root, _ = corpus
    cache = tmp_path_factory.mktemp("jsonl-cache")
    return stage.run(_cfg(tiny_clip, cache, data_root=root, manifest=root / "m.jsonl"), log=lambda _: None)


@pytest.mark.parametrize("route", ["webdataset", "parquet", "csv"])
def test_each_format_gives_the_jsonl_routes_stores(tiny_clip, corpus, jsonl_route, tmp_path, route):
    """Into its own empty cache, each format extracts stores with the JSONL route's keys and equal arrays. The
    webdataset route decodes in two DataLoader worker processes (each opens the shards itself)."""
    root, _ = corpus
    if route == "webdataset":
        kw = {"data_root": Path(f"{root}/{PATTERN}"), "dataset": "webdataset", "num_workers": 2}
    else:
        kw = {"data_root": root, "dataset": route, "manifest": root / f"m.{route}"}
    res = stage.run(_cfg(tiny_clip, tmp_path / "cache", **kw), log=lambda _: None)
    assert res.samples == N and res.images == N and res.texts == N and not res.skipped
    for kind in ("image", "text"):
        mine, ref = res.stores[kind], jsonl_route.stores[kind]
        assert not mine.cached and mine.rows_computed == N  # computed here, not found in a shared cache
        assert mine.key == ref.key, kind
        _same_arrays(mine.path, ref.path)
    index = _arrays(res.stores["index"].path)
    assert list(index["image_hash"]) == list(_arrays(jsonl_route.stores["index"].path)["image_hash"])
    if route == "webdataset":  # the json member's other fields are each sample's metadata
        assert json.loads(index["meta_json"][0]) == {"key": "000000", "url": "https://x/0.jpg"}
    if route == "csv":  # no id column: the row number is the sample id
        assert list(index["sample_id"]) == [str(i) for i in range(N)]


def test_a_bad_tar_member_is_one_line_naming_shard_and_member(tiny_clip, corpus, tmp_path, monkeypatch, capsys):
    """Through the CLI, run from the folder holding the shards: ``error: shards/00001.tar:000004.jpg: ...``, exit 2,
    no traceback; with --on-error skip the member is recorded and the other samples extracted."""
    from mad_pipeline.cli.main import main

    root, rels = corpus
    work = tmp_path / "w"
    work.mkdir()
    (work / "img").symlink_to(root / "img")
    write_shards(work, rels, CAPTIONS, bad={4: b"\xff\xd8\xff\xe0 not really a jpeg"})
    _, weights = tiny_clip
    monkeypatch.chdir(work)
    with pytest.raises(SystemExit) as e:
        main(["extract", "--teacher", "tiny-clip", "--weights", str(weights), "--dataset", "webdataset",
              "--data-root", PATTERN, "--num-workers", "0", "--quiet", "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: shards/00001.tar:000004.jpg: ") and "--on-error skip" in lines[0], lines[0]

    res = stage.run(_cfg(tiny_clip, tmp_path / "cache2", data_root=Path(f"{work}/{PATTERN}"), dataset="webdataset",
                         on_error="skip"), log=lambda _: None)
    assert [s["source"] for s in res.skipped] == [f"{work}/shards/00001.tar:000004.jpg"]
    assert res.stores["image"].rows == N  # the bad image keeps its row, marked invalid
    assert int(_arrays(res.stores["image"].path)["valid"].sum()) == N - 1


def test_a_caption_list_is_one_sample_with_every_caption(tiny_clip, corpus, tmp_path):
    """JSONL ``text: [...]``, a webdataset json ``caption: [...]`` and a parquet list column: one sample per image
    whose index row lists every caption's hash; the text store holds each caption once, with the same key."""
    root, rels = corpus
    captions = [[c, f"another caption of photo {i}"] if i % 2 == 0 else c for i, c in enumerate(CAPTIONS)]
    flat = sorted({t for c in captions for t in ([c] if isinstance(c, str) else c)})
    work = tmp_path / "w"
    work.mkdir()
    write_manifest(work / "m.jsonl", [{"id": f"{i:06d}", "image": r, "text": c}
                                      for i, (r, c) in enumerate(zip(rels, captions, strict=True))])
    (work / "img").symlink_to(root / "img")
    write_shards(work, rels, captions)
    pq.write_table(pa.table({"id": [f"{i:06d}" for i in range(N)], "image": rels,
                             "text": [[c] if isinstance(c, str) else c for c in captions]}), work / "m.parquet")
    runs = {
        "jsonl": {"data_root": work, "manifest": work / "m.jsonl"},
        "webdataset": {"data_root": work / "shards", "dataset": "webdataset"},  # a folder of shards works too
        "parquet": {"data_root": work, "manifest": work / "m.parquet", "dataset": "parquet"},
    }
    keys = {}
    for name, kw in runs.items():
        res = stage.run(_cfg(tiny_clip, tmp_path / f"cache-{name}", **kw), log=lambda _: None)
        assert res.samples == N and res.texts == len(flat) == N + 3, name
        index = _arrays(res.stores["index"].path)
        assert index["text_hash"].shape == (N, 2)
        assert [int((row != "").sum()) for row in index["text_hash"]] == [2, 1, 2, 1, 2, 1]
        assert sorted(_arrays(res.stores["text"].path)["text"]) == flat
        keys[name] = (res.stores["text"].key, res.stores["image"].key)
    assert len(set(keys.values())) == 1, keys


def test_an_interrupted_extraction_from_shards_resumes(tiny_clip, corpus, jsonl_route, tmp_path, monkeypatch):
    """A full disk partway through the image store: nothing is published; the same run then resumes from the
    store's shards already written and ends with the JSONL route's arrays. (The failing write is the writer's
    N-th: the first N of these that leaves a finished shard behind is the case.)"""
    root, _ = corpus
    for n in (20, 16, 24, 12, 28, 32):
        cfg = _cfg(tiny_clip, tmp_path / f"cache{n}", data_root=Path(f"{root}/{PATTERN}"), dataset="webdataset",
                   shard_rows=2)
        monkeypatch.setenv(FAIL_ENV, f"{store_writer.WRITE_POINT}@{n}")
        with pytest.raises(StoreError, match="no space left"):
            stage.run(cfg, log=lambda _: None)
        monkeypatch.delenv(FAIL_ENV)
        assert list((tmp_path / f"cache{n}").glob("stores/image/*.zarr")) == []
        res = stage.run(cfg, log=lambda _: None)
        image = res.stores["image"]
        _same_arrays(image.path, jsonl_route.stores["image"].path)
        if image.shards_resumed >= 1:
            assert image.rows_computed < N, image
            return
    pytest.fail("no failing write left a finished image-store shard behind")


def test_shard_patterns_globs_and_folders_name_the_same_shards(corpus):
    root, _ = corpus
    by_brace = load_dataset("webdataset", f"{root}/{PATTERN}")
    by_glob = load_dataset("webdataset", f"{root}/shards/*.tar")
    by_folder = load_dataset("webdataset", root / "shards")
    assert [s.id for s in by_brace.samples] == [f"{i:06d}" for i in range(N)]
    assert by_brace.samples == by_glob.samples == by_folder.samples
    assert by_brace.samples[4].texts == (CAPTIONS[4],) and by_brace.samples[0].texts == (CAPTIONS[0],)
    # what a decode worker receives: the location string plus where its bytes are, not the dataset's index
    loc = by_brace.image_source().where(by_brace.samples[5].image)
    assert loc == f"{root}/shards/00001.tar:000005.jpg" and len(pickle.dumps(loc)) < 400
    assert pickle.loads(pickle.dumps(loc)).read() == (root / "img" / "0005.jpg").read_bytes()


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tf:
        for m, data in members:
            _add(tf, m, data)


JPG = b"\xff\xd8 bytes that are only decoded at extraction"
SECOND = {"duplicate": [("a.jpg", JPG)], "bad-json": [("b.jpg", JPG), ("b.json", b"{oops")],
          "bad-txt": [("b.jpg", JPG), ("b.txt", b"caf\xe9")], "nothing": [("b.cls", b"3")]}


@pytest.mark.parametrize("case, expect", [
    ("missing", "00009.tar: shard not found"),
    ("gz", "compressed shards cannot be read at random"),
    ("duplicate", "01.tar:a.jpg: duplicate sample key 'a' (also in"),
    ("bad-json", "01.tar:b.json: malformed JSON"),
    ("bad-txt", "01.tar:b.txt: not valid UTF-8"),
    ("nothing", "01.tar:b.cls: sample 'b' has neither an image"),
    ("truncated", "01.tar: not a readable tar file (the file ends inside member c.jpg)"),
])
def test_bad_shards_are_one_line_naming_the_shard_or_member(tmp_path, case, expect):
    _tar(tmp_path / "00.tar", [("a.jpg", JPG), ("a.txt", b"ok")])
    if case in SECOND:
        _tar(tmp_path / "01.tar", SECOND[case])
    if case == "truncated":  # a copy cut short: the samples before the cut are kept in skip mode
        _tar(tmp_path / "01.tar", [("b.jpg", JPG), ("b.txt", b"ok"), ("c.jpg", JPG * 100)])
        with open(tmp_path / "01.tar", "r+b") as f:
            f.truncate(3 * 512 + 1024)
    spec = {"missing": f"{tmp_path}/{{00.tar,00009.tar}}", "gz": f"{tmp_path}/00.tar.gz"}.get(
        case, f"{tmp_path}/0{{0..1}}.tar")
    with pytest.raises(InputError) as e:
        load_dataset("webdataset", spec)
    assert expect in str(e.value) and "\n" not in str(e.value), str(e.value)
    if case != "gz":  # skip mode records the place and keeps the rest
        ds = load_dataset("webdataset", spec, on_error="skip")
        assert len(ds.skipped) == 1 and expect.split(": ")[0] in ds.skipped[0].source, ds.skipped
        assert [s.id for s in ds.samples] == (["a", "b"] if case == "truncated" else ["a"])


@pytest.mark.parametrize("fmt, body, expect", [
    ("csv", "name,label\nx,1\n", "no image column"),
    ("csv", "image,caption\n../up.jpg,x\n", "m.csv:2: image path '../up.jpg' escapes the data root"),
    ("csv", "image,caption\na.jpg,x\nb.jpg,y\n,\n", "m.csv:4: row has neither an image nor a caption"),
    ("csv", "id,image,text\n1,a.jpg,x\n1,b.jpg,y\n", "m.csv:3: duplicate id '1'"),
    ("parquet", {"image": [None, "b.jpg"], "caption": [None, "x"]}, "m.parquet:row 0: row has neither"),
    ("parquet", {"image": ["a.jpg"], "caption": [[3]]}, "m.parquet:row 0: field 'caption' must be a string or a list"),
    ("parquet", {"image": [1, 2]}, "column 'image' is int64"),
])
def test_bad_tables_name_file_and_row(tmp_path, fmt, body, expect):
    path = tmp_path / f"m.{fmt}"
    if fmt == "csv":
        path.write_text(body)
    else:
        pq.write_table(pa.table(body), path)
    with pytest.raises(InputError) as e:
        load_dataset(fmt, tmp_path, manifest=path)
    assert expect in str(e.value), str(e.value)


def test_table_columns_can_be_named(tmp_path):
    (tmp_path / "m.csv").write_text("uid,picture,alt\n7,p.jpg,a red car\n")
    ds = load_dataset("csv", tmp_path, manifest=tmp_path / "m.csv",
                      columns={"id": "uid", "image": "picture", "text": "alt"})
    assert [(s.id, s.image, s.texts) for s in ds.samples] == [("7", "p.jpg", ("a red car",))]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_long_member_names_and_pax_headers_are_read_too(tmp_path, fmt):
    """Names over 100 characters: a ustar prefix field (parsed here), or pax / GNU long-name headers (those shards go
    through the tarfile module); the same samples and bytes either way."""
    key = "deep/" + "d" * 120 + "/sample-0"
    with tarfile.open(tmp_path / "00.tar", "w", format=fmt) as tf:
        _add(tf, f"{key}.jpg", JPG)
        _add(tf, f"{key}.txt", "légende\n".encode())
    ds = load_dataset("webdataset", tmp_path / "00.tar")
    assert [(s.id, s.texts) for s in ds.samples] == [(key, ("légende",))]
    assert ds.image_source().where(ds.samples[0].image).read() == JPG
