"""Expand a pipeline config into stages, key each stage, and keep its output in the cache.

Stages, in order (each depends only on stages before it):

``data``     the shapes world, generated once per (size, seed)              only with ``data.shapes``
``student-pretrain``  the student pretrained on the world's captions         only with ``init: student-pretrain``
``extract``  the feature stores of one split (a training subset: split, fraction, subset seed), via stage 1
``distill``  one training run per (method, fraction, seed), via stage 2
``eval``     one trained student on one evaluation split
``report``   the table over methods, fractions and seeds (Markdown, CSV, PNG)

A config with several tasks (``task: [vqa, snli-ve, vcr]``) is one such plan per task (:func:`expand_study`), each
task's stage ids prefixed with its name (``vcr/distill:full@0.05/s1``, ``vcr/report``), sharing the ``data`` stage:
each task's stages and keys are exactly those of the same config with that one task (a ``student-pretrain`` stage
is shared too, unless a task's ``per_task`` settings give it other pretraining settings).

A stage's key is the sha256 of the canonical JSON of ``{format, kind, params, inputs}``: ``params`` are the stage's
own settings that change its values (never batch sizes, workers or devices), ``inputs`` the content keys of what it
reads: the data (a fingerprint of the split's samples and image bytes), the teachers' identities, the feature
stores' keys, the upstream stages' keys (what each kind puts in them: :mod:`.resolve`). Outputs live at
``<cache>/runs/<kind>/<key>/`` with ``stage.json`` (the resolved config, the keys, the library versions, the result)
written last, atomically: a stage directory without it is unfinished and never served. Feature stores stay where
stage 1 publishes them (``<cache>/stores/``), found by key through :class:`mad_pipeline.cache.Cache` (local, then
shared caches).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..hashing import canonical_json, content_key, sha256_file, sha256_text
from ..jsonio import save_memo
from ..students.weights import PRETRAIN_STAGE as PRETRAIN_KIND  # its key and marker: the stage's own
from .methods import for_method, inits

PIPELINE_FORMAT = 1
MARKER = "stage.json"
KINDS = ("data", PRETRAIN_KIND, "extract", "distill", "eval", "report")


@dataclass
class Stage:
    kind: str
    id: str  # unique within a plan, e.g. "distill:full@0.05/s1"
    label: str  # for people: "full, 5%, seed 1"
    params: dict[str, Any]  # settings of this stage that change its output
    deps: dict[str, str] = field(default_factory=dict)  # role -> stage id
    meta: dict[str, Any] = field(default_factory=dict)  # method, fraction, seed, split (not part of the key)
    key: str | None = None
    status: str = "pending"  # cached | ran | to-run
    record: dict[str, Any] | None = None  # stage.json once cached or run

    def summary(self) -> dict[str, Any]:
        out = {"kind": self.kind, "id": self.id, "label": self.label, "key": self.key, "status": self.status,
               **{k: v for k, v in self.meta.items() if not k.startswith("_")}}
        if self.record is not None:
            out["path"] = self.record.get("path")
            out["seconds"] = self.record.get("seconds")
            out.update(self.record.get("summary", {}))
        return out


def stage_key(kind: str, params: dict[str, Any], inputs: dict[str, Any]) -> str:
    return content_key({"format": PIPELINE_FORMAT, "kind": kind, "params": params, "inputs": inputs})


def fraction_label(f: float) -> str:
    pct = f * 100
    return f"{pct:g}%"


# ----------------------------------------------------------------------------------------------------------------------
# expansion


def eval_split_of(values: dict[str, Any]) -> str:
    """The split training is evaluated on: ``data.eval_split``, else the task's default."""
    from ..tasks import task_class

    return values["data"]["eval_split"] or task_class(values["task"]).default_eval_split


ZEROSHOT_DEP = "zeroshot:"  # a report's dependency on the extract stage of one evaluated split (+ its name)


