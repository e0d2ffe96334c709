"""Layered caches: team B, with an empty local cache and team A's cache as a read-only shared one, runs the same
`mad extract` and computes nothing — through a shared directory, a real `python -m http.server` and a real
S3-compatible server (moto) on 127.0.0.1. The shared location is never written to; a pulled copy works offline.
Also `mad store push` / `pull` / `gc`."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES, last_json, mad, mad_inproc

from mad_pipeline.cache import Cache
from mad_pipeline.store.reader import open_store
from mad_pipeline.store.verify import verify_store


@pytest.fixture(scope="module")
def team_a(tiny_clip, tmp_path_factory):
    """Team A's cache, built by `mad extract` (image, text and index stores, 2 rows per shard), in this process."""
    cfg_file, weights = tiny_clip
    base = tmp_path_factory.mktemp("sharing")
    env = {"MAD_MODEL_CONFIGS": str(cfg_file), "MAD_SHARED_CACHE": "", "MAD_PULL": ""}
    args = ["extract", "--teacher", "tiny-clip", "--weights", str(weights), "--manifest",
            str(EXAMPLES / "manifest.jsonl"), "--data-root", str(EXAMPLES), "--shard-rows", "2", "--json"]
    res = last_json(mad_inproc(*args, env={**env, "MAD_CACHE": str(base / "team-a")}))
    assert not any(s["cached"] for s in res["stores"].values())
    return {"cache": base / "team-a", "result": res, "env": env, "args": args, "base": base}


def _team_b(team_a, cache: Path, shared: str, subprocess: bool = False, **extra_env) -> dict:
    """Team B's `mad extract`: in this process, or (``subprocess=True``) the console script in a fresh process,
    where fsspec reads ``FSSPEC_*`` variables at import."""
    run = mad if subprocess else mad_inproc
    return last_json(run(*team_a["args"], env={**team_a["env"], "MAD_CACHE": str(cache), "MAD_SHARED_CACHE": shared,
                                               **extra_env}))


def _assert_served(res: dict, team_a: dict, source: str, local: Path | None = None) -> None:
    """Every store came from ``source`` with no extraction; B's local cache holds no store."""
    a = team_a["result"]["stores"]
    assert set(res["stores"]) == set(a)
    for kind, s in res["stores"].items():
        assert s["key"] == a[kind]["key"]
        assert s["cached"] and s["rows_computed"] == 0 and s["shards_computed"] == 0, (kind, s)
        assert s["source"] == source, (kind, s["source"])
    if local is not None:
        assert not (local / "stores").exists() and not (local / "partial").exists()


def _assert_same_features(res: dict, team_a: dict) -> None:
    for kind, s in res["stores"].items():
        mine, theirs = open_store(s["path"]), open_store(team_a["result"]["stores"][kind]["path"])
        assert mine.manifest == theirs.manifest
        assert mine.array_names() == theirs.array_names()
        for name in theirs.array_names():
            np.testing.assert_array_equal(mine[name][:], theirs[name][:], err_msg=f"{kind}/{name}")


def _snapshot(root: Path) -> dict:
    """Every file and directory with its size and mtime: any write, create or delete below ``root`` changes it."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in [root, *root.rglob("*")]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _server(cmd: list[str], url: str, log: Path, env: dict | None = None):
    """Start a server process, wait (bounded) until ``url`` answers, and always stop it."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _http_server(directory: Path, log: Path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with _server([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                  str(directory)], url + "/", log):
        yield url


# ---------------------------------------------------------------------- (a) shared directory
def test_shared_directory(team_a, tmp_path):
    before = _snapshot(team_a["cache"])
    local = tmp_path / "team-b"
    # several shared caches, separated by ';' and whitespace; the first does not exist
    res = _team_b(team_a, local, f"{tmp_path / 'nowhere'} ; {team_a['cache']}")
    _assert_served(res, team_a, f"shared:{team_a['cache']}", local)
    _assert_same_features(res, team_a)
    assert _snapshot(team_a["cache"]) == before  # (d) never written to


