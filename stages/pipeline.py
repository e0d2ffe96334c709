"""``mad run``: one YAML file -> data, student-pretrain, extract, distill, eval and report stages, each cached by
content key.

``run(cfg)`` loads and validates the config (:func:`load_config`: the schema of :mod:`mad_pipeline.pipeline.config`
with the DistillConfig settings of :data:`YAML_KEYS`), expands it into stages (:mod:`mad_pipeline.pipeline.plan`),
then walks them in order. For each stage the resolver (:mod:`mad_pipeline.pipeline.resolve`) computes the key from
its own value-changing settings and its inputs' keys and serves it from ``<cache>/runs/<kind>/<key>/stage.json``
(written last, so only complete stages are served); otherwise it runs through the ordinary stages (:mod:`.extract`,
:mod:`.distill`, :mod:`.evaluate`) and then the marker is written. A ``student-pretrain`` stage (``init:
student-pretrain``, its settings under ``student_pretrain:``: :data:`PRETRAIN_YAML`) is :mod:`.student_pretrain`
itself: its key, cache entry and marker are the stage's own, so ``mad student pretrain`` with the same settings and
``mad run`` serve each other's result. Feature stores are stage 1's own content-addressed
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
from mad_pipeline.machine import machine_label
from mad_pipeline.pipeline import config as config_lib
from mad_pipeline.pipeline import plan as plan_lib
from mad_pipeline.pipeline import report as report_lib
from mad_pipeline.pipeline.config import PipelineConfig
from mad_pipeline.pipeline.plan import Stage
from mad_pipeline.pipeline.resolve import Resolver
from mad_pipeline.pipeline.schema import settings_keys
from mad_pipeline.students.weights import PRETRAIN_STAGE, RUN_INITS
from mad_pipeline.tasks import task_names

from . import distill as distill_stage
from . import evaluate as eval_stage
from . import extract as extract_stage
from . import student_pretrain as pretrain_stage
from .distill import DistillConfig

# The DistillConfig fields a `mad run` YAML sets, by their YAML key: the one table between the two names. Defaults,
# help and bounds are DistillConfig's own; the plan sets its other fields per stage (data root, run directory,
# objective, trainer, training fraction; the subset seed and evaluation split resolved).
YAML_KEYS = {
    "task": "task", "dataset": "data.dataset", "train_split": "data.train_split", "eval_split": "data.eval_split",
    "teacher": "teacher", "weights": "teacher_weights", "text_teacher": "text_teacher",
    "text_weights": "text_weights", "precision": "precision", "student": "student", "pretrained": "pretrained",
    "init": "init",  # the student's initialisation: pretrained (the preset's own weights) or scratch
    "fresh_pooler": "fresh_pooler",
    "subset_seed": "subset_seed", "vocab_min_count": "vocab_min_count", "extract_batch_size": "extract_batch_size",
    "vqa_eval": "vqa_eval", "nproc": "nproc",  # nproc: the processes of each distill stage (changes no key)
    "storage": "extract.storage", "keep_tokens": "extract.keep_tokens", "keep_policy": "extract.keep_policy",
    "dense": "extract.dense",  # dense joint-space features in the image stores (mad extract --dense)
}
# The StudentPretrainConfig fields a YAML sets under `student_pretrain:` (the settings of `mad student pretrain`): all
# but the student (the config's own `student:`) and those that change nothing (out, cache, progress).
PRETRAIN_SECTION = "student_pretrain"
PRETRAIN_YAML = tuple(f.name for f in dataclasses.fields(pretrain_stage.StudentPretrainConfig)
                      if f.name != "student" and f.metadata.get("key") is not False)


def schema() -> dict[str, Any]:
    """The ``mad run`` YAML schema (:func:`mad_pipeline.pipeline.config.schema`) with the DistillConfig settings of
    :data:`YAML_KEYS`."""
    names = task_names()
    one_of = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
    extras = {  # what DistillConfig's field descriptions do not say
        "task": {"kind": "custom", "parse": config_lib.parse_tasks(names),
                 "help": f"{one_of} (required), or a list of them: one study over several tasks"},
        "weights": {"kind": "path"}, "text_weights": {"kind": "path"},  # local files, relative to the YAML
        "precision": {"choices": ("auto", "fp32", "bf16")},
        "subset_seed": {"min": 0}, "vocab_min_count": {"min": 1}, "extract_batch_size": {"min": 1},
        "init": {"choices": RUN_INITS,
                 "help": "the students' initial weights: pretrained (the preset's own: vilt-tiny and vilt-mini-l3 "
                         "the shipped shapes-vilt-tiny and shapes-vilt-mini-l3), scratch, or student-pretrain (the "
                         "output of this config's student-pretrain stage, its settings under student_pretrain:)"},
    }
    keys = settings_keys(DistillConfig, YAML_KEYS, extras=extras)
    pretrain = settings_keys(pretrain_stage.StudentPretrainConfig, PRETRAIN_YAML)
    return config_lib.schema({**{YAML_KEYS[name]: key for name, key in keys.items()},
                              **{f"{PRETRAIN_SECTION}.{name}": key for name, key in pretrain.items()}})


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read, override and validate a ``mad run`` YAML; any mistake is one :class:`InputError` line naming the file
    (or the override) and the key."""
    return config_lib.load_config(path, overrides, schema=schema())


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
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> {table, files}; table: the first
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
            "reports": self.reports,  # per task (a config with several tasks has one report each)
            "resolved_config": self.config, "seconds": round(self.seconds, 3),
        }


