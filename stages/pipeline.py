"""``mad run``: one YAML file -> data, extract, distill, eval and report stages, each cached by content key.

``run(cfg)`` loads and validates the config (:mod:`mad_pipeline.pipeline.config`), expands it into stages
(:mod:`mad_pipeline.pipeline.plan`), then walks them in order. For each stage it computes the key from its own
value-changing settings and its inputs' keys, and either serves it from ``<cache>/runs/<kind>/<key>/stage.json``
(written last, so only complete stages are served) or runs it through the ordinary stages (:mod:`.extract`,
:mod:`.distill`, :mod:`.evaluate`) and then writes the marker. Feature stores are stage 1's own content-addressed
stores: an extract stage is cached when its marker is there and every store it names is found by
:meth:`Cache.locate` (local, then the shared caches); when it runs but every store is found in a cache, no teacher
forward runs and it still counts as cached.

``dry_run`` computes the same keys without side effects: no stage runs, nothing is written (not even hash memos), and
stages whose key depends on something not computed yet show as ``to-run``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mad_pipeline.cache import Cache
from mad_pipeline.errors import InputError
from mad_pipeline.hashing import to_jsonable
from mad_pipeline.pipeline import config as config_lib
from mad_pipeline.pipeline import plan as plan_lib
from mad_pipeline.pipeline import report as report_lib
from mad_pipeline.pipeline.plan import Stage

from . import distill as distill_stage
from . import evaluate as eval_stage
from . import extract as extract_stage

# TrainConfig fields that do not change the trained weights (never part of a key)
_TRAIN_NOT_IN_KEY = ("num_workers", "device", "eval_every", "eval_batch_size", "checkpoint_every", "keep_checkpoints",
                     "log_every")


@dataclass(frozen=True)
class RunConfig:
    config: Path  # the pipeline YAML
    overrides: tuple[str, ...] = ()  # key=value
    dry_run: bool = False
    cache: Path | None = None  # else the YAML's `cache`, else MAD_CACHE / the user cache dir
    out: Path | None = None  # else the YAML's `out`: where the report files are copied
    progress: bool = True


@dataclass
class RunResult:
    source: str
    config: dict[str, Any]
    cache: str
    dry_run: bool
    stages: list[Stage]
    table: dict[str, Any] | None = None
    report_files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.stages:
            out[s.status] = out.get(s.status, 0) + 1
        return out

    def as_dict(self) -> dict[str, Any]:
        extracted = any((s.record or {}).get("summary", {}).get("extracted") for s in self.stages
                        if s.kind == "extract" and s.status == "ran")
        return {
            "config": self.source, "name": self.config["name"], "task": self.config["task"], "cache": self.cache,
            "dry_run": self.dry_run, "counts": self.counts(),
            "extracted": extracted,  # any teacher forward pass (a store built)
            "trained": sum(1 for s in self.stages if s.kind == "distill" and s.status == "ran"),
            "stages": [s.summary() for s in self.stages],
            "report": {"files": self.report_files, "table": self.table} if self.table else None,
            "resolved_config": self.config, "seconds": round(self.seconds, 3),
        }


def run(cfg: RunConfig, log: Callable[[str], None] = print,
        on_stage: Callable[[Stage, int, int, str], None] | None = None) -> RunResult:
    """Run (or, with ``dry_run``, plan) the pipeline. ``on_stage(stage, i, n, event)`` is called with event
    ``start`` before a stage runs and ``done`` once it is cached, ran or is known to need a run."""
    t0 = time.perf_counter()
    pcfg = config_lib.load_config(cfg.config, cfg.overrides)
    _quiet_transformers()  # transformers' own "Loading weights" bars would interleave with the stage lines
    values = pcfg.values
    root = cfg.cache or (Path(values["cache"]) if values["cache"] else None)
    cache = Cache.at(root)
    runner = _Runner(values, pcfg.source, cache, cfg, log)
    stages = plan_lib.expand(values)
    n = len(stages)
    for i, st in enumerate(stages, 1):
        runner.resolve(st)
        if st.status == "pending":
            if cfg.dry_run:
                st.status = "to-run"
            else:
                if on_stage:
                    on_stage(st, i, n, "start")
                runner.execute(st)
        if on_stage:
            on_stage(st, i, n, "done")
        runner.by_id[st.id] = st
    result = RunResult(pcfg.source, values, str(cache.root), cfg.dry_run, stages, seconds=0.0)
    rep = stages[-1]
    if rep.record is not None:
        result.table = rep.record["result"]["table"]
        files = dict(rep.record["result"]["files"])
        out = cfg.out or (Path(values["out"]) if values["out"] else None)
        if out is not None and not cfg.dry_run:
            out = Path(out)
            out.mkdir(parents=True, exist_ok=True)
            for k, p in list(files.items()):
                dst = out / Path(p).name
                shutil.copyfile(p, dst)
                files[k] = str(dst)
            (out / "config.resolved.json").write_text(json.dumps(values, indent=2) + "\n")
        result.report_files = files
    result.seconds = time.perf_counter() - t0
    return result


class _Runner:
    def __init__(self, values: dict[str, Any], source: str, cache: Cache, cfg: RunConfig, log):
        from mad_pipeline.training.data import DEFAULT_EVAL_SPLITS

        self.v = values
        self.source = source
        self.cache = cache
        self.cfg = cfg
        self.log = log
        self.by_id: dict[str, Stage] = {}
        self.task = values["task"]
        self.reader = values["data"]["dataset"] or self.task
        self.eval_split = values["data"]["eval_split"] or DEFAULT_EVAL_SPLITS[self.task]
        self.data_root: Path | None = Path(values["data"]["root"]) if values["data"]["root"] else None
        self._fp: dict[str, str] = {}
        self._ident: dict[str, Any] | None = None
        if self.data_root is not None and not self.data_root.is_dir():
            raise InputError(f"{source}: data.root: {self.data_root} is not a directory")
        self._check_names()

    def _check_names(self) -> None:
        """Names a run needs, checked before any work (one line naming the YAML key)."""
        from mad_pipeline.errors import MadError
        from mad_pipeline.students import STUDENTS
        from mad_pipeline.teachers.registry import get_teacher_spec

        if self.v["student"] not in STUDENTS:
            raise InputError(f"{self.source}: student: unknown student {self.v['student']!r}; expected one of "
                             f"{', '.join(STUDENTS)}")
        if all(m["preset"] == "baseline" for m in self.v["methods"].values()):
            return
        for key in ("teacher", "text_teacher"):
            if self.v[key]:
                try:
                    get_teacher_spec(self.v[key])
                except MadError as e:
                    raise InputError(f"{self.source}: {key}: {e}") from None
        for key in ("teacher_weights", "text_weights"):
            w = self.v[key]
            if w and not w.startswith("local-dir:") and not Path(w).exists():
                raise InputError(f"{self.source}: {key}: {w} does not exist")

    # ---------------------------------------------------------------------------------------------- keys
    def fingerprint(self, split: str) -> str | None:
        if self.data_root is None:
            return None
        if split not in self._fp:
            memo = self.cache.root / "hash-memo"  # a dry run reads it and writes nothing
            self._fp[split] = plan_lib.split_fingerprint(self.reader, self.data_root, split, memo,
                                                         write_memo=not self.cfg.dry_run)
        return self._fp[split]

    def teacher_identity(self) -> dict[str, Any] | None:
        """The identities stage 1 keys its stores by (memoised under the cache's identities/). In a dry run an
        identity that is not memoised yet is unknown (it would take loading the teacher): None."""
        if self._ident is not None:
            return self._ident
        from mad_pipeline.teachers.identity import LazyTeacher

        memo = self.cache.root / "identities"
        v = self.v

        def lazy(name, weights):
            return LazyTeacher(name, weights, v["device"], v["precision"], None, memo)

        try:
            image = lazy(v["teacher"], v["teacher_weights"])
            text = lazy(v["text_teacher"], v["text_weights"]) if v["text_teacher"] else None
        except (ValueError, OSError) as e:
            raise InputError(f"{self.source}: teacher: {e}") from None
        if self.cfg.dry_run and any(t is not None and not t._memo.exists() for t in (image, text)):
            return None
        ident = {"teacher": v["teacher"], "image": image.identity("image") if "image" in image.towers else None,
                 "text": image.identity("text") if "text" in image.towers else None,
                 "text_teacher": None}
        if text is not None:
            ident["text_teacher"] = {"name": v["text_teacher"], "text": text.identity("text")}
        self._ident = ident
        return ident

    def resolve(self, st: Stage) -> None:
        """Compute the stage's key (None when an input is not known yet) and serve it from the cache if complete."""
        got = getattr(self, f"_key_{st.kind}")(st)
        if got is None:
            st.key = None
            return
        params, inputs = got
        st.meta["_inputs"] = inputs
        st.meta["_params"] = params
        st.key = plan_lib.stage_key(st.kind, params, inputs)
        rec = plan_lib.read_marker(self.cache.root, st.kind, st.key)
        if rec is not None and self._still_valid(st, rec):
            st.record = rec
            st.status = "cached"

    def _still_valid(self, st: Stage, rec: dict) -> bool:
        if st.kind == "extract":  # every store it names must still be found (gc may have removed one)
            return all(self.cache.locate(kind, s["key"]) is not None for kind, s in rec["result"]["stores"].items())
        if st.kind == "distill":
            return (Path(rec["path"]) / "run" / "student" / "student.json").exists()
        if st.kind == "data":
            return (Path(rec["path"]) / "world" / "shapes.json").exists()
        if st.kind == "report":
            return all(Path(p).exists() for p in rec["result"]["files"].values())
        return True

    def _dep(self, st: Stage, role: str) -> Stage | None:
        d = self.by_id.get(st.deps[role])
        return d if d is not None and d.record is not None else None

    def _key_data(self, st: Stage):
        from mad_pipeline.shapes.formats import FORMAT_VERSION as SHAPES_FORMAT

        return {**st.params, "generator_format": SHAPES_FORMAT}, {}

    def _data_ready(self, st: Stage) -> bool:
        if "data" not in st.deps:
            return True
        d = self._dep(st, "data")
        if d is None:
            return False
        if self.data_root is None:
            self.data_root = Path(d.record["path"]) / "world" / d.record["result"]["data_roots"][self.task]
        return True

    def _key_extract(self, st: Stage):
        if not self._data_ready(st):
            return None
        ident = self.teacher_identity()
        if ident is None:
            return None
        params = {**st.params, "task": self.task, "reader": self.reader, "vocab_min_count": self.v["vocab_min_count"],
                  "zs_prompt": "auto", "teachers": ident}
        return params, {"data": self.fingerprint(st.params["split"])}

    def _key_distill(self, st: Stage):
        if not self._data_ready(st):
            return None
        m = st.meta
        mad = config_lib.mad_config(self.v, m["method"], self.source)
        train = dataclasses.asdict(self._train(m["seed"]))
        for k in _TRAIN_NOT_IN_KEY:
            train.pop(k, None)
        params = {"method": m["method"], "task": self.task, "reader": self.reader,
                  "train_split": self.v["data"]["train_split"], "eval_split": self.eval_split,
                  "student": self.v["student"], "pretrained": _pretrained_ident(self.v["pretrained"]),
                  "mad": to_jsonable(dataclasses.asdict(mad)), "train": to_jsonable(train),
                  "fraction": m["fraction"], "subset_seed": m["subset_seed"],
                  "vocab_min_count": self.v["vocab_min_count"]}
        inputs: dict[str, Any] = {"train_data": self.fingerprint(self.v["data"]["train_split"]),
                                  "eval_data": self.fingerprint(self.eval_split)}
        if "train_stores" in st.deps:
            tr, ev = self._dep(st, "train_stores"), self._dep(st, "eval_stores")
            if tr is None or ev is None:
                return None
            inputs["stores"] = {"train": {k: s["key"] for k, s in tr.record["result"]["stores"].items()},
                                "eval": {k: s["key"] for k, s in ev.record["result"]["stores"].items()}}
        return params, inputs

    def _key_eval(self, st: Stage):
        d = self._dep(st, "distill")
        if d is None or not self._data_ready(st):
            return None
        return {**st.params, "task": self.task, "reader": self.reader}, {
            "distill": d.key, "data": self.fingerprint(st.params["split"])}

    def _key_report(self, st: Stage):
        evals = []
        for eid in st.deps.values():
            e = self.by_id.get(eid)
            if e is None or e.key is None or e.record is None:
                return None
            evals.append([e.meta["method"], e.meta["fraction"], e.meta["seed"], e.meta["split"], e.key])
        return {**st.params, "task": self.task}, {"evals": evals}

    # ---------------------------------------------------------------------------------------------- execution
    def execute(self, st: Stage) -> None:
        if st.key is None:  # an input became known only now (upstream ran): key it again
            self.resolve(st)
            if st.key is None:
                raise AssertionError(f"stage {st.id}: inputs not ready")
            if st.status == "cached":
                return
        with self.cache.lock(f"stage-{st.key}", on_wait=lambda: self.log(f"{st.id}: another run holds it; waiting")):
            rec = plan_lib.read_marker(self.cache.root, st.kind, st.key)  # another run may have just finished it
            if rec is not None and self._still_valid(st, rec):
                st.record, st.status = rec, "cached"
                return
            t0 = time.perf_counter()
            result, summary, status = getattr(self, f"_run_{st.kind}")(st)
            st.record = plan_lib.write_marker(
                self.cache.root, st, inputs=st.meta["_inputs"], config=self.v, result=result, summary=summary,
                seconds=time.perf_counter() - t0)
            st.status = status

    def _run_data(self, st: Stage):
        from mad_pipeline.shapes.formats import write_dataset

        d = plan_lib.stage_dir(self.cache.root, "data", st.key)
        man = write_dataset(d / "world", size=st.params["size"], seed=st.params["seed"])
        return ({"data_roots": man["data_roots"], "manifest": man},
                {"size": st.params["size"], "seed": st.params["seed"]}, "ran")

    def _distill_cfg(self, method: str, fraction: float, seed: int, subset_seed: int, out: Path, overwrite=False):
        v = self.v
        return distill_stage.DistillConfig(
            task=self.task, data_root=self.data_root, out=out, teacher=v["teacher"], weights=v["teacher_weights"],
            text_teacher=v["text_teacher"], text_weights=v["text_weights"], student=v["student"],
            pretrained=v["pretrained"], dataset=v["data"]["dataset"], train_split=v["data"]["train_split"],
            eval_split=self.eval_split, mad=config_lib.mad_config(v, method, self.source), train=self._train(seed),
            train_fraction=fraction, subset_seed=subset_seed, vocab_min_count=v["vocab_min_count"],
            precision=v["precision"], cache=self.cache.root, extract_batch_size=v["extract_batch_size"],
            overwrite=overwrite, progress=self.cfg.progress)

    def _train(self, seed: int):
        from mad_pipeline.training.trainer import TrainConfig

        return TrainConfig(**config_lib.train_kwargs(self.v), seed=seed)

    def _run_extract(self, st: Stage):
        p = st.params
        method = next(m for m, s in self.v["methods"].items() if s["preset"] != "baseline")
        template = self._distill_cfg(method, 1.0, 0, 0, Path("."))
        seed = p["subset_seed"] if p["subset_seed"] is not None else 0
        # exactly the ExtractConfig stage 2 builds for itself, so its own lookups hit these stores
        ecfg = distill_stage._extract_cfg(template, self.reader, p["split"], p["fraction"], seed)
        res = extract_stage.run(ecfg, log=self.log)
        stores = {k: {"key": s.key, "cached": s.cached, "source": s.source, "rows": s.rows,
                      "rows_computed": s.rows_computed} for k, s in res.stores.items()}
        built = [k for k, s in res.stores.items() if not s.cached]
        summary = {"stores": stores, "extracted": bool(built), "teacher_loaded": res.teacher_loaded,
                   "samples": res.samples}
        return {"stores": stores, "extract": res.as_dict()}, summary, "ran" if built else "cached"

    def _run_distill(self, st: Stage):
        m = st.meta
        out = plan_lib.stage_dir(self.cache.root, "distill", st.key) / "run"
        dcfg = self._distill_cfg(m["method"], m["fraction"], m["seed"], m["subset_seed"], out)
        run_json = out / "run.json"
        if run_json.exists():  # an interrupted run of this key resumes; one with other (non-key) paths starts over
            old = json.loads(run_json.read_text()).get("fingerprint")
            if old != distill_stage.fingerprint(dcfg):
                dcfg = dataclasses.replace(dcfg, overwrite=True)
        res = distill_stage.run(dcfg, log=self.log)
        met = res.metrics
        summary = {"metric": met["metric"], "value": met["value"], "steps": met["steps"],
                   "train_samples": met["train_samples"], "resumed": met["resumed"], "run": str(out)}
        return {"metrics": met}, summary, "ran"

    def _run_eval(self, st: Stage):
        d = self._dep(st, "distill")
        run_dir = Path(d.record["path"]) / "run"
        out = plan_lib.stage_dir(self.cache.root, "eval", st.key) / "predictions.json"
        res = eval_stage.run(eval_stage.EvalConfig(run=run_dir, split=st.params["split"], data_root=self.data_root,
                                                   out=out, batch_size=self.v["eval_batch_size"],
                                                   num_workers=self.v["num_workers"], device=self.v["device"]))
        summary = {"metric": res["metric"], "value": res["value"], "n": res["n"]}
        return res, summary, "ran"

    def _run_report(self, st: Stage):
        records = []
        for eid in st.deps.values():
            e = self.by_id[eid]
            s = e.record["summary"]
            records.append({"method": e.meta["method"], "fraction": e.meta["fraction"], "seed": e.meta["seed"],
                            "split": e.meta["split"], "metric": s["metric"], "value": s["value"], "task": self.task,
                            "source": str((Path(self._dep(e, "distill").record["path"]) / "run").resolve())})
        table = report_lib.aggregate(records, title=self.v["name"])
        d = plan_lib.stage_dir(self.cache.root, "report", st.key)
        files = report_lib.write_report(table, d)
        (d / "report.json").write_text(json.dumps({"table": table, "records": records}, indent=2) + "\n")
        return {"table": table, "files": files, "records": records}, {"files": files}, "ran"


def _quiet_transformers() -> None:
    """No 'Loading weights' progress bars from transformers (the stage lines say what is running)."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


def _pretrained_ident(p: str | None):
    if not p:
        return None
    path = Path(p)
    if path.exists():
        from mad_pipeline.hashing import sha256_weights

        return {"sha256": sha256_weights(path)}
    return p


__all__ = ["RunConfig", "RunResult", "run"]
