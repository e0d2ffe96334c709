"""What a `mad run` YAML (and a `key=value` override) accepts as a value: every spelling of a number a user writes,
and one `error:` line (exit 2) naming the file, line or key for values nothing can run with -- NaN / infinity,
repeated keys, absurd nesting (also in JSON data files), a CUDA device the machine lacks, sizes and step counts no
run can use. In process, no stages run."""

from __future__ import annotations

import os

import pytest
from mad_pipeline.stages.pipeline import load_config

from mad_pipeline.errors import InputError
from mad_pipeline.training.config import TrainConfig

MAX_STEPS, MAX_BATCH = 100_000_000, 65_536


def max_workers() -> int:
    return 4 * len(os.sched_getaffinity(0))

BASE = "task: vqa\ndata: {root: .}\n"


def _load(tmp_path, body: str, *overrides: str):
    f = tmp_path / "exp.yaml"
    f.write_text(BASE + body)
    return load_config(f, list(overrides)).values


@pytest.mark.parametrize("text, value", [
    ("1e-3", 1e-3), ("1E-3", 1e-3), ("1.0e-3", 1e-3), (".5", 0.5), ("5.", 5.0), ("1_000", 1000.0), ("+2e-4", 2e-4),
    ("2", 2.0), ('"1e-3"', 1e-3),
])
def test_every_number_spelling_is_a_number(tmp_path, text, value):
    assert _load(tmp_path, f"train:\n  lr: {text}\n")["train"]["lr"] == pytest.approx(value)
    assert _load(tmp_path, "", f"train.lr={text}")["train"]["lr"] == pytest.approx(value)


def test_integer_settings_take_integral_spellings(tmp_path):
    v = _load(tmp_path, "train:\n  steps: 1e3\n  batch_size: 1_024\n", "train.warmup=2.0")["train"]
    assert (v["steps"], v["batch_size"], v["warmup"]) == (1000, 1024, 2)
    assert all(type(v[k]) is int for k in ("steps", "batch_size", "warmup"))
    assert _load(tmp_path, "distill: {alpha: 2e1}\nfractions: [5e-1, 1]\n")["distill"]["alpha"] == 20.0
    with pytest.raises(InputError, match=r"train\.steps: expected an integer, got 2\.5"):
        _load(tmp_path, "train: {steps: 2.5}\n")
    with pytest.raises(InputError, match=r"override 'train.lr=fast': train\.lr: expected a number, got 'fast'"):
        _load(tmp_path, "", "train.lr=fast")


@pytest.mark.parametrize("body, override, expect", [
    ("train:\n  lr: .nan\n", (), r"exp\.yaml: train\.lr: expected a finite number, got nan"),
    ("train:\n  lr: .inf\n", (), r"exp\.yaml: train\.lr: expected a finite number, got inf"),
    ("distill: {alpha: -.inf}\n", (), r"distill\.alpha: expected a finite number, got -inf"),
    ("fractions: [.NaN]\n", (), r"fractions\[0\]: expected a finite number, got nan"),
    ("", ("train.grad_clip=nan",), r"override 'train.grad_clip=nan': train\.grad_clip: expected a finite number"),
    ("train:\n  steps: 1000000000000000000000000000000\n", (),
     rf"train\.steps: must be at most {MAX_STEPS:,} \(more steps than a run can finish\), got 1e\+30"),
    ("train:\n  batch_size: 1000000000000\n", (),
     rf"train\.batch_size: must be at most {MAX_BATCH:,} \(more samples than one batch can hold\), got 1e\+12"),
    ("eval_batch_size: 1000000000000\n", (), r"eval_batch_size: must be at most"),
    ("num_workers: 100000\n", (), rf"exp\.yaml: num_workers: at most {max_workers()} \(4 per CPU core"),
    ("", ("num_workers=100000",), rf"override 'num_workers=100000': num_workers: at most {max_workers()}"),
    ("device: cuda:99\n", (), r"exp\.yaml: device: cuda:99: (no CUDA device|this machine has)"),
    ("device: nonsense\n", (), r"exp\.yaml: device: 'nonsense': not a device"),
    ("train:\n  steps: 3\n  lr: 1e-3\n  steps: 4\n", (),
     r"exp\.yaml: line 6: duplicate key 'steps' \(first at line 4\)"),
    ("task: snli-ve\n", (), r"exp\.yaml: line 3: duplicate key 'task' \(first at line 1\)"),
    ("name: " + "[" * 200 + "]" * 200 + "\n", (), r"exp\.yaml: line 3: nested deeper than 32 levels"),
    ("name: " + "[" * 5000 + "]" * 5000 + "\n", (), r"exp\.yaml: line 3: nested deeper than 32 levels"),
    ("", ("train={steps: 1, steps: 2}",), r"override 'train=\{steps: 1, steps: 2\}': duplicate key 'steps'"),
    ("", ("name=" + "[" * 3000,), r"override 'name=\[\[\[.*\.\.\.': nested deeper than 32 levels"),
])
def test_values_nothing_can_run_with_are_one_line(tmp_path, body, override, expect):
    with pytest.raises(InputError, match=expect) as e:
        _load(tmp_path, body, *override)
    assert "\n" not in str(e.value)