def expand(values: dict[str, Any]) -> list[Stage]:
    """The stages of a validated config (see :mod:`.config`), in execution order, without keys."""
    data = values["data"]
    train_split = data["train_split"]
    eval_split = eval_split_of(values)
    eval_splits = [eval_split] + [s for s in data["eval_splits"] if s != eval_split]
    stages: list[Stage] = []
    data_dep: dict[str, str] = {}
    if data["shapes"]["size"] is not None:
        sh = data["shapes"]
        stages.append(Stage("data", "data:shapes", f"shapes world, {sh['size']} training images, seed {sh['seed']}",
                            {"world": "shapes", "size": sh["size"], "seed": sh["seed"]}))
        data_dep = {"data": "data:shapes"}
    if PRETRAIN_KIND in inits(values):  # students (all, or some methods') start from this config's own pretraining
        params = {**values["student_pretrain"], "student": values["student"]}
        stages.append(Stage(PRETRAIN_KIND, PRETRAIN_KIND, f"{params['student']}, {params['steps']} steps", params))

    distilling = [m for m, spec in values["methods"].items() if spec["preset"] != "baseline"]
    extracts: dict[tuple, str] = {}

    def extract_id(split: str, fraction: float, subset_seed: int | None) -> str:
        ident = (split, fraction, subset_seed if fraction < 1 else None)
        if ident not in extracts:
            sid = f"extract:{split}" if fraction >= 1 else f"extract:{split}@{fraction:g}/s{subset_seed}"
            label = split if fraction >= 1 else f"{split}, {fraction_label(fraction)}, subset seed {subset_seed}"
            stages.append(Stage("extract", sid, label, {"split": split, "fraction": fraction,
                                                         "subset_seed": ident[2]},
                                deps=dict(data_dep), meta={"split": split, "fraction": fraction,
                                                           "subset_seed": ident[2]}))
            extracts[ident] = sid
        return extracts[ident]

    if distilling:
        for fraction in values["fractions"]:
            for seed in values["seeds"]:
                ss = seed if values["subset_seed"] is None else values["subset_seed"]
                extract_id(train_split, fraction, ss)
        for split in eval_splits:  # the eval split's stores; the others' for the teacher's zero-shot reference
            extract_id(split, 1.0, 0)

    evals: list[str] = []
    for method, spec in values["methods"].items():
        init_dep = {"init": PRETRAIN_KIND} if for_method(values, method).get("init") == PRETRAIN_KIND else {}
        for fraction in values["fractions"]:
            for seed in values["seeds"]:
                ss = seed if values["subset_seed"] is None else values["subset_seed"]
                did = f"distill:{method}@{fraction:g}/s{seed}"
                deps = {**data_dep, **init_dep}
                if spec["preset"] != "baseline":
                    deps.update(train_stores=extract_id(train_split, fraction, ss),
                                eval_stores=extract_id(eval_split, 1.0, 0))
                meta = {"method": method, "fraction": fraction, "seed": seed, "subset_seed": ss}
                stages.append(Stage("distill", did, f"{method}, {fraction_label(fraction)}, seed {seed}",
                                    {"method": method}, deps=deps, meta=meta))
                for split in eval_splits:
                    eid = f"eval:{method}@{fraction:g}/s{seed}:{split}"
                    stages.append(Stage("eval", eid, f"{method}, {fraction_label(fraction)}, seed {seed} on {split}",
                                        {"split": split}, deps={"distill": did, **data_dep},
                                        meta={**meta, "split": split}))
                    evals.append(eid)
    # the report also reads the teacher's zero-shot answers on each evaluated split (its reference lines)
    zeroshot = {f"{ZEROSHOT_DEP}{s}": extracts[(s, 1.0, None)] for s in eval_splits if (s, 1.0, None) in extracts}
    stages.append(Stage("report", "report", values["name"], {"name": values["name"]},
                        deps={**{e: e for e in evals}, **zeroshot}))
    # extraction first (all of it), then the runs: the order a person reads the plan in
    order = {k: i for i, k in enumerate(KINDS)}
    stages.sort(key=lambda s: order[s.kind] if s.kind in ("data", PRETRAIN_KIND, "extract") else len(KINDS))
    return stages


def expand_study(values: dict[str, Any]) -> list[Stage]:
    """The stages of a config with one task or several (``task: [vqa, vcr]``): the data stage once, then each task's
    own plan (:func:`expand` of the config with that task) with its ids prefixed by the task; ``meta["task"]`` names
    the task of every stage but the shared data stage."""
    from .config import for_task, tasks_of

    tasks = tasks_of(values)
    if len(tasks) == 1:
        stages = expand(values)
        for st in stages:
            if st.kind != "data":
                st.meta["task"] = tasks[0]
        return stages
    out: list[Stage] = []
    for task in tasks:
        shared: set[str] = set()  # the shared stages this task's stages depend on
        for st in expand(for_task(values, task)):
            if st.kind == "data":
                if not any(s.id == st.id for s in out):
                    out.append(st)
                continue
            if st.kind == PRETRAIN_KIND:  # shared by the tasks with the same pretraining settings
                same = next((s for s in out if s.id == st.id), None)
                if same is None or same.params == st.params:
                    if same is None:
                        out.append(st)
                    shared.add(st.id)
                    continue

            def pre(ident: str, task: str = task, shared: set[str] = shared) -> str:
                return ident if ident.startswith("data:") or ident in shared else f"{task}/{ident}"

            st.id, st.label = pre(st.id), f"{task}: {st.label}"
            st.deps = {pre(role) if st.kind == "report" else role: pre(d) for role, d in st.deps.items()}
            st.meta["task"] = task
            out.append(st)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# stage outputs in the cache


def stage_dir(cache_root: Path, kind: str, key: str) -> Path:
    return Path(cache_root) / "runs" / kind / key