def run(cfg: RunConfig, log: Callable[[str], None] = print,
        on_stage: Callable[[Stage, int, int, str], None] | None = None) -> RunResult:
    """Run (or, with ``dry_run``, plan) the pipeline. ``on_stage(stage, i, n, event)`` is called with event
    ``start`` before a stage runs and ``done`` once it is cached, ran or is known to need a run. A config with
    several tasks runs each task's stages with its own resolver (:func:`mad_pipeline.pipeline.plan.expand_study`)."""
    t0 = time.perf_counter()
    pcfg = load_config(cfg.config, cfg.overrides)
    _quiet_transformers()  # transformers' own "Loading weights" bars would interleave with the stage lines
    values = pcfg.values
    root = cfg.cache or (Path(values["cache"]) if values["cache"] else None)
    cache = Cache.at(root)
    tasks = config_lib.tasks_of(values)
    runners = {t: _Runner(config_lib.for_task(values, t), pcfg.source, cache, cfg, log) for t in tasks}
    by_id: dict[str, Stage] = {}
    for r in runners.values():
        r.by_id = by_id  # one plan: the data stage is shared
    stages = plan_lib.expand_study(values)
    n = len(stages)
    for i, st in enumerate(stages, 1):
        runner = runners[st.meta.get("task", tasks[0])]
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
        by_id[st.id] = st
    result = RunResult(pcfg.source, values, str(cache.root), cfg.dry_run, stages, seconds=0.0)
    out = cfg.out or (Path(values["out"]) if values["out"] else None)
    for rep in (s for s in stages if s.kind == "report" and s.record is not None):
        task = rep.meta["task"]
        files = dict(rep.record["result"]["files"])
        if out is not None and not cfg.dry_run:
            files = _copy_report(files, Path(out) / task if len(tasks) > 1 else Path(out), values)
        result.reports[task] = {"table": rep.record["result"]["table"], "files": files}
    if result.reports:
        first = next(iter(result.reports.values()))
        result.table, result.report_files = first["table"], first["files"]
    result.seconds = time.perf_counter() - t0
    return result


def _copy_report(files: dict[str, str], out: Path, values: dict[str, Any]) -> dict[str, str]:
    """The report files copied to ``out`` (``--out`` / the YAML's ``out``) with the resolved config next to them."""
    out.mkdir(parents=True, exist_ok=True)
    copied = {}
    for k, p in files.items():
        copied[k] = str(out / Path(p).name)
        shutil.copyfile(p, copied[k])
    (out / "config.resolved.json").write_text(json.dumps(values, indent=2) + "\n")
    return copied