def test_the_cli_says_it_in_one_line_even_for_a_dry_run(tmp_path, capsys):
    """`mad run --dry-run` validated nothing of this before: it planned 100000 workers and a nested document
    overflowed the stack."""
    from mad_pipeline.cli.main import main

    f = tmp_path / "exp.yaml"
    for body, expect in (("num_workers: 100000\n", "num_workers: at most"),
                         ("name: " + "[" * 3000 + "]" * 3000 + "\n", "nested deeper than 32 levels"),
                         ("train: {lr: .nan}\n", "train.lr: expected a finite number, got nan")):
        f.write_text(BASE + body)
        with pytest.raises(SystemExit) as e:
            main(["run", str(f), "--dry-run", "--cache", str(tmp_path / "cache")])
        lines = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {f}: "), lines
        assert expect in lines[0], lines


def test_train_config_bounds_on_the_command_line():
    for kw, expect in ((dict(steps=10**30), r"--steps must be at most 100,000,000"),
                       (dict(batch_size=10**12), r"--batch-size must be at most 65,536"),
                       (dict(lr=float("nan")), r"--lr: nan is not a finite number"),
                       (dict(lr=float("inf")), r"--lr: inf is not a finite number"),
                       (dict(num_workers=100000), rf"--num-workers 100000: at most {max_workers()}"),
                       (dict(num_workers="100000"), rf"--num-workers 100000: at most {max_workers()}"),
                       (dict(device="cuda:99"), r"--device cuda:99: (no CUDA device|this machine has)"),
                       (dict(steps=0), r"--steps must be at least 1, got 0"),
                       (dict(lr=0.0), r"--lr 0.0: the learning rate must be > 0")):
        with pytest.raises(InputError, match=expect):
            TrainConfig(**kw)
    assert TrainConfig(steps=MAX_STEPS, batch_size=MAX_BATCH, num_workers=max_workers()).steps == MAX_STEPS


def test_deeply_nested_json_in_data_files_is_one_line(tmp_path):
    """A JSON document or JSONL line nested deeper than Python's parser recurses is a bad input like any other."""
    from mad_pipeline.data.jsonio import load_json
    from mad_pipeline.data.manifest import read_jsonl_manifest

    deep = "[" * 100_000 + "]" * 100_000
    doc = tmp_path / "annotations.json"
    doc.write_text(deep)
    with pytest.raises(InputError, match=r"annotations\.json: JSON nested too deeply to read"):
        load_json(doc)
    man = tmp_path / "m.jsonl"
    man.write_text('{"id": 0, "text": "ok"}\n{"id": 1, "text": ' + deep + "}\n")
    with pytest.raises(InputError, match=r"m\.jsonl:2: JSON nested too deeply to read"):
        read_jsonl_manifest(man, tmp_path)
    ds = read_jsonl_manifest(man, tmp_path, on_error="skip")
    assert [s.id for s in ds.samples] == ["0"] and ds.skipped[0].reason == "JSON nested too deeply to read"
