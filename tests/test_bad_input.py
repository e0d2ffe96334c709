"""Bad input: clear one-line errors naming the file and line, or recorded skips; never a
traceback, never a published partial store."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import EXAMPLES, last_json, mad, mad_inproc, write_manifest
from mad_pipeline.stages import extract as stage
from PIL import Image

from mad_pipeline.errors import InputError, MadError, TeacherError


def _jpeg(**kw) -> bytes:
    buf = io.BytesIO()
    Image.open(EXAMPLES / "images" / "coffee.jpg").convert(kw.pop("mode", "RGB")).save(buf, "JPEG", **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    good = _jpeg()
    (root / "good.jpg").write_bytes(good)
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "cmyk.jpg").write_bytes(_jpeg(mode="CMYK"))
    Image.open(EXAMPLES / "images" / "coffee.jpg").convert("L").save(root / "grey.png")
    Image.open(EXAMPLES / "images" / "coffee.jpg").convert("RGBA").save(root / "rgba.png")
    Image.new("1", (12000, 12000)).save(root / "bomb.png")  # 144 Mpixel, a few kB on disk
    return root


GOOD = [("good", "good.jpg"), ("cmyk", "cmyk.jpg"), ("grey", "grey.png"), ("rgba", "rgba.png")]
BAD_IMAGES = {"corrupt.jpg": "not a recognised image", "truncated.jpg": "truncated",
              "empty.jpg": "empty file", "bomb.png": "too large", "missing.jpg": "file not found"}


def _records(names):
    return [{"id": stem, "image": f, "text": f"an image called {stem}"} for stem, f in names]


def _cfg(tiny_clip, root, manifest, cache, **kw):
    _, weights = tiny_clip
    return stage.ExtractConfig(teacher="tiny-clip", weights=str(weights), data_root=root, manifest=manifest,
                               cache=cache, num_workers=0, progress=False, **kw)


def _published(cache: Path) -> list[Path]:
    return list(cache.glob("stores/*/*.zarr"))


@pytest.mark.parametrize("bad", sorted(BAD_IMAGES))
def test_each_bad_image_fails_with_its_file_named_and_nothing_published(tiny_clip, corpus, tmp_path, bad):
    m = write_manifest(tmp_path / "m.jsonl", _records(GOOD + [("bad", bad)]))
    cache = tmp_path / "cache"
    with pytest.raises(InputError) as e:
        stage.run(_cfg(tiny_clip, corpus, m, cache), log=lambda _: None)
    msg = str(e.value)
    assert "\n" not in msg and bad in msg and BAD_IMAGES[bad] in msg, msg
    assert _published(cache) == []


@pytest.mark.parametrize("line, expect", [
    (b'{"id": "x", "image": "good.jpg", "text": "ok"', "malformed JSON"),
    (b'{"id": "x", "image": "../outside.jpg", "text": "escape"}', "escapes the data root"),
    (b'{"id": "x", "image": "/etc/passwd", "text": "absolute"}', "absolute"),
    (b'{"id": "x", "image": "good.jpg", "text": "caf\xe9 latin-1"}', "not valid UTF-8"),
    (b'{"image": "good.jpg", "text": "no id"}', "missing field 'id'"),
    (b'["not", "an", "object"]', "expected a JSON object"),
])
def test_bad_manifest_lines_name_file_and_line(tiny_clip, corpus, tmp_path, line, expect):
    m = tmp_path / "m.jsonl"
    m.write_bytes(b'{"id": "a", "image": "good.jpg", "text": "fine"}\n\n' + line + b"\n")
    with pytest.raises(InputError) as e:
        stage.run(_cfg(tiny_clip, corpus, m, tmp_path / "cache"), log=lambda _: None)
    assert str(e.value).startswith(f"{m}:3: ") and expect in str(e.value), str(e.value)
    assert _published(tmp_path / "cache") == []


def test_user_mistakes_are_one_clear_error(tiny_clip, corpus, tmp_path):
    m = write_manifest(tmp_path / "m.jsonl", _records(GOOD))
    with pytest.raises(InputError, match="--data-root .*: not a directory"):
        stage.run(_cfg(tiny_clip, tmp_path / "nope", m, tmp_path / "c"))
    with pytest.raises(InputError, match="--manifest .*: file not found"):
        stage.run(_cfg(tiny_clip, corpus, tmp_path / "nope.jsonl", tmp_path / "c"))
    with pytest.raises(TeacherError, match="unknown teacher"):
        stage.run(stage.ExtractConfig(teacher="clip-vit-h", data_root=corpus, manifest=m, progress=False))
    with pytest.raises(InputError, match="--on-error"):
        stage.run(_cfg(tiny_clip, corpus, m, tmp_path / "c", on_error="ignore"))
    assert issubclass(InputError, MadError)


def test_cli_prints_one_line_and_exits_2_without_traceback(tiny_clip, corpus, tmp_path):
    cfg_file, weights = tiny_clip
    env = {"MAD_MODEL_CONFIGS": str(cfg_file), "MAD_CACHE": str(tmp_path / "cache")}
    m = tmp_path / "m.jsonl"
    m.write_bytes(b'{"id": "a", "image": "good.jpg", "text": "fine"}\n{"id": "b", "image": "truncated.jpg"}\n')
    stderr = []
    # the console script in its own process, then the same entry point in this process
    for run, args in ((mad, ["--teacher", "tiny-clip", "--weights", str(weights), "--manifest", str(m)]),
                      (mad_inproc, ["--teacher", "no-such-teacher", "--manifest", str(m)])):
        p = run("extract", *args, "--data-root", str(corpus), "-q", env=env, check=False)
        assert p.returncode == 2, p.stderr
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in p.stderr, p.stderr
        stderr.append(p.stderr)
    assert "truncated.jpg" in stderr[0]
    assert _published(tmp_path / "cache") == []


def test_skip_mode_records_every_bad_input_and_keeps_the_good(tiny_clip, corpus, tmp_path):
    cfg_file, weights = tiny_clip
    m = tmp_path / "m.jsonl"
    lines = [json.dumps(r).encode() for r in _records(GOOD + [(Path(b).stem, b) for b in sorted(BAD_IMAGES)])]
    lines += [b'{"id": "json", "image": "good.jpg"', b'{"id": "esc", "image": "../x.jpg", "text": "t"}',
              b'{"id": "utf", "image": "good.jpg", "text": "\xff\xfe"}']
    m.write_bytes(b"\n".join(lines) + b"\n")
    env = {"MAD_MODEL_CONFIGS": str(cfg_file), "MAD_CACHE": str(tmp_path / "cache")}
    res = last_json(mad_inproc("extract", "--teacher", "tiny-clip", "--weights", str(weights), "--manifest", str(m),
                               "--data-root", str(corpus), "--on-error", "skip", "--json", env=env))
    reasons = {(s["sample_id"] or Path(s["source"]).name): s["reason"] for s in res["skipped"]}
    n_good_bad = len(GOOD) + len(BAD_IMAGES)
    assert "malformed JSON" in reasons[f"m.jsonl:{n_good_bad + 1}"]  # unparseable: named by file and line
    assert "escapes" in reasons["esc"] and "UTF-8" in reasons["utf"]
    assert "file not found" in reasons["missing"]
    for name in ("corrupt.jpg", "truncated.jpg", "empty.jpg", "bomb.png"):
        assert BAD_IMAGES[name] in reasons[name], reasons
    g = zarr.open_group(res["stores"]["image"]["path"], mode="r")
    valid = dict(zip(g["image_hash"][:], g["valid"][:], strict=True))
    from mad_pipeline.hashing import sha256_file

    for _, f in GOOD:  # CMYK, greyscale and RGBA are converted to RGB and extracted
        assert valid[sha256_file(corpus / f)], f
    for f in ("corrupt.jpg", "truncated.jpg", "empty.jpg", "bomb.png"):
        assert not valid[sha256_file(corpus / f)], f
    errs = dict(g.attrs)["mad"]["errors"]
    assert len(errs) == 4 and all(e["reason"] for e in errs)
    tokens = g["tokens"][:]
    assert np.all(tokens[~g["valid"][:]] == 0)
    idx = zarr.open_group(res["stores"]["index"]["path"], mode="r")
    assert "missing" not in set(idx["sample_id"][:])  # samples whose file is missing are not indexed
    assert len(dict(idx.attrs)["mad"]["skipped"]) == 4  # 3 manifest lines + the missing file


@pytest.mark.parametrize("case", ["all-missing", "all-malformed", "all-corrupt"])
def test_skip_mode_with_every_input_unreadable_publishes_valid_stores(tiny_clip, corpus, tmp_path, case):
    """Nothing readable at all: the run still ends cleanly with every skip recorded, publishes valid (empty) stores,
    leaves nothing half-made, and a rerun is served from the cache."""
    cfg_file, weights = tiny_clip
    m = tmp_path / "m.jsonl"
    if case == "all-missing":
        write_manifest(m, _records([("a", "missing.jpg"), ("b", "gone/also-missing.jpg")]))
    elif case == "all-malformed":
        m.write_bytes(b'{"id": "a", "image": "good.jpg"\n{"id": "b", "image": "../x.jpg", "text": "t"}\n')
    else:
        write_manifest(m, _records([("a", "corrupt.jpg"), ("b", "empty.jpg")]))
    cache = tmp_path / "cache"
    cfg = _cfg(tiny_clip, corpus, m, cache, on_error="skip")
    if case == "all-missing":  # through the CLI: no traceback, exit 0
        env = {"MAD_MODEL_CONFIGS": str(cfg_file), "MAD_CACHE": str(cache)}
        p = mad_inproc("extract", "--teacher", "tiny-clip", "--weights", str(weights), "--manifest", str(m),
                       "--data-root", str(corpus), "--on-error", "skip", "--num-workers", "0", "--json", env=env,
                       check=False)
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
        res = last_json(p)
    else:
        res = stage.run(cfg, log=lambda _: None).as_dict()
    assert len(res["skipped"]) == 2, res["skipped"]
    assert not list(cache.glob("partial/*/*"))  # nothing half-made for the next run to "resume"
    for kind, s in res["stores"].items():
        g = zarr.open_group(s["path"], mode="r")
        man = dict(g.attrs)["mad"]
        assert man["cache_key"] == s["key"] and man["n_rows"] == s["rows"], kind
        constants = set(man.get("constants", ()))  # e.g. the image teacher's visual_proj: not one row per input
        assert all(arr.shape[0] == s["rows"] for name, arr in g.arrays() if name not in constants), kind
    image = zarr.open_group(res["stores"]["image"]["path"], mode="r")
    index = zarr.open_group(res["stores"]["index"]["path"], mode="r")
    if case == "all-corrupt":  # rows kept with valid = false, the reasons in the image manifest
        assert image["valid"].shape == (2,) and not image["valid"][:].any()
        assert len(dict(image.attrs)["mad"]["errors"]) == 2
    else:  # no image at all: an empty image store and an empty index that lists the skips
        assert image["tokens"].shape[0] == 0 and index["sample_id"].shape == (0,)
        assert len(dict(index.attrs)["mad"]["skipped"]) == 2
    again = stage.run(cfg, log=lambda _: None).as_dict()
    assert all(s["cached"] for s in again["stores"].values()) and again["skipped"] == res["skipped"]
