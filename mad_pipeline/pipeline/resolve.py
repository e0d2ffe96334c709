"""Each stage's key, and serving a complete stage from the cache (:class:`Resolver`).

A key (:func:`.plan.stage_key`) hashes a stage's ``params`` -- its own settings that change its output, never batch
sizes, workers or devices -- and its ``inputs``: the content keys of what it reads. Per kind:

``data``     the world's size and seed, the generator's format version
``student-pretrain``  the stage's own key (``mad student pretrain`` with the same settings: the same cache entry),
             given by the stage layer (:attr:`Resolver.pretrain_keys`)
``extract``  split, fraction, subset seed, task, reader, VQA vocabulary threshold, the teachers' identities (the same
             identity stage 1 keys its stores by); input: the split's fingerprint
``distill``  method, the method's whole MADConfig, the trainer's settings that change the weights, task, reader,
             splits, student and its pretrained weights (with ``init: student-pretrain``: the key of the
             pretraining's weights, i.e. of its settings that change them), fraction, subset seed, the task settings
             the task reads (VQA: ``vqa_eval``, the accuracy's rules); inputs: the fingerprints of the training and
             evaluation splits, the keys of the feature stores it trains from
``eval``     split, task, reader, the task settings the task reads; inputs: the distill key, the split's
             fingerprint
``report``   name, task, the report's format (:data:`.report.REPORT_FORMAT`: what a report holds changed); input:
             every eval key with its method, fraction, seed and split

A key that depends on something not computed yet (the world of a ``data`` stage that has not run, an upstream stage,
in a dry run a teacher identity that is not memoised) is None.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..cache import Cache
from ..errors import InputError, MadError
from ..hashing import to_jsonable
from ..settings import keyed
from ..students.weights import PRETRAIN_STAGE, resolve_init
from ..tasks import task_class
from ..training.config import TrainConfig, autocast_of
from . import plan as plan_lib
from .config import train_config
from .fractions import for_run
from .methods import for_method, inits, mad_config
from .plan import Stage
from .report import REPORT_FORMAT


class Resolver:
    """Keys the stages of one validated config in plan order (each stage's upstream stages are in ``by_id`` once
    resolved or run). ``dry_run``: nothing is written, not even the hash memo. ``pretrain_keys(params)`` -> (the
    student-pretrain stage's key, its weights' key): the stage's own keys, set by the stage layer that runs it."""

    pretrain_keys: Any = None

    def __init__(self, values: dict[str, Any], source: str, cache: Cache, dry_run: bool = False):
        self.v = values
        self.source = source
        self.cache = cache
        self.dry_run = dry_run
        self.by_id: dict[str, Stage] = {}
        self.task = values["task"]
        self.reader = values["data"]["dataset"] or task_class(self.task).dataset
        self.eval_split = plan_lib.eval_split_of(values)
        self.data_root: Path | None = Path(values["data"]["root"]) if values["data"]["root"] else None
        self._fp: dict[str, str] = {}
        self._ident: dict[str, Any] | None = None
        if self.data_root is not None and not self.data_root.is_dir():
            raise InputError(f"{source}: data.root: {self.data_root} is not a directory")
        self._check_names()

    def _check_names(self) -> None:
        """Names a run needs, checked before any work (one line naming the YAML key)."""
        from ..students import STUDENTS
        from ..teachers.registry import get_teacher_spec

        if self.v["student"] not in STUDENTS:
            raise InputError(f"{self.source}: student: unknown student {self.v['student']!r}; expected one of "
                             f"{', '.join(STUDENTS)}")
        if PRETRAIN_STAGE in inits(self.v) and self.v["pretrained"]:
            raise InputError(f"{self.source}: init: {PRETRAIN_STAGE} starts the students from the config's own "
                             f"pretraining; pretrained: {self.v['pretrained']} names other weights: give one of them")
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

    # ------------------------------------------------------------------------------------------------------------------
    # content identities

    def fingerprint(self, split: str) -> str | None:
        if self.data_root is None:
            return None
        if split not in self._fp:
            memo = self.cache.root / "hash-memo"  # a dry run reads it and writes nothing
            self._fp[split] = plan_lib.split_fingerprint(self.reader, self.data_root, split, memo,
                                                         write_memo=not self.dry_run)
        return self._fp[split]

    def teacher_identity(self) -> dict[str, Any] | None:
        """The identities stage 1 keys its stores by (memoised under the cache's identities/). In a dry run an
        identity that is not memoised yet is unknown (it would take loading the teacher): None."""
        if self._ident is not None:
            return self._ident
        from ..teachers.identity import LazyTeacher

        memo = self.cache.root / "identities"
        v = self.v

        def lazy(name, weights, flag):
            return LazyTeacher(name, weights, v["device"], v["precision"], None, memo, flag=flag)

        try:
            image = lazy(v["teacher"], v["teacher_weights"], "weights:")
            text = lazy(v["text_teacher"], v["text_weights"], "text_weights:") if v["text_teacher"] else None
        except (ValueError, OSError) as e:
            raise InputError(f"{self.source}: teacher: {e}") from None
        if self.dry_run and any(t is not None and not t._memo.exists() for t in (image, text)):
            return None
        ident = {"teacher": v["teacher"], "image": image.identity("image") if "image" in image.towers else None,
                 "text": image.identity("text") if "text" in image.towers else None,
                 "text_teacher": None}
        if text is not None:
            ident["text_teacher"] = {"name": v["text_teacher"], "text": text.identity("text")}
        self._ident = ident
        return ident

    # ------------------------------------------------------------------------------------------------------------------
    # keys

    def resolve(self, st: Stage) -> None:
        """Compute the stage's key (None when an input is not known yet) and serve it from the cache if complete."""
        if st.kind == PRETRAIN_STAGE:  # the stage's own key and marker (no inputs: known at once)
            st.key, st.meta["weights_key"] = self.pretrain_keys(st.params)
            st.meta["_inputs"], st.meta["_params"] = {}, st.params
            self.serve_cached(st)
            return
        got = getattr(self, f"_key_{st.kind}")(st)
        if got is None:
            st.key = None
            return
        params, inputs = got
        st.meta["_inputs"] = inputs
        st.meta["_params"] = params
        st.key = plan_lib.stage_key(st.kind, params, inputs)
        self.serve_cached(st)

    def serve_cached(self, st: Stage) -> bool:
        """Serve the stage from its marker when it is complete and its outputs are all still there."""
        rec = plan_lib.read_marker(self.cache.root, st.kind, st.key)
        if rec is None or not plan_lib.still_valid(st.kind, rec, self.cache.locate):
            return False
        st.record, st.status = rec, "cached"
        return True

    def dep(self, st: Stage, role: str) -> Stage | None:
        """The upstream stage of ``role`` once it has a record (cached or ran), else None."""
        d = self.by_id.get(st.deps[role])
        return d if d is not None and d.record is not None else None

    def data_ready(self, st: Stage) -> bool:
        """Whether the data the stage reads exists (a generated world: once its stage has a record)."""
        if "data" not in st.deps:
            return True
        d = self.dep(st, "data")
        if d is None:
            return False
        if self.data_root is None:
            self.data_root = Path(d.record["path"]) / "world" / d.record["result"]["data_roots"][self.task]
        return True

    def _key_data(self, st: Stage):
        from ..shapes.formats import FORMAT_VERSION as SHAPES_FORMAT

        return {**st.params, "generator_format": SHAPES_FORMAT}, {}

    def _key_extract(self, st: Stage):
        if not self.data_ready(st):
            return None
        ident = self.teacher_identity()
        if ident is None:
            return None
        params = {**st.params, "task": self.task, "reader": self.reader, "vocab_min_count": self.v["vocab_min_count"],
                  "zs_prompt": "auto", "teachers": ident, **self.storage().key_parts(),
                  **({"dense": True} if (self.v.get("extract") or {}).get("dense") else {})}
        return params, {"data": self.fingerprint(st.params["split"])}

    def storage(self):
        """The image stores' storage (``extract.storage`` / ``keep_tokens`` / ``keep_policy``); in the extract
        stage's key only when not the default, like in the stores' keys."""
        from ..store.storage import Storage

        e = self.v.get("extract") or {}
        return Storage.parse(e.get("storage"), e.get("keep_tokens"), e.get("keep_policy"))

    def _key_distill(self, st: Stage):
        if not self.data_ready(st):
            return None
        m = st.meta
        mad = mad_config(self.v, m["method"], self.source)
        run_values = for_run(self.v, m["method"], m["fraction"])
        train = keyed(TrainConfig, dataclasses.asdict(train_config(run_values, m["seed"])))
        params = {"method": m["method"], "task": self.task, "reader": self.reader,
                  "train_split": self.v["data"]["train_split"], "eval_split": self.eval_split,
                  "student": self.v["student"], "pretrained": self._init_identity(st),
                  "mad": to_jsonable(dataclasses.asdict(mad)), "train": to_jsonable(train),
                  "fraction": m["fraction"], "subset_seed": m["subset_seed"],
                  "vocab_min_count": self.v["vocab_min_count"], **task_class(self.task).settings_in_key(self.v)}
        params.update(task_class(self.task).training_key())  # what the task trains on changed (VCR: QA->R too)
        if self.v.get("fresh_pooler"):  # the pretrained pooler drawn afresh (unset: the key runs always had)
            params["fresh_pooler"] = True
        if params["pretrained"] is False:
            return None
        inputs: dict[str, Any] = {"train_data": self.fingerprint(self.v["data"]["train_split"]),
                                  "eval_data": self.fingerprint(self.eval_split)}
        if "train_stores" in st.deps:
            tr, ev = self.dep(st, "train_stores"), self.dep(st, "eval_stores")
            if tr is None or ev is None:
                return None
            inputs["stores"] = {"train": {k: s["key"] for k, s in tr.record["result"]["stores"].items()},
                                "eval": {k: s["key"] for k, s in ev.record["result"]["stores"].items()}}
        return params, inputs

    def _init_identity(self, st: Stage) -> Any:
        """The student's initial weights in a distill key: with ``init: student-pretrain`` the key of the weights the
        config's pretraining stage makes (False while that stage is not keyed), else the weights' content
        identity (None: random initialisation)."""
        init = for_method(self.v, st.meta["method"]).get("init")
        if init == PRETRAIN_STAGE:
            p = self.by_id.get(st.deps.get("init", ""))
            return {PRETRAIN_STAGE: p.meta["weights_key"]} if p is not None and p.key is not None else False
        return plan_lib.pretrained_identity(resolve_init(self.v["student"], init or "scratch", self.v["pretrained"]))

    def _key_eval(self, st: Stage):
        d = self.dep(st, "distill")
        if d is None or not self.data_ready(st):
            return None
        m = st.meta
        train = train_config(for_run(self.v, m["method"], m["fraction"]), m["seed"])
        # scored under the run's own autocast; in the key only where that is not the one evaluation always used
        # (bf16 on CUDA, fp32 on CPU), so the keys of studies trained that way are unchanged
        precision = {"precision": "trained"} if (train.bf16, train.cpu_bf16) != autocast_of({}) else {}
        return {**st.params, "task": self.task, "reader": self.reader, **precision,
                **task_class(self.task).settings_in_key(self.v)}, {
            "distill": d.key, "data": self.fingerprint(st.params["split"])}

    def _key_report(self, st: Stage):
        evals, zeroshot = [], {}
        for did in st.deps.values():
            e = self.by_id.get(did)
            if e is None or e.key is None or e.record is None:
                return None
            if e.kind == "extract":  # an evaluated split's stores: the teacher's zero-shot reference on it
                zeroshot[e.meta["split"]] = e.key
            else:
                evals.append([e.meta["method"], e.meta["fraction"], e.meta["seed"], e.meta["split"], e.key])
        return {**st.params, "task": self.task, "report_format": REPORT_FORMAT}, {"evals": evals, "zeroshot": zeroshot}


__all__ = ["Resolver"]
