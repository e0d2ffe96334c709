"""The small things of the command line: ``mad --version``, shell completion, Click's parse errors as one
``error:`` line, progress as plain lines with a rate in a log file, ``mad teachers`` at 80 columns, ``mad store
info`` / ``verify`` by key or key prefix (and ``~`` in paths), ``mad store ls`` telling two stores of one teacher
apart."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from conftest import EXAMPLES, TINY_CLIP, mad, save_open_clip, write_manifest
from mad_pipeline.cli.main import main

BOX = set("╭╮╰╯│┃━─")


def run_main(args: list[str], capsys, **env: str) -> tuple[int, str, str]:
    """The real entry point, in process: (exit code, stdout, stderr)."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with pytest.raises(SystemExit) as exc:
            main(args)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out = capsys.readouterr()
    code = exc.value.code
    return (code if isinstance(code, int) else 0 if code is None else 1), out.out, out.err


@pytest.fixture(scope="module")
def stores(tiny_clip, tmp_path_factory) -> dict:
    """One cache holding three image stores of the one teacher ``tiny-clip``: ``a`` (seed-0 weights, the example
    manifest), ``b`` (seed-1 weights, the same manifest), ``c`` (seed-0 weights, a manifest of the first 3 records)."""
    from mad_pipeline.stages import extract

    _, w0 = tiny_clip
    d = tmp_path_factory.mktemp("small")
    _, w1 = save_open_clip("tiny-clip", TINY_CLIP, d, seed=1)
    lines = (EXAMPLES / "manifest.jsonl").read_text().splitlines()
    sub = write_manifest(d / "first3.jsonl", [json.loads(x) for x in lines[:3]])
    cache = d / "cache"
    out = {"cache": cache, "weights": {"a": w0, "b": w1, "c": w0}}
    for name, weights, manifest in (("a", w0, EXAMPLES / "manifest.jsonl"), ("b", w1, EXAMPLES / "manifest.jsonl"),
                                    ("c", w0, sub)):
        res = extract.run(extract.ExtractConfig(teacher="tiny-clip", weights=str(weights), manifest=manifest,
                                                data_root=EXAMPLES, cache=cache, num_workers=0, progress=False,
                                                device="cpu"), log=lambda m: None)
        out[name] = {k: (s.key, s.path) for k, s in res.stores.items()}
    out["manifests"] = {"a": EXAMPLES / "manifest.jsonl", "b": EXAMPLES / "manifest.jsonl", "c": sub}
    return out