# ---------------------------------------------------------------------- (b) http + (e) pull, then offline
def test_http_static_server_in_place_then_pulled_and_offline(team_a, tmp_path):
    pytest.importorskip("aiohttp")
    import zarr

    before = _snapshot(team_a["cache"])
    log = tmp_path / "http.log"
    with _http_server(team_a["cache"], log) as url:
        image_url = f"{url}/stores/image/{team_a['result']['stores']['image']['key']}.zarr"
        plain = zarr.open_group(image_url, mode="r")  # plain zarr + fsspec's HTTPFileSystem, known keys only
        assert dict(plain.attrs)["mad"]["kind"] == "image" and plain["tokens"].shape == (6, 17, 64)

        local = tmp_path / "team-b"
        res = _team_b(team_a, local, url)
        _assert_served(res, team_a, f"shared:{url}", local)
        assert res["stores"]["image"]["path"] == image_url
        _assert_same_features(res, team_a)  # opened in place over HTTP

        rep = verify_store(image_url)  # every chunk's checksum, over HTTP
        assert rep.ok and rep.chunk_files == 16, [p.describe() for p in rep.problems]  # 5 arrays x 3 + visual_proj

        pulled = tmp_path / "team-c"
        res = _team_b(team_a, pulled, url, MAD_PULL="1")
        _assert_served(res, team_a, f"pulled:{url}")
        assert all(Path(s["path"]).is_relative_to(pulled / "stores") for s in res["stores"].values())
    requests = [line for line in log.read_text().splitlines() if '"' in line]
    assert requests and all('"GET ' in line for line in requests), requests[:5]  # reads only
    assert _snapshot(team_a["cache"]) == before

    # (e) the server is gone: the pulled copy serves everything, without even loading the teacher
    again = _team_b(team_a, pulled, url)
    _assert_served(again, team_a, "local")
    assert again["teacher_loaded"] is False
    _assert_same_features(again, team_a)


def test_http_server_without_range_support_reads_partial_shards(tmp_path):
    """`python -m http.server` ignores Range headers; partial reads of a multi-chunk shard still come out right."""
    pytest.importorskip("aiohttp")
    import zarr
    import zarr.codecs as zc

    g = zarr.open_group(str(tmp_path / "www" / "s.zarr"), mode="w")
    a = g.create_array("x", shape=(8, 3), chunks=(2, 3), shards=(4, 3), dtype="float32",
                       compressors=[zc.Crc32cCodec()], dimension_names=["row", "col"])
    a[:] = np.arange(24, dtype="float32").reshape(8, 3)
    g.attrs["mad"] = {"kind": "test", "cache_key": "0" * 64}
    with pytest.warns(UserWarning):
        zarr.consolidate_metadata(str(tmp_path / "www" / "s.zarr"))
    with _http_server(tmp_path / "www", tmp_path / "http.log") as url:
        st = open_store(f"{url}/s.zarr")
        assert st["x"][2:3].tolist() == [[6, 7, 8]] and st["x"][5:7].tolist() == [[15, 16, 17], [18, 19, 20]]


