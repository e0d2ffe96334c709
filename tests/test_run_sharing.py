"""`mad run` over a shared cache: team A runs an experiment; team B, on an empty local cache
with A's cache as its shared cache, runs the same config and performs no extraction — asserted from every extract
stage's stores (found by key in the shared cache, ``rows_computed`` 0, ``source`` the shared location) and from the
run's ``extracted`` flag — through a real `python -m http.server` and a real S3-compatible server (moto) on
127.0.0.1. The shared locations are never written to."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import last_json, mad, mad_inproc
from test_sharing import _http_server, _snapshot, moto_server

CONFIG = """\
name: shared run
task: vqa
data:
  shapes: {{size: 12, seed: 0}}
teacher: tiny-clip
teacher_weights: {weights}
methods: [full]
fractions: [1.0]
seeds: [0]
vocab_min_count: 1
train:
  steps: 1
  batch_size: 8
"""


@pytest.fixture(scope="module")
def team_a(tiny_clip, tmp_path_factory):
    cfg_file, weights = tiny_clip
    d = tmp_path_factory.mktemp("run-sharing")
    (d / "exp.yaml").write_text(CONFIG.format(weights=weights))
    env = {"MAD_MODEL_CONFIGS": str(cfg_file), "MAD_SHARED_CACHE": "", "MAD_PULL": "", "OMP_NUM_THREADS": "1"}
    res = last_json(mad_inproc("run", str(d / "exp.yaml"), "--json", env={**env, "MAD_CACHE": str(d / "team-a")}))
    assert res["extracted"] is True
    return {"dir": d, "cache": d / "team-a", "env": env, "result": res}


def _extract_stores(res: dict) -> dict[str, dict]:
    out = {}
    for st in res["stages"]:
        if st["kind"] == "extract":
            for kind, s in st["stores"].items():
                out[f"{st['label']}/{kind}"] = s
    return out


def _team_b(team_a, local: Path, shared: str, subprocess: bool = False, **extra_env) -> dict:
    """Team B's `mad run`: in this process, or (``subprocess=True``) the console script in a fresh process, where
    fsspec reads ``FSSPEC_*`` variables at import."""
    env = {**team_a["env"], "MAD_CACHE": str(local), "MAD_SHARED_CACHE": shared, **extra_env}
    return last_json((mad if subprocess else mad_inproc)("run", str(team_a["dir"] / "exp.yaml"), "--json", env=env))


def _assert_no_extraction(res: dict, team_a: dict, source: str, local: Path) -> None:
    assert res["extracted"] is False
    mine, theirs = _extract_stores(res), _extract_stores(team_a["result"])
    assert set(mine) == set(theirs) and len(mine) >= 6  # train and val: image, text, index, zero-shot each
    for name, s in mine.items():
        assert s["key"] == theirs[name]["key"], name
        assert s["cached"] and s["rows_computed"] == 0, (name, s)
        assert s["source"] == source, (name, s["source"])
    assert not (local / "stores").exists() and not (local / "partial").exists()  # nothing copied or built here
    # the student was still trained and evaluated here (run stages are local), on the shared features
    kinds = [st["kind"] for st in res["stages"] if st["status"] == "ran"]
    assert "distill" in kinds and "eval" in kinds
    a_val = {st["id"]: st["value"] for st in team_a["result"]["stages"] if st["kind"] == "eval"}
    b_val = {st["id"]: st["value"] for st in res["stages"] if st["kind"] == "eval"}
    assert b_val == pytest.approx(a_val)  # same features, same seed: the same student


def test_mad_run_over_http_shared_cache_extracts_nothing(team_a, tmp_path):
    pytest.importorskip("aiohttp")
    before = _snapshot(team_a["cache"])
    log = tmp_path / "http.log"
    with _http_server(team_a["cache"], log) as url:
        local = tmp_path / "team-b"
        res = _team_b(team_a, local, url)
        _assert_no_extraction(res, team_a, f"shared:{url}", local)
    requests = [line for line in log.read_text().splitlines() if '"' in line]
    assert requests and all('"GET ' in line or '"HEAD ' in line for line in requests), requests[:5]
    assert _snapshot(team_a["cache"]) == before


def test_mad_run_over_s3_shared_cache_extracts_nothing(team_a, tmp_path, monkeypatch):
    with moto_server(tmp_path) as (endpoint, creds):
        import s3fs

        for k, v in creds.items():
            monkeypatch.setenv(k, v)
        fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False,
                               client_kwargs={"endpoint_url": endpoint})
        fs.mkdir("team-bucket")
        pushed = last_json(mad_inproc("store", "push", str(team_a["cache"]), "s3://team-bucket/cache", "--json",
                                      env={**creds, "AWS_ENDPOINT_URL": endpoint}))
        assert len(pushed) == len({s["key"] for s in _extract_stores(team_a["result"]).values()})
        objects = {k: (v["ETag"], v["LastModified"]) for k, v in fs.find("team-bucket", detail=True).items()}

        local = tmp_path / "team-b"
        res = _team_b(team_a, local, "s3://team-bucket/cache", subprocess=True, **creds,
                      FSSPEC_S3_ENDPOINT_URL=endpoint, AWS_ENDPOINT_URL="")
        _assert_no_extraction(res, team_a, "shared:s3://team-bucket/cache", local)
        assert {k: (v["ETag"], v["LastModified"])
                for k, v in fs.find("team-bucket", detail=True).items()} == objects  # read only