class _Runner(Resolver):
    """Runs the stages the resolver could not serve from the cache, through the ordinary stages."""

    def __init__(self, values: dict[str, Any], source: str, cache: Cache, cfg: RunConfig, log):
        super().__init__(values, source, cache, dry_run=cfg.dry_run)
        self.cfg = cfg
        self.log = log
        if PRETRAIN_STAGE in config_lib.inits(values):
            self.pretrain_keys(self._pretrain_params())  # bad pretraining settings: one line, before any work

    def _pretrain_params(self) -> dict[str, Any]:
        return {**self.v[PRETRAIN_SECTION], "student": self.v["student"]}

    def _pretrain_cfg(self, params: dict[str, Any]) -> pretrain_stage.StudentPretrainConfig:
        return pretrain_stage.StudentPretrainConfig(**params, cache=self.cache.root, progress=self.cfg.progress)

    def pretrain_keys(self, params: dict[str, Any]) -> tuple[str, str]:
        """The student-pretrain stage's own key and its weights' key (:func:`.student_pretrain.weights_key`)."""
        cfg = self._pretrain_cfg(params)
        try:
            pretrain_stage.check(cfg)
        except InputError as e:
            raise InputError(f"{self.source}: {PRETRAIN_SECTION}: {e}") from None
        return pretrain_stage.stage_key(cfg), pretrain_stage.weights_key(cfg)

    def execute(self, st: Stage) -> None:
        if st.key is None:  # an input became known only now (upstream ran): key it again
            self.resolve(st)
            if st.key is None:
                raise AssertionError(f"stage {st.id}: inputs not ready")
            if st.status == "cached":
                return
        with self.cache.lock(f"stage-{st.key}", on_wait=lambda: self.log(f"{st.id}: another run holds it; waiting")):
            if self.serve_cached(st):  # another run may have just finished it
                return
            t0 = time.perf_counter()
            if st.kind == PRETRAIN_STAGE:  # the stage writes its own marker (its own cache entry)
                res = pretrain_stage.run(self._pretrain_cfg(st.params))
                st.record = plan_lib.read_marker(self.cache.root, st.kind, res.key)
                st.status = "cached" if res.cached else "ran"
                return
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

    def _distill_cfg(self, method: str, fraction: float, seed: int, subset_seed: int, out: Path,
                     pretrained: Path | None = None) -> DistillConfig:
        """The DistillConfig of one run: the YAML's settings (:data:`YAML_KEYS`), then what the plan decides
        (``pretrained``: the weights of the config's student-pretrain stage); the fraction's own ``train:`` (its
        ``per_fraction`` entry) and the method's own ``train:`` and ``init`` over the config's."""
        values = config_lib.for_run(self.v, method, fraction)
        from_yaml = {name: config_lib.lookup(values, key) for name, key in YAML_KEYS.items()}
        if from_yaml["init"] == PRETRAIN_STAGE:
            from_yaml.update(init="pretrained", pretrained=str(pretrained) if pretrained else None)
        return DistillConfig(**{
            **from_yaml, "data_root": self.data_root, "out": out, "eval_split": self.eval_split,
            "mad": config_lib.mad_config(self.v, method, self.source), "train": config_lib.train_config(values, seed),
            "train_fraction": fraction, "subset_seed": subset_seed, "cache": self.cache.root,
            "progress": self.cfg.progress})

    def _run_extract(self, st: Stage):
        p = st.params
        method = next(m for m, s in self.v["methods"].items() if s["preset"] != "baseline")
        template = self._distill_cfg(method, 1.0, 0, 0, Path("."))
        seed = p["subset_seed"] if p["subset_seed"] is not None else 0
        # exactly the ExtractConfig stage 2 builds for itself, so its own lookups hit these stores
        ecfg = distill_stage._extract_cfg(template, self.reader, p["split"], p["fraction"], seed)
        # on a dask cluster when the YAML's extract: section says so (the stores and keys are the same)
        ecfg = dataclasses.replace(ecfg, workers=self.v["extract"]["workers"], scheduler=self.v["extract"]["scheduler"])
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
        init = self.dep(st, "init") if "init" in st.deps else None
        if "init" in st.deps and init is None:
            raise AssertionError(f"stage {st.id}: its student-pretrain stage has not run")
        dcfg = self._distill_cfg(m["method"], m["fraction"], m["seed"], m["subset_seed"], out,
                                 Path(init.record["path"]) / "weights" if init is not None else None)
        run_json = out / "run.json"
        if run_json.exists():  # an interrupted run of this key resumes; one with other (non-key) paths starts over
            try:
                old = json.loads(run_json.read_text()).get("fingerprint")
            except (OSError, ValueError, RecursionError, AttributeError):
                old = None  # unreadable: start over
            if old != distill_stage.fingerprint(dcfg):
                dcfg = dataclasses.replace(dcfg, overwrite=True)
        res = distill_stage.run(dcfg, log=self.log)
        met = res.metrics
        summary = {"metric": met["metric"], "value": met["value"], "steps": met["steps"],
                   "train_samples": met["train_samples"], "resumed": met["resumed"], "run": str(out)}
        return {"metrics": met}, summary, "ran"

    def _run_eval(self, st: Stage):
        d = self.dep(st, "distill")
        run_dir = Path(d.record["path"]) / "run"
        out = plan_lib.stage_dir(self.cache.root, "eval", st.key) / "predictions.json"
        res = _scored_by_run(run_dir, st.params["split"], out, self.v["vqa_eval"])
        if res is None:
            res = eval_stage.run(eval_stage.EvalConfig(
                run=run_dir, split=st.params["split"], data_root=self.data_root, out=out,
                batch_size=self.v["eval_batch_size"], num_workers=self.v["num_workers"], device=self.v["device"],
                vqa_eval=self.v["vqa_eval"], progress=self.cfg.progress))
        summary = {"metric": res["metric"], "value": res["value"], "n": res["n"]}
        return res, summary, "ran"

    def _references(self, st: Stage, evals: list) -> tuple[dict[str, dict[str | None, dict[str, float]]], dict]:
        """Per evaluated split and metric (None: the headline), the plot's reference lines: the teacher's zero-shot
        accuracy (from the split's zero-shot store, when it was extracted) and the task's own levels (majority
        answer, ...; from the whole training split); and per split the task's breakdown of those levels (VQA: the
        answer prior per question type). The task as the runs fitted it (their answer vocabulary;
        SNLI-VE's calibration of the teacher's score, which only a distilling run fits), read from a distilling
        method's run at the largest fraction (calibrated on the most training data), else from the first run."""
        from mad_pipeline.data import load_dataset
        from mad_pipeline.tasks import get_task

        if not evals:
            return {}, {}
        distilling = [e for e in evals if self.v["methods"][e.meta["method"]]["preset"] != "baseline"]
        fitted = max(distilling, key=lambda e: e.meta["fraction"]) if distilling else evals[0]
        task = get_task(self.task, vqa_eval=self.v["vqa_eval"]).load(Path(self.dep(fitted, "distill")
                                                                          .record["path"]) / "run")
        stores = {}
        for d in st.deps.values():
            ex = self.by_id[d]
            if ex.kind == "extract" and ex.record is not None:
                zs = (ex.record.get("result", {}).get("stores") or {}).get("zeroshot")
                hit = self.cache.find("zeroshot", zs["key"]) if zs else None
                stores[ex.meta["split"]] = hit.path if hit else None
        train = load_dataset(self.reader, self.data_root, split=self.v["data"]["train_split"]).samples
        out, breakdown = {}, {}
        for split in dict.fromkeys(e.meta["split"] for e in evals):
            samples = load_dataset(self.reader, self.data_root, split=split).samples
            zs = task.teacher_zeroshot(stores[split], samples) if stores.get(split) else None
            out[split] = {None: task.reference_lines(task.references(train, samples), zs),
                          **task.study_references(train, samples, zs)}  # VCR: QA->R's and Q->AR's own
            if parts := task.reference_breakdown(train, samples):
                breakdown[split] = parts
        return out, breakdown

    def _run_report(self, st: Stage):
        records = []
        evals = [e for e in (self.by_id[d] for d in st.deps.values()) if e.kind == "eval"]
        refs, breakdown = self._references(st, evals)
        trained_on: dict[str, str | None] = {}  # distill key -> the machine that trained it
        for e in evals:
            s = e.record["summary"]
            d = self.dep(e, "distill")
            trained_on[d.key] = machine_label(d.record.get("machine"))
            rec = {"method": e.meta["method"], "fraction": e.meta["fraction"], "seed": e.meta["seed"],
                   "split": e.meta["split"], "metric": s["metric"], "value": s["value"], "task": self.task,
                   "source": str((Path(d.record["path"]) / "run").resolve())}
            lines = refs.get(e.meta["split"], {})
            records.append({**rec, "references": lines.get(None, {})})
            scores = e.record.get("result", {}).get("metrics") or {}
            records += [{**r, "references": lines.get(r["metric"], {})}  # VCR: QA->R, Q->AR beside Q->A
                        for r in report_lib.study_metric_records(rec, scores, self.task)]
        table = report_lib.aggregate(records, title=self.v["name"])
        if breakdown:
            table["reference_breakdown"] = breakdown  # {split: {level: {part: percent}}}
        if machines := report_lib.machine_counts(trained_on):
            table["machines"] = machines
        files = report_lib.write_report(table, plan_lib.stage_dir(self.cache.root, "report", st.key), records=records)
        return {"table": table, "files": files, "records": records}, {"files": files}, "ran"


