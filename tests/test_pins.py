"""Behaviour pins: the per-step training losses of small runs (MAD on each task, the baseline, the selection
policies computed in the step, the online teacher), their evaluation figures and the store keys of fixed inputs.

The pinned values in ``fixtures/pins.json`` were computed by this file on the code as it was before a refactoring
that must not change behaviour; a change that alters any of them on purpose regenerates the file
(``MAD_WRITE_PINS=1 pytest tests/test_pins.py``) and says why in its commit message.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

PINS = Path(__file__).parent / "fixtures" / "pins.json"
STEPS = 20
# (name, task, extra options)
SALIENCY = ("--select", "teacher-saliency")  # the paper's selection, computed by the data pipeline
RUNS = [
    ("vqa-default", "vqa", ()),  # the full preset: every token
    ("vqa-full", "vqa", SALIENCY),
    ("vqa-baseline", "vqa", ("--no-distill",)),
    ("vqa-naive", "vqa", ("--preset", "naive")),
    ("vqa-random", "vqa", ("--select", "random", "--top-k", "4")),
    ("vqa-student-gap", "vqa", ("--select", "student-gap", "--logit-kd")),
    ("vqa-online", "vqa", ("--online-teacher", *SALIENCY)),
    ("snli-ve-full", "snli-ve", SALIENCY),
    ("vcr-full", "vcr", SALIENCY),
]
TRAIN_KEYS = ("total", "task", "distill", "tok_v", "tok_t", "pool", "kd", "alpha", "conf_mean", "grad_norm")


def _cli(*args: str) -> dict:
    from mad_pipeline.cli.main import _register, app

    _register()
    res = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output.strip().splitlines()[-1])


def compute(tmp: Path) -> dict:
    from mad_pipeline.shapes.formats import write_dataset

    world = tmp / "world"
    write_dataset(world, size=24, seed=0)
    cache = tmp / "cache"
    out: dict = {}
    for name, task, extra in RUNS:
        run = tmp / name
        res = _cli("distill", "--task", task, "--data-root", str(world / task), "--teacher", "shapes-clip",
                   "--out", str(run), "--steps", str(STEPS), "--batch-size", "8", "--log-every", "1", "--warmup", "0",
                   "--num-workers", "0", "--vocab-min-count", "1", "--cache", str(cache), "--json", *extra)
        rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        train = [{k: r[k] for k in TRAIN_KEYS if k in r} for r in rows if "eval" not in r]
        out[name] = {"train": train, "eval": res["eval"], "stores": res["stores"],
                     "train_samples": res["train_samples"]}
    return out


def _close(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, str):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7), f"{where}: {a!r} != pinned {b!r}"
    else:
        assert a == b, f"{where}: {a!r} != pinned {b!r}"


@pytest.mark.slow
def test_behaviour_pins(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = compute(tmp_path)
    finally:
        torch.set_num_threads(threads)
    if os.environ.get("MAD_WRITE_PINS") == "1":
        PINS.write_text(json.dumps(got, indent=1) + "\n")
        pytest.skip(f"pins written to {PINS}")
    _close(got, json.loads(PINS.read_text()), "pins")
