"""Shared caches that misbehave, against real HTTP servers on 127.0.0.1 (a small ``http.server`` in a thread that
serves a real store with chosen answers swapped in, and a socket that accepts and never answers):

- lying metadata (node names with ``..`` or absolute paths, a chunk-key separator that climbs out) never makes a
  pull write outside the local cache's scratch directory, over HTTP, from a shared directory, with ``mad store pull``
  and with ``MAD_PULL=1``; nothing is published;
- a trickling server, an endless body and a server that never answers are cut off by the configurable deadline and
  size limits, and a dead cache is asked once per run, not once per lookup;
- ``mad store verify`` on HTTP 403 / 500 is one error line (exit 2);
- pulls verify by default: a flipped byte, a truncated shard or a lying manifest is never published (``--no-verify``
  and ``MAD_PULL_VERIFY=0`` opt out);
- http(s) and s3 work in the default install, and a missing library is one line naming the exact extra.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES, REPO, last_json
from mad_pipeline.stages import store_share

from mad_pipeline.cache import Cache
from mad_pipeline.errors import StoreError
from mad_pipeline.store import filesystems
from mad_pipeline.store.location import find_in, store_rel

PWNED = b"PWNED by a lying shared cache"
LIE_KEY = "ab" * 32


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    """Every host asked afresh; the default limits and pull verification."""
    for name in ("MAD_SHARED_TIMEOUT", "MAD_SHARED_MIN_RATE", "MAD_SHARED_MAX_BYTES", "MAD_PULL_VERIFY"):
        monkeypatch.delenv(name, raising=False)
    forget = getattr(filesystems, "forget_unreachable", lambda: None)
    forget()
    yield
    forget()


@pytest.fixture()
def fast(monkeypatch):
    """Deadlines short enough for a test (also inherited by `mad` subprocesses): 0.5 s to answer, then 2000 B/s."""
    monkeypatch.setenv("MAD_SHARED_TIMEOUT", "0.5")
    monkeypatch.setenv("MAD_SHARED_MIN_RATE", "2000")


# ---------------------------------------------------------------------- servers
class Hostile:
    """A real HTTP/1.1 server in a thread. GETs of a path in ``routes`` are answered by that function (given the
    request handler); other paths are served from ``root`` (404 when absent). Counts connections."""

    def __init__(self, root: Path | None = None):
        self.root, self.routes, self.connections, self.stop = root, {}, 0, threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            hostile = outer

            def do_GET(self):  # noqa: N802
                path = self.path.split("?")[0]
                (outer.routes.get(path) or outer.serve_file)(self)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                got = super().get_request()
                outer.connections += 1
                return got

            def handle_error(self, request, client_address):
                pass  # a client that hangs up (as the bounded client does) is not news; the default prints to stderr

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def serve_file(self, h) -> None:
        p = (self.root / h.path.lstrip("/")) if self.root is not None else None
        if p is None or not p.is_file():
            send(h, b"not found", 404)
        else:
            send(h, p.read_bytes())

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def send(h, body: bytes, status: int = 200) -> None:
    h.send_response(status)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def trickle(h, declared: int = 10_000, every: float = 0.2, at_most: float = 5.0) -> None:
    """Announce ``declared`` bytes, then send one byte every ``every`` s (each byte resets a socket read timeout),
    for at most ``at_most`` s, then hang up."""
    h.send_response(200)
    h.send_header("Content-Length", str(declared))
    h.end_headers()
    t0 = time.time()
    with contextlib.suppress(OSError):
        while time.time() - t0 < at_most and not h.hostile.stop.is_set():
            h.wfile.write(b"{")
            h.wfile.flush()
            time.sleep(every)
    h.close_connection = True


def endless(h, sent: list, at_most: int = 128 << 20) -> None:
    """A body with no length that goes on (up to ``at_most`` bytes), as fast as the client takes it."""
    h.send_response(200)
    h.send_header("Connection", "close")
    h.end_headers()
    block = b" " * (64 << 10)
    with contextlib.suppress(OSError):
        while sent[0] < at_most:
            h.wfile.write(block)
            sent[0] += len(block)
    h.close_connection = True


@contextlib.contextmanager
def silent_server(hold: float = 3.0):
    """A socket that accepts connections and never answers (each is closed after ``hold`` s); yields
    (url, accepted), accepted being a one-element list counting connections."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.1)
    accepted, stop, held = [0], threading.Event(), []

    def loop():
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = sock.accept()
                accepted[0] += 1
                held.append((conn, time.time()))
            for conn, t in list(held):
                if time.time() - t > hold:
                    conn.close()
                    held.remove((conn, t))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join(5)
        for conn, _ in held:
            conn.close()
        sock.close()