def _scored_by_run(run_dir: Path, split: str, out: Path, vqa_eval: str) -> dict[str, Any] | None:
    """The eval stage's result for the split the distill stage already scored at the end of training (its
    evaluation split: the selected checkpoint, the same student ``mad eval`` loads), read from the run directory
    instead of predicting the split a second time: its metrics and its prediction files, copied to ``out``
    (``<split>.json`` -> ``predictions.json``, ``<split>.leaderboard.csv`` -> ``predictions.leaderboard.csv``).
    None when the run did not score ``split`` with these settings (then the stage evaluates)."""
    from mad_pipeline.tasks import get_task, task_class

    try:
        met = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    scores = (met.get("eval") or {}).get(split) if met.get("eval_split") == split else None
    src = run_dir / "predictions" / f"{split}.json"
    cls = task_class(met["task"]) if met.get("task") else None
    if not scores or cls is None or not src.is_file() or \
            cls.settings_in_key(met) != cls.settings_in_key({"vqa_eval": vqa_eval}):
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    files = {}
    for f in sorted(src.parent.glob(f"{split}.*")):  # the task's formats: predictions first, then the others
        kind = "predictions" if f == src else f.name[len(split) + 1:].split(".")[0]
        files[kind] = str(out.with_name(f"{out.stem}{f.name[len(split):]}"))
        shutil.copyfile(f, files[kind])
    files = {"predictions": files.pop("predictions"), **files}
    task = get_task(met["task"], vqa_eval=vqa_eval)
    return {"task": met["task"], **cls.settings_in_key({"vqa_eval": vqa_eval}), "split": split,
            "n": len(json.loads(src.read_text())), "predictions": files["predictions"], "files": files,
            "metric": scores["metric"], "value": scores["value"], "metrics": scores,
            "rows": task.report_rows(scores), "scored_by": "distill"}


def _quiet_transformers() -> None:
    """No 'Loading weights' progress bars from transformers (the stage lines say what is running)."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


__all__ = ["YAML_KEYS", "RunConfig", "RunResult", "load_config", "run", "schema"]