def read_marker(cache_root: Path, kind: str, key: str) -> dict[str, Any] | None:
    """The completed stage's record, or None (never ran, unfinished, or another key's)."""
    p = stage_dir(cache_root, kind, key) / MARKER
    try:
        rec = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if rec.get("key") != key or rec.get("kind") != kind or not rec.get("complete"):
        return None
    rec["path"] = str(p.parent)
    return rec


def still_valid(kind: str, rec: dict[str, Any], locate: Callable[[str, str], Any]) -> bool:
    """Whether a completed stage's outputs are all still there: an extract stage's stores (found by
    ``locate(kind, key)``: gc may have removed one), a distill stage's student, the generated world, the report
    files."""
    if kind == "extract":
        return all(locate(k, s["key"]) is not None for k, s in rec["result"]["stores"].items())
    if kind == "distill":
        return (Path(rec["path"]) / "run" / "student" / "student.json").exists()
    if kind == "data":
        return (Path(rec["path"]) / "world" / "shapes.json").exists()
    if kind == "report":
        return all(Path(p).exists() for p in rec["result"]["files"].values())
    if kind == PRETRAIN_KIND:
        return (Path(rec["path"]) / "weights" / "model.safetensors").exists()
    return True


def write_marker(cache_root: Path, stage: Stage, *, inputs: dict[str, Any], config: dict[str, Any],
                 result: dict[str, Any], summary: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Write ``stage.json`` last and atomically: from now on the stage is served from the cache."""
    from ..machine import machine
    from ..versions import library_versions

    d = stage_dir(cache_root, stage.kind, stage.key)
    d.mkdir(parents=True, exist_ok=True)
    rec = {
        "format": PIPELINE_FORMAT, "kind": stage.kind, "key": stage.key, "id": stage.id, "label": stage.label,
        "params": stage.params, "inputs": inputs, "meta": {k: v for k, v in stage.meta.items()
                                                           if not k.startswith("_")},
        "summary": summary, "result": result, "config": config, "library_versions": library_versions(),
        "machine": machine(),  # the kind of CPU and threads: a long training's bytes depend on them, the key does not
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "seconds": round(seconds, 3),
        "complete": True,
    }
    tmp = d / f".{MARKER}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(rec, indent=2, default=str) + "\n")
    os.replace(tmp, d / MARKER)
    rec["path"] = str(d)
    return rec


# ----------------------------------------------------------------------------------------------------------------------
# content identities of inputs


def pretrained_identity(p: str | None) -> str | dict[str, str] | None:
    """The student's pretrained weights in a key: the sha256 of a local path's weights, else the hub id."""
    if not p:
        return None
    path = Path(p)
    if path.exists():
        from ..hashing import sha256_weights

        return {"sha256": sha256_weights(path)}
    return p


def split_fingerprint(reader: str, root: Path, split: str, memo_dir: Path | None, write_memo: bool = True) -> str:
    """Content key of one split: every sample (id, texts, labels) and the sha256 of every image's bytes -- the same
    digest stage 1 keys its dataset index by. Image hashes are memoised by (path, size, mtime) under ``memo_dir``,
    so a rerun stats the images instead of reading them."""
    from ..data import load_dataset
    from ..extraction.inputs import DatasetInputs, samples_digest

    ds = load_dataset(reader, root, split=split)
    memo_file = None
    memo: dict[str, list] = {}
    if memo_dir is not None:
        memo_file = Path(memo_dir) / f"{sha256_text(canonical_json([str(Path(root).resolve()), reader, split]))}.json"
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, json.JSONDecodeError):
            memo = {}
    inputs = DatasetInputs(image_hash={})
    changed = False
    for rel in ds.image_paths():
        p = ds.root / rel
        try:
            st = p.stat()
        except OSError as e:
            inputs.missing[rel] = e.strerror or "cannot read file"
            continue
        old = memo.get(rel)
        if old and old[0] == st.st_size and old[1] == st.st_mtime_ns:
            inputs.image_hash[rel] = old[2]
            continue
        try:
            h = sha256_file(p)
        except OSError as e:
            inputs.missing[rel] = e.strerror or "cannot read file"
            continue
        inputs.image_hash[rel] = h
        memo[rel] = [st.st_size, st.st_mtime_ns, h]
        changed = True
    inputs.text_hash = {t: sha256_text(t) for t in ds.texts()}
    if memo_file is not None and changed and write_memo:
        save_memo(memo_file, memo)
    return content_key({"reader": reader, "split": split, "samples": samples_digest(ds, inputs),
                        "missing": sorted(inputs.missing)})


__all__ = ["KINDS", "MARKER", "PIPELINE_FORMAT", "PRETRAIN_KIND", "Stage", "eval_split_of", "expand", "expand_study",
           "fraction_label", "pretrained_identity", "read_marker", "split_fingerprint", "stage_dir", "stage_key",
           "still_valid", "write_marker"]