# ---------------------------------------------------------------------- a real published store to serve
@pytest.fixture(scope="module")
def www(tmp_path_factory) -> dict:
    """A cache root holding one real published image store (6 rows, 2 rows per shard, so several chunk files)."""
    from mad_pipeline.store.layout import FORMAT_VERSION, image_arrays
    from mad_pipeline.store.writer import StoreWriter

    root = tmp_path_factory.mktemp("www")
    key = "cd" * 32
    writer = StoreWriter(root / "partial" / "image" / f"{key}.zarr", "image", 6, image_arrays(5, 8, 4), key,
                         shard_rows=2)
    rng = np.random.default_rng(0)
    for i in range(writer.n_shards):
        lo, hi = writer.shard_range(i)
        n = hi - lo
        writer.write_shard(i, {"image_hash": np.array([f"{j:064x}" for j in range(lo, hi)]),
                               "tokens": rng.standard_normal((n, 5, 8)).astype("float16"),
                               "pooled": rng.standard_normal((n, 4)).astype("float16"),
                               "crop_box": np.zeros((n, 4), "float32"), "valid": np.ones(n, bool)})
    man = {"format_version": FORMAT_VERSION, "kind": "image", "cache_key": key, "n_rows": 6,
           "geometry": {"num_tokens": 5, "width": 8, "embed_dim": 4}}
    store = writer.finalize(man, root / store_rel("image", key))
    return {"root": root, "key": key, "store": Path(store)}