# ---------------------------------------------------------------------- (c) s3 (moto's standalone server)
@contextlib.contextmanager
def moto_server(tmp_path: Path):
    """A real S3-compatible server (moto) on 127.0.0.1; yields (endpoint, credential environment)."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
             "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    with _server([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], endpoint + "/",
                 tmp_path / "moto.log"):
        yield endpoint, creds


def test_s3_compatible_server_push_then_in_place_and_pull(team_a, tmp_path, monkeypatch):
    with moto_server(tmp_path) as (endpoint, creds):
        for k, v in {**creds, "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(k, v)
        import s3fs
        from mad_pipeline.stages import store_ls, store_share

        fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
        fs.mkdir("team-bucket")
        # publish every store of A's cache (the endpoint through botocore's AWS_ENDPOINT_URL) ...
        pushed = last_json(mad("store", "push", str(team_a["cache"]), "s3://team-bucket/cache", "--json",
                               env={**creds, "AWS_ENDPOINT_URL": endpoint}))
        assert sorted(p["kind"] for p in pushed) == ["image", "index", "text"] and not any(p["skipped"] for p in pushed)
        again = store_share.push(store_share.PushConfig(source=str(team_a["cache"]), dest="s3://team-bucket/cache"))
        assert len(again) == 3 and all(t.skipped for t in again)  # already published: nothing uploaded
        objects = {k: (v["ETag"], v["LastModified"]) for k, v in fs.find("team-bucket", detail=True).items()}
        assert any(k.endswith(".zarr/zarr.json") for k in objects)

        # ... team B reads them in place (the endpoint through fsspec's FSSPEC_S3_ENDPOINT_URL)
        local = tmp_path / "team-b"
        b_env = {**creds, "FSSPEC_S3_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL": ""}
        res = _team_b(team_a, local, "s3://team-bucket/cache", subprocess=True, **b_env)
        _assert_served(res, team_a, "shared:s3://team-bucket/cache", local)
        _assert_same_features(res, team_a)
        ls = store_ls.run(store_ls.StoreLsConfig(cache="s3://team-bucket/cache"))
        assert sorted(r["key"] for r in ls) == sorted(s["key"] for s in team_a["result"]["stores"].values())

        # mad store pull by key prefix, verified, into a third cache
        key = team_a["result"]["stores"]["text"]["key"]
        pulled = last_json(mad("store", "pull", key[:12], "--from", "s3://team-bucket/cache", "--verify", "--json",
                               env={**b_env, "MAD_CACHE": str(tmp_path / "team-c")}))
        assert pulled["kind"] == "text" and pulled["key"] == key and not pulled["skipped"]
        assert Cache(tmp_path / "team-c").lookup("text", key) is not None

        # (d) nothing was written to the bucket by the readers
        assert {k: (v["ETag"], v["LastModified"]) for k, v in fs.find("team-bucket", detail=True).items()} == objects

        # a store whose root zarr.json (the manifest) is missing is never served
        from mad_pipeline.store.location import find_in

        index_key = team_a["result"]["stores"]["index"]["key"]
        assert find_in("s3://team-bucket/cache", "index", index_key) is not None
        fs.rm(f"team-bucket/cache/stores/index/{index_key}.zarr/zarr.json")
        assert find_in("s3://team-bucket/cache", "index", index_key) is None


def test_http_location_is_read_only_for_push(team_a):
    from mad_pipeline.stages import store_share

    from mad_pipeline.errors import StoreError

    with pytest.raises(StoreError, match="read-only"):
        store_share.push(store_share.PushConfig(source=str(team_a["cache"]), dest="http://127.0.0.1:9/cache"))


# ---------------------------------------------------------------------- gc
def test_gc_removes_incomplete_and_unused_never_locked(team_a, tmp_path):
    from mad_pipeline.stages import store_share

    cache_dir = tmp_path / "cache"
    shutil.copytree(team_a["cache"], cache_dir, ignore=shutil.ignore_patterns("locks"))
    cache = Cache(cache_dir)
    keys = {k: s["key"] for k, s in team_a["result"]["stores"].items()}
    # an interrupted build nobody holds, one a live process holds, a store dir without a manifest
    stale = cache.partial_path("image", "a" * 64)
    busy = cache.partial_path("image", "b" * 64)
    for p in (stale, busy):
        (p / "tokens").mkdir(parents=True)
        (p / "tokens" / "zarr.json").write_text("{}")
    no_manifest = cache.store_path("text", "c" * 64)
    no_manifest.mkdir(parents=True)
    (no_manifest / "zarr.json").write_text('{"attributes": {}}')

    with cache.lock("b" * 64):
        dry = store_share.gc(store_share.GcConfig(cache=cache_dir, dry_run=True))
        assert {Path(r["path"]) for r in dry.removed} == {stale, no_manifest} and stale.exists()
        res = store_share.gc(store_share.GcConfig(cache=cache_dir))
        assert {Path(r["path"]) for r in res.removed} == {stale, no_manifest}
        assert [Path(r["path"]) for r in res.kept] == [busy]
        assert not stale.exists() and not no_manifest.exists() and busy.exists()

        # --older-than: the image store was just used (looked up); index and text were not, and text is locked
        old = time.time() - 10 * 86400
        for kind, key in keys.items():
            os.utime(cache.store_path(kind, key) / "zarr.json", (old, old))
        assert cache.find("image", keys["image"]) is not None  # marks it used
        with cache.lock(keys["text"]):
            res = store_share.gc(store_share.GcConfig(cache=cache_dir, older_than_days=5))
        assert [r["key"] for r in res.removed] == [keys["index"]]
        assert {r["key"] for r in res.kept} == {"b" * 64, keys["text"]}
    assert cache.lookup("image", keys["image"]) and cache.lookup("text", keys["text"])
    assert cache.lookup("index", keys["index"]) is None

    out = mad("store", "gc", "--cache", str(cache_dir)).stdout
    assert "removed 1 item(s)" in out and str(busy) in out  # the busy partial, now that nobody holds it
