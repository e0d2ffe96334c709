"""Shared fixtures: real open_clip models at tiny sizes with random weights saved to files, real photos, and a
helper that runs the real ``mad`` CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "photos"


def pytest_configure(config):
    """mad's own sources compiled once, before any test: with PYTHONDONTWRITEBYTECODE=1 (as on CI) every ``mad``
    subprocess would otherwise compile each module it imports again (py_compile writes regardless of it)."""
    import compileall

    for d in ("mad_pipeline", "cli", "stages"):
        if (REPO / d).is_dir():
            compileall.compile_dir(REPO / d, quiet=2)


TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def save_open_clip(cfg_name: str, cfg: dict, out: Path, seed: int = 0) -> tuple[Path, Path]:
    """Register ``cfg`` with open_clip, build it with random weights and save them (safetensors)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    cfg_file = out / f"{cfg_name}.json"
    cfg_file.write_text(json.dumps(cfg))
    open_clip.add_model_config(cfg_file)
    torch.manual_seed(seed)
    model = open_clip.create_model(cfg_name)
    weights = out / f"{cfg_name}-seed{seed}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return cfg_file, weights


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """(config file, weights file) of the tiny-clip teacher; also registered in this process's registry."""
    from mad_pipeline.teachers import register_open_clip_config

    d = tmp_path_factory.mktemp("tiny-clip")
    cfg_file, weights = save_open_clip("tiny-clip", TINY_CLIP, d)
    register_open_clip_config("tiny-clip", cfg_file)
    return cfg_file, weights


@pytest.fixture()
def cache_dir(tmp_path):
    return tmp_path / "cache"


def mad(*args: str, env: dict | None = None, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (the installed console script's module)."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "mad_pipeline.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"mad {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def last_json(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_manifest(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def make_photos(root: Path, n: int, size: int = 96, seed: int = 0) -> list[str]:
    """n distinct real JPEG files (crops of skimage photos) under root/img/."""
    import numpy as np
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    base = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    (root / "img").mkdir(parents=True, exist_ok=True)
    rels = []
    for i in range(n):
        src = base[i % len(base)]
        crop = min(size, 280)
        y = int(rng.integers(0, src.shape[0] - crop))
        x = int(rng.integers(0, src.shape[1] - crop))
        rel = f"img/{i:04d}.jpg"
        im = Image.fromarray(src[y : y + crop, x : x + crop])
        if crop != size:
            im = im.resize((size, size), Image.BICUBIC)
        im.save(root / rel, quality=90)
        rels.append(rel)
    return rels


def v1_copy(image_store: Path, dst: Path) -> Path:
    """A format v1 image store: the same arrays, but the hashes as variable-length strings and no chunk record."""
    import shutil
    import warnings

    import numpy as np
    import zarr

    shutil.copytree(image_store, dst)
    hashes = zarr.open_group(str(image_store), mode="r")["image_hash"][:].tolist()
    shutil.rmtree(dst / "image_hash")
    g = zarr.open_group(str(dst), mode="r+", use_consolidated=False)
    a = g.create_array("image_hash", shape=(len(hashes),), chunks=(2,), dtype=str, fill_value="",
                       dimension_names=["image"],
                       compressors=[zarr.codecs.ZstdCodec(level=3), zarr.codecs.Crc32cCodec()])
    a[:] = np.asarray(hashes, dtype=object)
    man = dict(g.attrs["mad"])
    man["format_version"] = 1
    man.pop("chunks", None)
    g.attrs["mad"] = man
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(dst))
    return dst


@pytest.fixture()
def bars_restored(monkeypatch):
    """For in-process `-q` / `--json` commands: the library bars they switch off for the process are back after."""
    from huggingface_hub.utils import enable_progress_bars
    from transformers.utils import logging as hf_logging

    for k in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(k, "0")
        monkeypatch.delenv(k)  # restored to unset at teardown
    was = hf_logging.is_progress_bar_enabled()
    yield
    if was:
        hf_logging.enable_progress_bar()
        enable_progress_bars()


def mad_inproc(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """The same command as :func:`mad`, run in this process (no interpreter start, no torch / open_clip import):
    for tests where a separate process is not the point. The same exit code and ``error: ...`` line as the console
    script (``main``), stdout and stderr apart; the environment (``env`` and what the command sets, such as ``-q``'s
    library-bar switches) and torch's thread count (``OMP_NUM_THREADS`` in ``env``) are restored afterwards."""
    import torch
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from mad_pipeline.cli.main import main
    from transformers.utils import logging as hf_logging
    from typer.testing import CliRunner

    saved_env, threads = dict(os.environ), torch.get_num_threads()
    hf_bars, hub_bars = hf_logging.is_progress_bar_enabled(), not are_progress_bars_disabled()
    if env and env.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    try:
        with CliRunner().isolation(env=env) as (out, err, _):
            try:
                main(list(args))
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            sys.stdout.flush()
            sys.stderr.flush()
            stdout, stderr = out.getvalue().decode(), err.getvalue().decode("utf-8", "replace")
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(threads)
        if hf_bars:
            hf_logging.enable_progress_bar()
        if hub_bars:
            enable_progress_bars()
    proc = subprocess.CompletedProcess(["mad", *args], code, stdout, stderr)
    if check and code != 0:
        raise AssertionError(f"mad {' '.join(args)} failed ({code}):\n{stdout}\n{stderr}")
    return proc


def bench_module(name: str):
    """``bench/<name>.py`` imported as a module (the benches are scripts, not a package), for tests of their parts."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).resolve().parents[1] / "bench"
                                                  / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