def _served_copy(www: dict, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the served cache root to damage; (root, store directory)."""
    root = tmp_path / "www"
    shutil.copytree(www["root"], root)
    return root, root / store_rel("image", www["key"])


def _nothing_published(cache_dir: Path) -> None:
    """No store under stores/, no pull scratch directory left under partial/."""
    assert not [p for p in (cache_dir / "stores").rglob("*") if p.is_file()]
    assert not [p for p in (cache_dir / "partial").rglob("*") if ".pull-" in p.name]


# ---------------------------------------------------------------------- lying metadata
def _lying_root(node: str, separator: str = "/") -> bytes:
    array = {"zarr_format": 3, "node_type": "array", "shape": [1], "data_type": "uint8",
             "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1]}},
             "chunk_key_encoding": {"name": "default", "configuration": {"separator": separator}},
             "codecs": [{"name": "bytes"}], "fill_value": 0, "attributes": {}, "dimension_names": ["row"]}
    return json.dumps({"zarr_format": 3, "node_type": "group",
                       "attributes": {"mad": {"kind": "image", "cache_key": LIE_KEY, "n_rows": 1, "format_version": 1}},
                       "consolidated_metadata": {"kind": "inline", "must_understand": False,
                                                 "metadata": {node: array}}}).encode()


def cli(capsys, *args: str) -> subprocess.CompletedProcess:
    """The real `mad` entry point, in this process (quicker than a subprocess): its exit code and output."""
    from mad_pipeline.cli.main import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["mad", *args], code, out.out, out.err)


def _error_line(proc) -> str:
    """The one ``error: ...`` line of a failed `mad` (exit 2, no traceback; progress lines may come before it)."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and sum(x.startswith("error: ") for x in lines) == 1, proc.stderr
    return lines[-1]


def _pwned_files(where: Path) -> list[Path]:
    return [p for p in where.rglob("*") if p.is_file() and p.read_bytes() == PWNED]


@contextlib.contextmanager
def lying_server(node: str, separator: str = "/"):
    """Serves a 'complete' store whose metadata names ``node`` (and every other key answers PWNED)."""
    with Hostile() as srv:
        root_doc = _lying_root(node, separator)
        srv.routes[f"/{store_rel('image', LIE_KEY)}/zarr.json"] = lambda h: send(h, root_doc)
        srv.serve_file = lambda h: send(h, PWNED)
        yield srv


def _lies(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """Node name and separator of each lie, each aimed at a directory of tmp_path outside the local cache."""
    return {"parent": ("../../../../escaped", "/"), "absolute": (str(tmp_path / "absolute"), "/"),
            "separator": ("x", "/../../../../../../sep-")}


@pytest.mark.parametrize("lie", ["parent", "absolute", "separator"])
def test_lying_node_names_never_write_outside_the_cache(lie, tmp_path):
    node, sep = _lies(tmp_path)[lie]
    cache_dir = tmp_path / "cache"
    with lying_server(node, sep) as srv, pytest.raises(StoreError, match="unsafe key|unusable metadata"):
        store_share.pull(store_share.PullConfig(key=LIE_KEY, sources=(srv.url,), cache=cache_dir))
    assert _pwned_files(tmp_path) == []
    _nothing_published(cache_dir)


def test_lying_store_with_mad_pull_and_the_cli(tmp_path, monkeypatch, capsys):
    node, sep = _lies(tmp_path)["parent"]
    with lying_server(node, sep) as srv:
        cache = Cache(tmp_path / "pull-cache", shared=(srv.url,), pull=True)  # what MAD_PULL=1 does in a run
        with pytest.raises(StoreError, match="unsafe key"):
            cache.find("image", LIE_KEY)
        monkeypatch.setenv("MAD_CACHE", str(tmp_path / "cli-cache"))
        proc = cli(capsys, "store", "pull", LIE_KEY, "--from", srv.url)
    assert "unsafe key" in _error_line(proc)
    assert _pwned_files(tmp_path) == []
    _nothing_published(tmp_path / "pull-cache")
    _nothing_published(tmp_path / "cli-cache")


def test_lying_store_in_a_shared_directory(tmp_path):
    """The payload sits where the lie points to read from; the copy must not write where it points to write."""
    shared = tmp_path / "shared"
    store = shared / store_rel("image", LIE_KEY)
    store.mkdir(parents=True)
    node = "../../../../evil"  # read: tmp_path/evil; written (before the fix): under the cache, outside the store
    (store / "zarr.json").write_bytes(_lying_root(node))
    payload = tmp_path / "evil"
    payload.mkdir()
    (payload / "zarr.json").write_bytes(PWNED)
    (payload / "c").mkdir()
    (payload / "c" / "0").write_bytes(PWNED)
    cache_dir = tmp_path / "cache"
    with pytest.raises(StoreError, match="unsafe key"):
        store_share.pull(store_share.PullConfig(key=LIE_KEY, sources=(str(shared),), cache=cache_dir))
    assert _pwned_files(cache_dir) == []
    _nothing_published(cache_dir)


# ---------------------------------------------------------------------- deadlines, size limits, dead caches
def test_trickling_server_is_cut_off_at_the_deadline(fast, tmp_path):
    with Hostile() as srv:
        srv.routes[f"/{store_rel('image', LIE_KEY)}/zarr.json"] = trickle
        t0 = time.monotonic()
        with pytest.raises(OSError, match="slower than"):
            find_in(srv.url, "image", LIE_KEY)
        took = time.monotonic() - t0
        assert took < 2.5, took  # MAD_SHARED_TIMEOUT=0.5 plus the few bytes at 2000 B/s; the server goes on for 5 s

        logs: list[str] = []
        t0 = time.monotonic()
        assert Cache(tmp_path / "local", shared=(srv.url,)).locate("image", "cd" * 32, log=logs.append) is None
        assert time.monotonic() - t0 < 0.3 and "unreachable" in logs[0], logs  # remembered: not asked again


def test_endless_body_is_cut_off_at_the_size_limit(monkeypatch):
    monkeypatch.setenv("MAD_SHARED_MAX_BYTES", str(1 << 20))
    sent = [0]
    with Hostile() as srv:
        srv.routes[f"/{store_rel('image', LIE_KEY)}/zarr.json"] = lambda h: endless(h, sent)
        with pytest.raises(OSError, match="MAD_SHARED_MAX_BYTES"):
            find_in(srv.url, "image", LIE_KEY)
    assert sent[0] < 32 << 20, sent  # the client stopped reading; it did not take the whole 128 MiB


def test_chunk_larger_than_its_metadata_allows_is_refused(www, tmp_path):
    """A chunk of the bool ``valid`` array (2 rows per chunk) cannot be 4 MiB: the pull stops, nothing published."""
    root, _ = _served_copy(www, tmp_path)
    with Hostile(root) as srv:
        srv.routes[f"/{store_rel('image', www['key'])}/valid/c/1"] = lambda h: send(h, b"\0" * (4 << 20))
        with pytest.raises(StoreError, match="metadata allows"):
            store_share.pull(store_share.PullConfig(key=www["key"], sources=(srv.url,), cache=tmp_path / "cache",
                                                    verify=False))
    assert Cache(tmp_path / "cache").lookup("image", www["key"]) is None


def test_unanswering_server_costs_one_deadline_per_run(fast, tmp_path):
    with silent_server() as (url, accepted):
        logs: list[str] = []
        cache = Cache(tmp_path / "local", shared=(url,))
        t0 = time.monotonic()
        for kind in ("image", "text", "index"):
            assert cache.locate(kind, "cd" * 32, log=logs.append) is None
        took = time.monotonic() - t0
    assert took < 2.0, took  # one 0.5 s deadline, then skipped at once
    assert accepted[0] == 1, accepted
    assert len(logs) == 3 and all("unreachable" in m for m in logs), logs


def test_mad_extract_with_a_dead_shared_cache_builds_locally(fast, tiny_clip, tmp_path, monkeypatch, capsys):
    cfg_file, weights = tiny_clip
    with silent_server() as (url, accepted):
        for k, v in {"MAD_MODEL_CONFIGS": str(cfg_file), "MAD_CACHE": str(tmp_path / "cache"),
                     "MAD_SHARED_CACHE": url, "MAD_PULL": ""}.items():
            monkeypatch.setenv(k, v)
        proc = cli(capsys, "extract", "--teacher", "tiny-clip", "--weights", str(weights), "--manifest",
                   str(EXAMPLES / "manifest.jsonl"), "--data-root", str(EXAMPLES), "--json")
    assert proc.returncode == 0, proc.stderr
    res = last_json(proc)
    assert all(s["source"] == "local" and not s["cached"] for s in res["stores"].values()), res["stores"]
    assert accepted[0] == 1, (accepted, proc.stderr)  # the dead cache was asked once, not once per store
    assert "unreachable" in proc.stderr


# ---------------------------------------------------------------------- mad store verify on HTTP errors
@pytest.mark.parametrize("where,status", [("root", 403), ("chunk", 500)])
def test_verify_on_http_errors_is_one_line(where, status, www, tmp_path, capsys):
    root, _ = _served_copy(www, tmp_path)
    rel = f"/{store_rel('image', www['key'])}"
    with Hostile(root) as srv:
        path = f"{rel}/zarr.json" if where == "root" else f"{rel}/tokens/c/1/0/0"
        srv.routes[path] = lambda h: send(h, b"nope", status)
        proc = cli(capsys, "store", "verify", "-q", srv.url + rel)
    assert f"HTTP {status}" in _error_line(proc)


# ---------------------------------------------------------------------- pull verifies by default
def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _damage(store: Path, how: str) -> None:
    if how == "flipped":
        shard = store / "tokens" / "c" / "1" / "0" / "0"
        _flip(shard, len(shard.read_bytes()) // 3)
    elif how == "truncated":
        shard = store / "tokens" / "c" / "2" / "0" / "0"
        shard.write_bytes(shard.read_bytes()[:-40])
    else:  # lying: the manifest claims more rows than the arrays have
        meta = json.loads((store / "zarr.json").read_text())
        meta["attributes"]["mad"]["n_rows"] = 7
        (store / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("how", ["flipped", "truncated", "lying"])
def test_pull_verifies_by_default_and_publishes_nothing_bad(how, www, tmp_path, monkeypatch, capsys):
    root, store = _served_copy(www, tmp_path)
    _damage(store, how)
    key = www["key"]
    with Hostile(root) as srv:
        with pytest.raises(StoreError, match="fails verification"):
            store_share.pull(store_share.PullConfig(key=key, sources=(srv.url,), cache=tmp_path / "cache"))
        assert Cache(tmp_path / "cache").lookup("image", key) is None
        assert not list((tmp_path / "cache" / "partial").rglob("*.zarr"))
        if how == "flipped":  # the CLI: one line, exit 2; --no-verify (a trusted cache) publishes as before
            monkeypatch.setenv("MAD_CACHE", str(tmp_path / "c2"))
            line = _error_line(cli(capsys, "store", "pull", key, "--from", srv.url))
            assert "fails verification" in line and "tokens" in line
            pulled = last_json(cli(capsys, "store", "pull", key, "--from", srv.url, "--no-verify", "--json"))
            assert not pulled["skipped"] and Cache(tmp_path / "c2").lookup("image", key) is not None


def test_pull_verify_opt_out_by_environment_and_clean_store(www, tmp_path, monkeypatch):
    root, store = _served_copy(www, tmp_path)
    key = www["key"]
    with Hostile(root) as srv:
        t = store_share.pull(store_share.PullConfig(key=key, sources=(srv.url,), cache=tmp_path / "clean"))
        assert not t.skipped and Cache(tmp_path / "clean").lookup("image", key) is not None  # a clean store passes
        _damage(store, "flipped")
        monkeypatch.setenv("MAD_PULL_VERIFY", "0")
        store_share.pull(store_share.PullConfig(key=key, sources=(srv.url,), cache=tmp_path / "trusted"))
        assert Cache(tmp_path / "trusted").lookup("image", key) is not None


# ---------------------------------------------------------------------- the default install
def test_http_and_s3_support_are_default_dependencies():
    tomllib = pytest.importorskip("tomllib")

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip().lower() for d in deps}
    assert {"aiohttp", "s3fs"} <= names, names


def test_missing_s3fs_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as in an install without it: `import s3fs` fails
    monkeypatch.setenv("MAD_CACHE", str(tmp_path / "c"))
    proc = cli(capsys, "store", "pull", "ab" * 32, "--from", "s3://bucket/cache")
    assert _error_line(proc) == ("error: s3://bucket/cache/stores/image/" + "ab" * 32 + ".zarr: s3:// locations "
                                 "need s3fs, which is not installed (pip install 'mad-pipeline[s3]')")


def test_missing_aiohttp_stops_mad_extract_with_one_line(tiny_clip, tmp_path, monkeypatch, capsys):
    """Instead of logging a hint (whose brackets rich used to eat) and recomputing every store."""
    cfg_file, weights = tiny_clip
    monkeypatch.setitem(sys.modules, "aiohttp", None)
    for k, v in {"MAD_MODEL_CONFIGS": str(cfg_file), "MAD_CACHE": str(tmp_path / "c"),
                 "MAD_SHARED_CACHE": "http://127.0.0.1:9/cache", "MAD_PULL": ""}.items():
        monkeypatch.setenv(k, v)
    proc = cli(capsys, "extract", "--teacher", "tiny-clip", "--weights", str(weights), "--manifest",
               str(EXAMPLES / "manifest.jsonl"), "--data-root", str(EXAMPLES))
    last = _error_line(proc)
    assert last.startswith("error: http://127.0.0.1:9/cache/") and last.endswith(
        "http:// locations need aiohttp, which is not installed (pip install 'mad-pipeline[http]')"), proc.stderr
    assert not (tmp_path / "c" / "stores").exists()  # nothing was computed


def test_bad_limit_setting_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAD_SHARED_TIMEOUT", "soon")
    monkeypatch.setenv("MAD_CACHE", str(tmp_path / "c"))
    proc = cli(capsys, "store", "pull", "ab" * 32, "--from", "http://127.0.0.1:9/cache")
    assert _error_line(proc) == "error: MAD_SHARED_TIMEOUT='soon': expected a positive number of seconds"
