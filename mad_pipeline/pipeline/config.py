"""The ``mad run`` YAML: reading it, ``key=value`` overrides, validation against a schema, and what the validated
values make (each method's objective, the trainer's settings).

Every mistake is one line that names the file and the YAML key (``train.stpes``), never a traceback. Paths written in
the file are relative to the file's directory; paths given as ``key=value`` on the command line are relative to the
current directory. The schema is :func:`schema`: the experiment's own keys (data, methods, fractions, seeds...), the
``distill:`` switches, the ``train:`` section and the stage settings the caller describes (see :mod:`.schema`);
docs/pipeline.md shows it with examples.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from .fractions import check_per_fraction, final_over_fractions, for_run, parse_per_fraction
from .methods import METHOD_SETTINGS, for_method, inits, mad_config, parse_methods
from .overrides import apply_override
from .schema import (
    DEFAULT_METHODS,
    TOP_LEVEL_TRAIN,
    Key,
    check_value,
    default_value,
    distill_section,
    show,
    top_level_train_keys,
    train_section,
)
from .study import for_task, merge_settings, parse_per_task, parse_tasks, tasks_of
from .yaml_io import load_yaml


@dataclass(frozen=True)
class PipelineConfig:
    """A validated pipeline: ``values`` mirrors the YAML with every default filled in and paths absolute."""

    values: dict[str, Any]
    source: str = "<config>"

    def get(self, dotted: str) -> Any:
        return lookup(self.values, dotted)

    def resolved(self) -> dict[str, Any]:
        return copy.deepcopy(self.values)

    @property
    def methods(self) -> dict[str, dict[str, Any]]:
        return self.values["methods"]


def _resolve_per_task(raw: dict, values: dict[str, Any], sch: dict, source: str,
                      overridden: dict[str, str], filtered: frozenset[float]) -> None:
    """Each task's own values (the config with its ``per_task`` settings merged in), kept under ``per_task``. A
    task's ``methods`` refine the config's methods by name (their settings merged over the method's own). The
    command line is final for every task: its overrides are applied again over each task's merged settings
    (``train.steps=100`` caps every task, ``methods={...}`` replaces every task's methods, ``methods=[naive]`` picks
    from each task's refined methods)."""
    from ..tasks import task_names

    tasks = tasks_of(values)
    for key, ov in overridden.items():
        named = key.split(".")
        if named[0] == "per_task" and len(named) > 1 and named[1] not in tasks and named[1] in task_names():
            raise InputError(f"override {ov!r}: {named[1]} is not one of the tasks this run trains "
                             f"({', '.join(tasks)})")
    resolved = {}
    for task, body in values["per_task"].items():
        if task not in tasks:
            if task in task_names():  # a task filtered out (task=vcr on the command line)
                continue
            raise InputError(f"{source}: per_task.{task}: not one of the config's tasks ({', '.join(tasks)})")
        if "task" in body or "per_task" in body:
            raise InputError(f"{source}: per_task.{task}: sets task or per_task")
        body = dict(body)
        refine = body.pop("methods", None)
        one = merge_settings({k: v for k, v in copy.deepcopy(raw).items() if k != "per_task"}, body)
        if refine:
            one["methods"] = _refine_methods(one.get("methods"), refine, values["methods"], "methods" in overridden,
                                             f"{source}: per_task.{task}.methods")
        for key, ov in overridden.items():
            if key != "task" and key.split(".")[0] != "per_task":
                apply_override(one, sch, ov)
        final_over_fractions(one, overridden)
        one["task"] = task
        try:
            resolved[task] = _validate(one, sch, source, prefix="", overridden=overridden)
            resolved[task]["per_task"] = {}
            _check_whole(resolved[task], source, filtered)
        except InputError as e:
            raise InputError(f"{source}: per_task.{task}: {str(e).removeprefix(f'{source}: ')}") from None
    values["per_task"] = resolved


def _refine_methods(raw: Any, refine: Any, parsed: dict[str, Any], picked: bool, where: str) -> dict[str, Any]:
    """The config's methods (``raw`` as written, else the ``parsed`` names) with a task's settings merged over those it
    names. A name the config does not run is an error, unless the command line picked the methods (``picked``)."""
    if not isinstance(refine, dict):
        raise InputError(f"{where}: expected a mapping method -> {{settings}}, got {refine!r}")
    names = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else list(raw or parsed)
    methods = copy.deepcopy(raw) if isinstance(raw, dict) else {str(n): {} for n in names}
    for name, spec in refine.items():
        if name not in methods:
            if picked:
                continue
            raise InputError(f"{where}.{name}: not one of the config's methods ({', '.join(methods)})")
        methods[name] = merge_settings(dict(methods[name] or {}), spec or {})
    return methods


def lookup(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        node = node[part]
    return node


# ----------------------------------------------------------------------------------------------------------------------
# the schema


def schema(settings: Mapping[str, Key]) -> dict[str, Any]:
    """The whole YAML as nested mappings of :class:`Key`: the report's name, ``settings`` (dotted YAML key -> Key: the
    stage settings a YAML sets, read from the stage's settings dataclass), the experiment's own keys (data, methods,
    fractions, seeds), the trainer settings that change no key, cache and out, the ``distill:`` switches and the
    ``train:`` section."""
    from ..losses import PRESETS

    keys: dict[str, Key] = {
        "name": Key("str", "experiment", help="title of the report"),
        **settings,
        "data.root": Key("path", help="the task's data root (official file layout)"),
        "data.shapes.size": Key("int", min=1, help="generate the shapes world with this many training images"),
        "data.shapes.seed": Key("int", 0, min=0),
        "data.eval_splits": Key("strs", [], help="more splits evaluated and reported (e.g. [shift, test])"),
        "methods": Key("custom", list(DEFAULT_METHODS), parse=parse_methods,
                       help=f"list of presets ({', '.join(PRESETS)}), or a mapping name -> {{preset, switches}}"),
        "fractions": Key("floats", [1.0], check=_fractions_check, help="training fractions (low-shot subsets)"),
        "seeds": Key("ints", [0], check=_seeds_check, help="training seeds (each also picks its subset)"),
        "per_task": Key("custom", {}, parse=parse_per_task, help="a study over several tasks: settings of one task, as "
                        "the YAML's keys (per_task: {vcr: {train: {batch_size: 16}}})"),
        "per_fraction": Key("custom", {}, parse=parse_per_fraction, help="train settings of the runs at one training "
                            "fraction, over the config's (per_fraction: {1.0: {train: {steps: 3000}}})"),
        **top_level_train_keys(),
        "cache": Key("path", help="cache root (default: MAD_CACHE, else the user cache dir)"),
        "out": Key("path", help="also copy the report here"),
        "extract.workers": Key("int", min=1, help="extract on a local dask cluster of this many worker processes "
                               "(one per GPU on a GPU machine); not in any key"),
        "extract.scheduler": Key("str", help="extract on an existing dask cluster: its scheduler address "
                                 "(tcp://host:8786); not in any key"),
    }
    tree: dict[str, Any] = {}
    for dotted, key in keys.items():
        *parents, last = dotted.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = key
    tree["distill"] = distill_section()
    tree["train"] = train_section()
    return tree


def _fractions_check(vals: list, source: str, key: str) -> None:
    for i, x in enumerate(vals):
        if not 0 < x <= 1:
            raise InputError(f"{source}: {key}[{i}]: {x} is not in (0, 1]")


def _seeds_check(vals: list, source: str, key: str) -> None:
    if any(x < 0 for x in vals):
        raise InputError(f"{source}: {key}: seeds must be >= 0")


# ----------------------------------------------------------------------------------------------------------------------
# reading and validating


BUNDLED_DIR = Path(__file__).resolve().parents[1] / "assets" / "configs"


def bundled_config(name: str) -> Path:
    """A config shipped with mad (``demo``: the one ``mad demo`` runs)."""
    p = BUNDLED_DIR / f"{name}.yaml"
    if not p.is_file():
        known = ", ".join(sorted(q.stem for q in BUNDLED_DIR.glob("*.yaml")))
        raise InputError(f"no bundled config {name!r} (bundled: {known})")
    return p


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = (), *,
                schema: dict[str, Any]) -> PipelineConfig:
    """Read, override and validate a pipeline YAML against ``schema`` (:func:`schema`). Raises :class:`InputError`
    (one line) on any mistake."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: cannot read ({e})") from None
    raw = load_yaml(text, str(p))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"{p}: expected a mapping of keys (task:, data:, teacher: ...), got {type(raw).__name__}")
    return from_dict(raw, schema, source=str(p), base=p.resolve().parent, overrides=overrides)


def from_dict(raw: dict[str, Any], schema: dict[str, Any], source: str = "<config>", base: Path | None = None,
              overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    raw = copy.deepcopy(raw)
    base = base or Path.cwd()
    _resolve_paths(raw, schema, base)
    listed = raw.get("fractions")  # the file's own fractions: a fractions= override may leave some of them out
    overridden: dict[str, str] = {}
    for ov in overrides:
        overridden[apply_override(raw, schema, ov)] = ov
    final_over_fractions(raw, overridden)
    values = _validate(raw, schema, source, prefix="", overridden=overridden)
    filtered = frozenset()
    if "fractions" in overridden and isinstance(listed, list):
        filtered = frozenset(float(f) for f in listed if isinstance(f, int | float) and not isinstance(f, bool))
    _check_whole(values, source, filtered)
    if values.get("per_task"):
        _resolve_per_task(raw, values, schema, source, overridden, filtered)
    return PipelineConfig(values, source)


def _resolve_paths(raw: Any, sch: dict, base: Path) -> None:
    """Paths in the file are relative to the file (done before overrides, which are relative to the cwd)."""
    if not isinstance(raw, dict):
        return
    for k, v in raw.items():
        spec = sch.get(k) if isinstance(k, str) else None
        if isinstance(spec, dict):
            _resolve_paths(v, spec, base)
        elif isinstance(spec, Key) and spec.kind == "path" and isinstance(v, str) and v:
            raw[k] = str((base / Path(v).expanduser()).resolve())


def _validate(raw: Any, sch: dict, source: str, prefix: str, overridden: dict[str, str]) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"{source}: {prefix.rstrip('.')}: expected a mapping, got {show(raw)}")
    for k in raw:
        if k not in sch:
            where = f" in {prefix.rstrip('.')}" if prefix else ""
            raise InputError(f"{source}: unknown key {prefix}{k!s} (known{where}: {', '.join(sorted(sch))})")
    out: dict[str, Any] = {}
    for k, spec in sch.items():
        key = f"{prefix}{k}"
        if isinstance(spec, dict):
            out[k] = _validate(raw.get(k), spec, source, f"{key}.", overridden)
        elif k in raw:
            src = f"override {overridden[key]!r}" if key in overridden else source
            out[k] = check_value(raw[k], spec, src, key)
        elif spec.required:
            raise InputError(f"{source}: missing key {key} ({spec.help})")
        else:
            out[k] = default_value(spec, source, key)
    return out


def _check_whole(values: dict[str, Any], source: str, filtered: frozenset[float] = frozenset()) -> None:
    data = values["data"]
    if data["root"] is None and data["shapes"]["size"] is None:
        raise InputError(f"{source}: data: give data.root (a data root) or data.shapes.size (generate the shapes "
                         "world)")
    if data["root"] is not None and data["shapes"]["size"] is not None:
        raise InputError(f"{source}: data: give data.root or data.shapes, not both")
    # the objective: every method's switches must make a valid MADConfig (reported by YAML key)
    for name in values["methods"]:
        mad_config(values, name, source)
    try:
        train_config(values)
    except InputError as e:
        raise InputError(f"{source}: train: {e}") from None
    for name, m in values["methods"].items():
        if m.get("train"):
            try:
                train_config(for_method(values, name))
            except InputError as e:
                raise InputError(f"{source}: methods.{name}.train: {e}") from None
    check_per_fraction(values, source, train_config, filtered)
    _check_dev_metric(values, source)


def _check_dev_metric(values: dict[str, Any], source: str) -> None:
    """Every ``train:`` section's ``dev_metric`` is a metric each task of the config reports (a task with its own
    ``per_task`` settings is checked with them)."""
    from ..tasks import task_class

    own = values.get("per_task") or {}
    sections = [("train", values["train"])] + [(f"methods.{n}.train", m["train"]) for n, m in values["methods"].items()
                                               if m.get("train")]
    for task in tasks_of(values):
        for where, train in sections if task not in own else ():
            task_class(task).dev_metric(train.get("dev_metric") or "", f"{source}: {where}.dev_metric:")


# ----------------------------------------------------------------------------------------------------------------------
# what the values make


def train_kwargs(values: dict[str, Any]) -> dict[str, Any]:
    """The trainer's settings of a config (TrainConfig keyword arguments, the seed aside): ``train:`` and the
    trainer settings written at the top level."""
    return {**values["train"], **{k: values[k] for k in TOP_LEVEL_TRAIN}}


def train_config(values: dict[str, Any], seed: int = 0):
    """The TrainConfig of one training seed."""
    from ..training.config import TrainConfig

    return TrainConfig(**train_kwargs(values), seed=seed)


__all__ = ["BUNDLED_DIR", "METHOD_SETTINGS", "PipelineConfig", "bundled_config", "for_method", "for_run",
           "for_task", "from_dict", "inits", "load_config", "lookup", "mad_config", "parse_tasks", "schema", "tasks_of",
           "train_config", "train_kwargs"]