# ------------------------------------------------------------------ --version, completion
def test_version_prints_the_package_version():
    proc = mad("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"mad {metadata.version('mad-pipeline')}"


def test_version_through_the_app(capsys):
    """``--version`` is an eager option of the app itself, so it also works after other options reach Typer."""
    from mad_pipeline.cli.app import app
    from mad_pipeline.cli.main import _register
    from typer.testing import CliRunner

    _register()
    res = CliRunner().invoke(app, ["--version"], prog_name="mad")
    assert res.exit_code == 0 and res.output.strip() == f"mad {metadata.version('mad-pipeline')}"


def test_shell_completion_script_and_a_completion(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")  # the shell named, not detected
    code, script, _ = run_main(["--show-completion", "bash"], capsys)
    assert code == 0
    assert "complete -o default -F _mad_completion mad" in script and "_MAD_COMPLETE=complete_bash" in script
    code, zsh, _ = run_main(["--show-completion", "zsh"], capsys)
    assert code == 0 and "#compdef mad" in zsh
    # what the script asks `mad` when TAB is pressed after `mad store ve`
    code, done, _ = run_main([], capsys, _MAD_COMPLETE="complete_bash", COMP_WORDS="mad store ve", COMP_CWORD="2")
    assert code == 0 and done.split() == ["verify"]
    # --install-completion writes the script where bash reads it
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    code, inst, _ = run_main(["--install-completion", "bash"], capsys)
    assert code == 0 and "bash completion installed" in inst
    assert "_mad_completion" in (home / ".bash_completions" / "mad.sh").read_text()
    assert ".bash_completions/mad.sh" in (home / ".bashrc").read_text()


# ------------------------------------------------------------------ parse errors
@pytest.mark.parametrize(("args", "names"), [
    (["distill", "--bogus"], ["No such option", "--bogus", "mad distill --help"]),  # no such option
    (["score", "--task", "vqa"], ["Missing option", "--annotations"]),  # a required option missing
    (["distill", "--steps", "many", "--out", "x"], ["--steps", "integer"]),  # not an integer
    (["store", "gc", "--older-than", "soon"], ["--older-than", "number"]),  # not a number
    (["score", "--task", "vqa", "--vqa-eval", "bogus"], ["--vqa-eval", "official, legacy"]),  # not one of the choices
    (["store", "info"], ["Missing argument", "mad store info --help"]),  # a required argument missing
    (["store", "frobnicate"], ["No such command", "frobnicate"]),
    (["store", "ls", "--kind"], ["--kind", "requires an argument"]),
])
def test_parse_errors_are_one_line(args, names, capsys):
    code, out, err = run_main(args, capsys)
    assert code == 2, (out, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not BOX & set(err), err  # no rich box
    for n in names:
        assert n in lines[0], (n, lines[0])


def test_help_and_exit_codes_still_work(capsys):
    code, out, _ = run_main(["store", "info", "--help"], capsys)
    assert code == 0 and "Usage: mad store info" in out and "--cache" in out
    code, out, err = run_main(["store"], capsys)  # a group alone: its help, as before
    assert code == 2 and "Usage: mad store" in out + err and "verify" in out + err


# ------------------------------------------------------------------ mad teachers at 80 columns
def test_progress_in_a_log_file_is_plain_lines_with_a_rate(tmp_path):
    """stderr redirected to a file: no live bar (which would draw nothing until the end) but a line per task every
    MAD_PROGRESS_EVERY seconds and a last one when it ends; stdout's lines reach the file as they are printed."""
    err, out = tmp_path / "err.log", tmp_path / "out.log"
    with err.open("w") as e, out.open("w") as o:
        subprocess.run([sys.executable, "-m", "mad_pipeline.cli", "datasets", "make", "shapes", "--out",
                        str(tmp_path / "w"), "--size", "40"], stdout=o, stderr=e, check=True,
                       env={**os.environ, "MAD_PROGRESS_EVERY": "0.05"})
    lines = err.read_text().splitlines()
    rate = r"([\d.,]+ (img/s|s/img)|- img/s)"  # "-": a line before the first image is done has no rate yet
    line = rf"shapes world: (\d+)/70 img \((\d+)%\), {rate}, elapsed \d:\d\d:\d\d"
    assert lines and all(re.fullmatch(line + r"(, eta (\d:\d\d:\d\d|-:--:--))?", ln) for ln in lines), lines
    assert re.fullmatch(line, lines[-1]) and lines[-1].startswith("shapes world: 70/70 img (100%)")
    assert re.search(r"[\d.,]+ (img/s|s/img)", lines[-1])  # the last line has its rate
    assert not BOX & set(err.read_text()) and "\u2501" not in err.read_text()
    assert "shapes world (seed 0)" in out.read_text()


def test_nested_progress_rows_in_a_log(capsys, monkeypatch):
    """A bar inside another (evaluation inside training): its last line only when it lived a full interval."""
    import time

    from mad_pipeline.progress import progress_bar

    monkeypatch.setenv("MAD_PROGRESS_EVERY", "0.2")
    with progress_bar("training", 3, unit="step") as bar:
        with progress_bar("quick eval", 2, unit="batch") as b:
            b.advance(2)
        with progress_bar("slow eval", 2, unit="batch") as b:
            time.sleep(0.3)
            b.advance(2)
        bar.advance(3)
        bar.info("loss 0.5")
    err = capsys.readouterr().err
    assert "quick eval" not in err and "slow eval: 2/2 batch (100%)" in err
    assert err.splitlines()[-1].startswith("training: 3/3 step (100%)") and err.splitlines()[-1].endswith("loss 0.5")


def test_slow_units_are_rated_by_the_mean_not_by_two_close_finishes():
    """A bar whose units take minutes (a study's shards): two finishing seconds apart are not "11 s/shard, eta
    1:40"; the rate and the eta come from the mean so far. Fast units keep rich's recent-window estimate."""
    from types import SimpleNamespace

    from mad_pipeline.progress import task_line, task_speed

    shards = SimpleNamespace(description="shards", completed=3, total=12, finished=False, elapsed=3660.0,
                             finished_speed=None, speed=1 / 11.0, time_remaining=99.0, fields={"unit": "shard"})
    assert task_speed(shards) == 3 / 3660.0
    assert task_line(shards) == "shards: 3/12 shard (25%), 1,220.0 s/shard, elapsed 1:01:00, eta 3:03:00"
    steps = SimpleNamespace(description="training", completed=200, total=500, finished=False, elapsed=100.0,
                            finished_speed=None, speed=2.5, time_remaining=120.0, fields={"unit": "step"})
    assert task_speed(steps) == 2.5 and task_line(steps).endswith("2.5 step/s, elapsed 0:01:40, eta 0:02:00")
    # a study's training steps arrive in bursts (a shard's whole cap as it ends): the mean so far, always
    burst = SimpleNamespace(description="training steps", completed=1600, total=6400, finished=False, elapsed=800.0,
                            finished_speed=None, speed=80.0, time_remaining=60.0,
                            fields={"unit": "step", "bursts": True, "info": "2/8 shards"})
    assert task_speed(burst) == 2.0
    assert task_line(burst).endswith("2.0 step/s, elapsed 0:13:20, eta 0:40:00, 2/8 shards")


def test_teachers_readable_at_80_columns(capsys):
    from mad_pipeline.stages import teachers as stage

    rows = stage.run(stage.TeachersConfig())
    code, out, _ = run_main(["teachers"], capsys, COLUMNS="80")
    assert code == 0
    lines = out.splitlines()
    assert max(len(x) for x in lines) <= 80
    assert "…" not in out
    for r in rows:
        assert any(r["name"] in line for line in lines), f"{r['name']} cut: {out}"  # every name whole, one line
        if " " not in r["model"] and len(r["model"]) <= 45:
            assert any(r["model"] in line for line in lines), f"{r['model']} cut: {out}"
    # a terminal wide enough gets one column per field, every name, model and weights whole on its row's line
    from mad_pipeline.cli.teachers import _wide_width

    for width in (_wide_width(rows), 250):
        code, wide, _ = run_main(["teachers"], capsys, COLUMNS=str(width))
        assert code == 0 and "description" in wide.splitlines()[2] and "…" not in wide
        for r in rows:
            assert any(r["name"] in x and r["model"] in x and r["weights"] in x for x in wide.splitlines()), r


# ------------------------------------------------------------------ store info / verify by key
def test_store_info_and_verify_by_key_and_prefix(stores, capsys):
    key, path = stores["a"]["image"]
    cache = str(stores["cache"])
    code, out, err = run_main(["store", "info", key, "--cache", cache, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["path"] == path
    code, out, err = run_main(["store", "info", key[:10], "--json"], capsys, MAD_CACHE=cache)  # prefix, MAD_CACHE
    assert code == 0, err
    assert json.loads(out)["manifest"]["cache_key"] == key
    code, out, err = run_main(["store", "verify", key[:8], "--cache", cache, "-q"], capsys)
    assert code == 0 and out.startswith(f"OK {path}"), (out, err)
    code, out, err = run_main(["store", "verify", stores["a"]["text"][0][:12], "--json"], capsys, MAD_CACHE=cache)
    assert code == 0 and json.loads(out)["kind"] == "text"


def test_unknown_and_ambiguous_keys_are_one_line(stores, tmp_path, capsys):
    key, path = stores["a"]["image"]
    code, _, err = run_main(["store", "info", "0123456789abcdef", "--cache", str(stores["cache"])], capsys)
    assert code == 2 and "\n" not in err.strip()
    assert "no published store with key 0123456789abcdef" in err and str(stores["cache"]) in err
    # two stores whose keys share a prefix
    cache = tmp_path / "cache"
    shutil.copytree(path, cache / "stores" / "image" / f"{key}.zarr")
    shutil.copytree(path, cache / "stores" / "text" / f"{key[:8]}{'0' * 56}.zarr")
    code, _, err = run_main(["store", "verify", key[:8], "--cache", str(cache)], capsys)
    assert code == 2 and "\n" not in err.strip()
    assert "ambiguous" in err and key[:8] in err and "2 stores" in err
    code, out, err = run_main(["store", "info", key[:9], "--cache", str(cache), "--json"], capsys)  # one more char
    assert code == 0 and json.loads(out)["kind"] == "image", err


def test_store_paths_expand_tilde(stores, tmp_path, capsys, monkeypatch):
    key, path = stores["a"]["image"]
    home = tmp_path / "home"
    home.mkdir()
    shutil.copytree(path, home / "s" / f"{key}.zarr")
    monkeypatch.setenv("HOME", str(home))
    code, out, err = run_main(["store", "info", f"~/s/{key}.zarr", "--json"], capsys)
    assert code == 0 and json.loads(out)["path"] == str(home / "s" / f"{key}.zarr"), err
    code, out, err = run_main(["store", "verify", "-q", f"~/s/{key}.zarr"], capsys)
    assert code == 0 and out.startswith("OK "), err
    code, out, err = run_main(["store", "ls", "--cache", "~/nothing-here", "--json"], capsys)
    assert code == 0 and json.loads(out) == []
    code, _, err = run_main(["store", "info", "~/missing.zarr"], capsys)
    assert code == 2 and str(home / "missing.zarr") in err and "\n" not in err.strip()


# ------------------------------------------------------------------ store ls: weights and dataset
def test_store_ls_tells_two_stores_of_one_teacher_apart(stores, capsys):
    from mad_pipeline.store.reader import open_store

    cache = str(stores["cache"])
    code, out, err = run_main(["store", "ls", "--kind", "image", "--json"], capsys, MAD_CACHE=cache)
    assert code == 0, err
    rows = {r["key"]: r for r in json.loads(out)}
    a, b, c = (rows[stores[n]["image"][0]] for n in "abc")
    assert a["teacher"] == b["teacher"] == c["teacher"] == "tiny-clip"
    digest = open_store(stores["a"]["image"][1]).manifest["teacher"]["weights_sha256"]
    assert a["weights"] == c["weights"] == f"sha256:{digest[:12]}"
    assert b["weights"] != a["weights"] and b["weights"].startswith("sha256:")  # other weights
    assert a["dataset"] == b["dataset"] == f"jsonl {stores['manifests']['a']}"
    assert c["dataset"] == f"jsonl {stores['manifests']['c']}"  # other data
    for width in ("80", "200"):
        code, table, _ = run_main(["store", "ls", "--kind", "image"], capsys, MAD_CACHE=cache, COLUMNS=width)
        assert code == 0 and max(len(x) for x in table.splitlines()) <= int(width)
        for r in (a, b, c):
            assert r["key"][:12] in table and r["weights"] in table
            if width == "200":  # one line per store
                assert any(r["key"][:12] in x and r["weights"] in x and r["dataset"] in x for x in table.splitlines())


# ------------------------------------------------------------------ README snippets
README = Path(__file__).resolve().parent.parent / "README.md"
SHOWN_NOT_RUN = {"make demo", "make test"}  # minutes each: shown, not run here (CI runs `make test` itself)
RUN = {("teachers",), ("store", "ls"), ("store", "info"), ("store", "verify")}  # offline and quick: run for real


def readme_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.S)


def readme_mad_lines() -> list[list[str]]:
    out = []
    for block in readme_blocks("bash"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            if words[0] == "mad":
                out.append(words[1:])
            else:
                assert " ".join(words) in SHOWN_NOT_RUN, f"README line neither a mad command nor listed: {line}"
    return out


def parse_only(args: list[str]):
    """Parse a command line against the real CLI without running it: the command path, every option and every
    value's type must exist; required options may be missing where the line ends in ``...``."""
    import typer
    from mad_pipeline.cli.app import app
    from mad_pipeline.cli.main import _register

    _register()
    ctx = typer.main.get_command(app).make_context("mad", list(args))
    while getattr(ctx.command, "commands", None):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, cmd, rest = ctx.command.resolve_command(ctx, rest)
        ctx = cmd.make_context(name, rest, parent=ctx)
    return ctx


def test_readme_mad_lines_parse():
    from typer._click.exceptions import MissingParameter

    lines = readme_mad_lines()
    assert len(lines) >= 10
    for words in lines:
        args = [w for w in words if w != "..."]
        try:
            ctx = parse_only(args)
        except MissingParameter:
            assert words[-1] == "...", f"README: mad {' '.join(words)}: a required option is missing"
            continue
        assert ctx.command_path.startswith("mad ")


def test_readme_offline_lines_run(stores, capsys):
    key, path = stores["a"]["image"]
    ran = 0
    for words in readme_mad_lines():
        if not any(tuple(words[: len(c)]) == c for c in RUN):
            continue
        args = [path if w == "PATH" else key[:8] if re.fullmatch(r"[0-9a-f]{8}", w) else w for w in words]
        code, out, err = run_main(args, capsys, MAD_CACHE=str(stores["cache"]))
        assert code == 0, f"README: mad {' '.join(words)}: {err}"
        ran += 1
    assert ran >= 4


def test_readme_python_runs_as_written(stores, tmp_path):
    """The snippet as written, with its ``<key>`` placeholder filled in and ``~`` a home whose default cache holds
    the store."""
    (block,) = [b for b in readme_blocks("python") if "<key>" in b]
    key, _ = stores["a"]["image"]
    home = tmp_path / "home"
    (home / ".cache").mkdir(parents=True)
    (home / ".cache" / "mad").symlink_to(stores["cache"])
    code = block.replace("<key>", key) + "\nprint(tuple(tokens.shape), tokens.dtype)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HOME": str(home)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("(")[1].startswith("6, 17, 64)"), proc.stdout  # 6 images, CLS + 4x4 patches, width 64


# ------------------------------------------------------------------ the zero-shot store, as documented
STORE_FORMAT = README.parent / "docs" / "store-format.md"


@pytest.fixture(scope="module")
def zeroshot_store(tiny_clip, tmp_path_factory) -> str:
    """A real zero-shot store: tiny-clip on a small shapes world's VQA val split."""
    from mad_pipeline.stages import extract

    from mad_pipeline.shapes.formats import write_dataset

    _, weights = tiny_clip
    d = tmp_path_factory.mktemp("zs")
    write_dataset(d / "shapes", size=20, seed=0)
    res = extract.run(extract.ExtractConfig(teacher="tiny-clip", weights=str(weights), dataset="vqa", split="val",
                                            data_root=d / "shapes" / "vqa", task="vqa", cache=d / "cache",
                                            num_workers=0, progress=False, device="cpu"), log=lambda m: None)
    return res.stores["zeroshot"].path


def _zeroshot_section() -> str:
    text = STORE_FORMAT.read_text()
    return text.split("## Zero-shot store", 1)[1].split("\n## ", 1)[0]


def test_zeroshot_store_is_as_documented(zeroshot_store):
    import numpy as np
    import zarr

    g = zarr.open_group(zeroshot_store, mode="r")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in _zeroshot_section().splitlines()
            if line.startswith("| `")]
    assert {r[0].strip("`") for r in rows} == set(g.array_keys())
    for name, shape, dtype, dims, _ in rows:
        a = g[name.strip("`")]
        assert a.ndim == len([x for x in shape.strip("()").split(",") if x.strip()]) and shape.startswith("(S,"), name
        assert a.shape[0] == g.attrs["mad"]["n_rows"]
        assert list(a.metadata.dimension_names) == [x.strip() for x in dims.split(",")], name
        got = np.dtype(a.dtype)
        assert (got.kind in "TO") if dtype == "string" else str(got) == dtype.strip("`"), (name, got, dtype)
    man = g.attrs["mad"]
    assert man["kind"] == "zeroshot" and man["task"] == "vqa" and man["prompt"] == "shapes"
    assert {"teacher", "template", "image_store", "dataset", "logits"} <= set(man)
    labels, logits = g["candidate_label"][:], g["logits"][:]
    assert np.array_equal(np.isnan(logits), labels == "")  # NaN exactly where padding is


def test_zeroshot_doc_snippet_gives_the_teacher_answers(zeroshot_store):
    from mad_pipeline.extraction.zeroshot import zeroshot_results

    (snippet,) = re.findall(r"```python\n(import numpy as np, zarr\n.*?)```", _zeroshot_section(), re.S)
    env = {"zeroshot_store": zeroshot_store}
    exec(snippet, env)  # noqa: S102 - the documentation's own snippet
    task, records = zeroshot_results(zeroshot_store)
    assert task == "vqa" and len(records) == len(env["answers"]) > 0
    assert {str(r["question_id"]): r["answer"] for r in records} == env["answers"]
