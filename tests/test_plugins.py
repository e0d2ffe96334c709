"""A fourth benchmark added from outside the library: ``tests/plugins/toy_task.py`` registers a reader and a Task,
and ``MAD_PLUGINS`` makes a ``mad`` subprocess import it; ``mad distill`` (extraction, zero-shot store, training,
official-format predictions) and ``mad eval`` then work on it as on the built-in three."""

from __future__ import annotations

import json
import os

from conftest import REPO, last_json, mad, make_photos


def _toy_data(root):
    rels = make_photos(root, 12, size=64)
    for split, part in (("train", rels[:8]), ("val", rels[8:])):
        lines = []
        for i, rel in enumerate(part):
            colour = ("red", "green", "blue")[i % 3]
            lines.append(json.dumps({"id": f"{split}-{i}", "image": rel, "text": f"a mostly {colour} photo",
                                     "label": i % 2}))
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


def test_a_plugin_task_trains_and_evaluates_through_the_cli(tiny_clip, tmp_path):
    cfg_file, weights = tiny_clip
    root = tmp_path / "toy"
    _toy_data(root)
    plugins = str(REPO / "tests" / "plugins")
    env = {"MAD_PLUGINS": "toy_task", "PYTHONPATH": os.pathsep.join(filter(None, [plugins, os.environ.get(
        "PYTHONPATH")])), "MAD_MODEL_CONFIGS": str(cfg_file), "MAD_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    common = ["--data-root", str(root), "--teacher", "tiny-clip", "--weights", str(weights), "--out", str(run),
              "--steps", "3", "--batch-size", "4", "--num-workers", "0", "--log-every", "1"]
    res = last_json(mad("distill", "--task", "toy-colour", *common, "--json", env=env))
    assert res["task"] == "toy-colour" and res["objective"] == "full" and res["train_samples"] == 8
    assert res["metric"] == "accuracy" and 0 <= res["value"] <= 100 and res["eval_split"] == "val"
    assert set(res["stores"]["train"]) == {"image", "text", "index", "zeroshot"}
    assert res["teacher_zeroshot"]["metric"] == "accuracy"
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval" not in r] == [1, 2, 3]
    assert all(r["distill"] > 0 for r in rows if "eval" not in r)
    preds = json.loads((run / "predictions" / "val.json").read_text())
    assert len(preds) == 4 and all(set(p) == {"id", "label"} for p in preds)

    ev = last_json(mad("eval", "--run", str(run), "--split", "val", "--out", str(tmp_path / "p.json"), "--json",
                       env=env))
    assert ev["task"] == "toy-colour" and ev["value"] == res["value"]
    assert json.loads((tmp_path / "p.json").read_text()) == preds

    # without the plugin the task does not exist: one line, no traceback
    bare = {k: v for k, v in env.items() if k != "MAD_PLUGINS"}
    p = mad("distill", "--task", "toy-colour", *common, "--overwrite", env=bare, check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == ["error: --task 'toy-colour': expected one of vqa, snli-ve, vcr"]
    # a plugin that cannot be imported: one line naming it
    p = mad("distill", "--task", "vqa", *common, env={**env, "MAD_PLUGINS": "no_such_plugin"}, check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr and "no_such_plugin" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
