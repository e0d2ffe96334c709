"""The ``mad run`` YAML: its schema, ``key=value`` overrides and validation.

Every mistake is one line that names the file and the YAML key (``train.stpes``), never a traceback. Paths written in
the file are relative to the file's directory; paths given as ``key=value`` on the command line are relative to the
current directory. See docs/pipeline.md for the full schema with examples.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError

PRESETS = ("full", "naive", "baseline")


@dataclass(frozen=True)
class F:
    """One YAML key: its kind, default, allowed values, lower bound and a one-line description."""

    kind: str  # str | int | float | bool | path | topk | workers | floats | ints | strs | methods
    default: Any = None
    choices: tuple = ()
    min: float | None = None
    nullable: bool = True
    help: str = ""


def _train_section() -> dict[str, F]:
    from ..training.trainer import TrainConfig

    d = TrainConfig()
    return {
        "steps": F("int", d.steps, min=1, nullable=False, help="optimizer steps per run"),
        "batch_size": F("int", d.batch_size, min=1, nullable=False, help="samples per micro-batch"),
        "grad_accum": F("int", d.grad_accum, min=1, nullable=False, help="micro-batches per step"),
        "lr": F("float", d.lr, min=0, nullable=False, help="peak learning rate (AdamW)"),
        "min_lr_ratio": F("float", d.min_lr_ratio, min=0, nullable=False, help="cosine decay floor / peak"),
        "decay": F("str", d.decay, choices=("cosine", "constant"), nullable=False),
        "warmup": F("int", d.warmup, min=0, nullable=False, help="linear warmup steps"),
        "weight_decay": F("float", d.weight_decay, min=0, nullable=False),
        "grad_clip": F("float", d.grad_clip, min=0, nullable=False, help="max grad norm (0: off)"),
        "buffer_chunks": F("int", d.buffer_chunks, min=1, nullable=False, help="chunk-aware shuffling window"),
        "bf16": F("bool", d.bf16, nullable=False, help="bf16 autocast on CUDA"),
        "deterministic": F("bool", d.deterministic, nullable=False),
        # these do not change the trained weights (not part of any key)
        "eval_every": F("int", 0, min=0, nullable=False, help="evaluate every N steps (0: at the end)"),
        "checkpoint_every": F("int", d.checkpoint_every, min=0, nullable=False),
        "log_every": F("int", d.log_every, min=1, nullable=False),
    }


def _distill_section() -> dict[str, F]:
    from ..losses import ALPHA_SCHEDULES, CONFIDENCE_MODES, SELECTION_POLICIES, TOKEN_LOSSES

    return {
        "select": F("str", None, choices=SELECTION_POLICIES, help="token selection (both modalities)"),
        "top_k": F("topk", None, help="tokens kept: a fraction in (0, 1] or a count"),
        "confidence": F("str", None, choices=CONFIDENCE_MODES),
        "alpha_schedule": F("str", None, choices=ALPHA_SCHEDULES),
        "alpha": F("float", None, min=0, help="alpha0 of the constant/linear/cosine schedules"),
        "alpha_ratio": F("float", None, min=0, help="adaptive schedule: distill term / task loss"),
        "logit_kd": F("bool", None),
        "token_loss": F("str", None, choices=TOKEN_LOSSES),
        "image_tokens": F("bool", None),
        "text_tokens": F("bool", None),
        "pooled": F("bool", None),
    }


def schema() -> dict[str, Any]:
    from ..tasks import TASKS

    return {
        "name": F("str", "experiment", nullable=False, help="title of the report"),
        "task": F("str", None, choices=TASKS, nullable=False, help="vqa, snli-ve or vcr (required)"),
        "data": {
            "root": F("path", None, help="the task's data root (official file layout)"),
            "shapes": {
                "size": F("int", None, min=1, help="generate the shapes world with this many training images"),
                "seed": F("int", 0, min=0, nullable=False),
            },
            "dataset": F("str", None, help="reader (default: the task's)"),
            "train_split": F("str", "train", nullable=False),
            "eval_split": F("str", None, help="default: val (VQA, VCR), dev (SNLI-VE)"),
            "eval_splits": F("strs", [], help="more splits evaluated and reported (e.g. [shift, test])"),
        },
        "teacher": F("str", "shapes-clip", nullable=False, help="image(+text) teacher (see `mad teachers`)"),
        "teacher_weights": F("path", None, help="local checkpoint of the teacher"),
        "text_teacher": F("str", None, help="another text teacher (default: the teacher's own text tower)"),
        "text_weights": F("path", None),
        "precision": F("str", "auto", choices=("auto", "fp32", "bf16"), nullable=False),
        "student": F("str", "vilt-tiny", nullable=False),
        "pretrained": F("str", None, help="student backbone weights (directory or hub id)"),
        "methods": F("methods", ["baseline", "naive", "full"],
                     help="list of presets, or a mapping name -> {preset, distill switches}"),
        "fractions": F("floats", [1.0], nullable=False, help="training fractions (low-shot subsets)"),
        "seeds": F("ints", [0], nullable=False, help="training seeds (each also picks its subset)"),
        "subset_seed": F("int", None, min=0, help="one fixed subset for every seed (default: the training seed)"),
        "vocab_min_count": F("int", 9, min=1, nullable=False, help="VQA answer vocabulary"),
        "distill": _distill_section(),
        "train": _train_section(),
        # not part of any key
        "device": F("str", "auto", nullable=False),
        "num_workers": F("workers", "auto", nullable=False,
                         help="DataLoader workers: a count, or auto (none on CPU; CUDA: a free core each, up to 8)"),
        "extract_batch_size": F("int", 32, min=1, nullable=False),
        "eval_batch_size": F("int", 64, min=1, nullable=False),
        "cache": F("path", None, help="cache root (default: MAD_CACHE, else the user cache dir)"),
        "out": F("path", None, help="also copy the report here"),
    }


@dataclass(frozen=True)
class PipelineConfig:
    """A validated pipeline: ``values`` mirrors the YAML with every default filled in and paths absolute."""

    values: dict[str, Any]
    source: str = "<config>"

    def get(self, dotted: str) -> Any:
        node: Any = self.values
        for part in dotted.split("."):
            node = node[part]
        return node

    def resolved(self) -> dict[str, Any]:
        return copy.deepcopy(self.values)

    @property
    def methods(self) -> dict[str, dict[str, Any]]:
        return self.values["methods"]


# ----------------------------------------------------------------------------------------------------------------------


BUNDLED_DIR = Path(__file__).resolve().parents[1] / "assets" / "configs"


def bundled_config(name: str) -> Path:
    """A config shipped with mad (``demo``: the one ``mad demo`` runs)."""
    p = BUNDLED_DIR / f"{name}.yaml"
    if not p.is_file():
        known = ", ".join(sorted(q.stem for q in BUNDLED_DIR.glob("*.yaml")))
        raise InputError(f"no bundled config {name!r} (bundled: {known})")
    return p


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read, override and validate a pipeline YAML. Raises :class:`InputError` (one line) on any mistake."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: cannot read ({e})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(f"{p}:{where} not valid YAML ({problem})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"{p}: expected a mapping of keys (task:, data:, teacher: ...), got {type(raw).__name__}")
    return from_dict(raw, source=str(p), base=p.resolve().parent, overrides=overrides)


def from_dict(raw: dict[str, Any], source: str = "<config>", base: Path | None = None,
              overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    sch = schema()
    raw = copy.deepcopy(raw)
    base = base or Path.cwd()
    _resolve_paths(raw, sch, base, source)
    overridden: dict[str, str] = {}
    for ov in overrides:
        overridden[_apply_override(raw, sch, ov)] = ov
    values = _validate(raw, sch, source, prefix="", overridden=overridden)
    _check_whole(values, source)
    return PipelineConfig(values, source)


def _apply_override(raw: dict, sch: dict, ov: str) -> str:
    """Set one ``key=value`` in the raw config (the value is parsed as YAML); returns the dotted key."""
    import yaml

    if "=" not in ov:
        raise InputError(f"override {ov!r}: expected key=value (e.g. train.steps=50)")
    key, text = ov.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    if parts[0] == "methods" and len(parts) > 1:  # methods.<name>.<switch>=value (the list form becomes a mapping)
        if len(parts) > 3:
            raise InputError(f"override {ov!r}: expected methods.<name>=... or methods.<name>.<switch>=...")
        m = raw.get("methods")
        m = [m] if isinstance(m, str) else m
        m = {str(x): {} for x in m} if isinstance(m, list) else (m if isinstance(m, dict) else {})
        raw["methods"] = m
        if len(parts) == 2:
            m[parts[1]] = value
        else:
            body = m.get(parts[1]) or {}
            if not isinstance(body, dict):
                raise InputError(f"override {ov!r}: methods.{parts[1]} is not a mapping")
            body[parts[2]] = value
            m[parts[1]] = body
        return key
    node_s: Any = sch
    node_r = raw
    for i, part in enumerate(parts):
        if not isinstance(node_s, dict) or part not in node_s:
            known = ", ".join(sorted(node_s)) if isinstance(node_s, dict) else ""
            where = ".".join(parts[:i]) or "the top level"
            raise InputError(f"override {ov!r}: unknown key {key!r} ({where} has: {known})")
        node_s = node_s[part]
        if i < len(parts) - 1:
            if node_r.get(part) is None:
                node_r[part] = {}
            if not isinstance(node_r[part], dict):
                raise InputError(f"override {ov!r}: {'.'.join(parts[:i + 1])} is not a mapping")
            node_r = node_r[part]
    if isinstance(node_s, F) and node_s.kind == "path" and value is not None:
        value = str((Path.cwd() / Path(str(value)).expanduser()).resolve())
    if isinstance(node_s, F) and node_s.kind in ("str", "path") and value is not None and not isinstance(value, str):
        value = text  # e.g. name=2024 stays the string "2024"
    node_r[parts[-1]] = value
    return key


def _resolve_paths(raw: Any, sch: dict, base: Path, source: str, prefix: str = "") -> None:
    """Paths in the file are relative to the file (done before overrides, which are relative to the cwd)."""
    if not isinstance(raw, dict):
        return
    for k, v in raw.items():
        spec = sch.get(k) if isinstance(k, str) else None
        if isinstance(spec, dict):
            _resolve_paths(v, spec, base, source, f"{prefix}{k}.")
        elif isinstance(spec, F) and spec.kind == "path" and isinstance(v, str) and v:
            raw[k] = str((base / Path(v).expanduser()).resolve())


def _validate(raw: Any, sch: dict, source: str, prefix: str, overridden: dict[str, str] | None = None
              ) -> dict[str, Any]:
    overridden = overridden or {}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"{source}: {prefix.rstrip('.')}: expected a mapping, got {_show(raw)}")
    for k in raw:
        if k not in sch:
            where = f" in {prefix.rstrip('.')}" if prefix else ""
            raise InputError(f"{source}: unknown key {prefix}{k!s} (known{where}: {', '.join(sorted(sch))})")
    out: dict[str, Any] = {}
    for k, spec in sch.items():
        if isinstance(spec, dict):
            out[k] = _validate(raw.get(k), spec, source, f"{prefix}{k}.", overridden)
        elif k in raw:
            key = f"{prefix}{k}"
            src = f"override {overridden[key]!r}" if key in overridden else source
            out[k] = _value(raw[k], spec, src, key)
        elif not spec.nullable and spec.default is None:
            raise InputError(f"{source}: missing key {prefix}{k} ({spec.help})")
        else:
            out[k] = copy.deepcopy(spec.default)
    return out


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) < 60 else s[:57] + "..."


def _value(v: Any, spec: F, source: str, key: str) -> Any:
    def bad(expected: str) -> InputError:
        return InputError(f"{source}: {key}: expected {expected}, got {_show(v)}")

    if v is None:
        if spec.nullable:
            return None
        if spec.default is not None:
            return copy.deepcopy(spec.default)
        raise bad("a value")
    kind = spec.kind
    if kind in ("str", "path"):
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise bad("a string")
        v = str(v)
        if spec.choices and v not in spec.choices:
            raise InputError(f"{source}: {key}: {v!r} is not one of {', '.join(spec.choices)}")
        return v
    if kind == "bool":
        if not isinstance(v, bool):
            raise bad("true or false")
        return v
    if kind == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad("an integer")
        if spec.min is not None and v < spec.min:
            raise InputError(f"{source}: {key}: must be at least {spec.min:g}, got {v}")
        return v
    if kind == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad("a number")
        if spec.min is not None and v < spec.min:
            raise InputError(f"{source}: {key}: must be at least {spec.min:g}, got {v}")
        return float(v)
    if kind == "workers":
        from ..training.trainer import parse_num_workers

        try:
            return parse_num_workers(v)
        except InputError:
            raise bad("a count >= 0 or auto") from None
    if kind == "topk":
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise bad("a fraction in (0, 1] or a count")
        from ..losses import parse_top_k

        try:
            return parse_top_k(v)
        except ValueError as e:
            raise InputError(f"{source}: {key}: {e}") from None
    if kind in ("floats", "ints", "strs"):
        items = v if isinstance(v, list) else [v]
        if not items:
            if kind == "strs":
                return []
            raise bad("a non-empty list")
        elem = {"floats": "float", "ints": "int", "strs": "str"}[kind]
        vals = [_value(x, dataclasses.replace(spec, kind=elem, nullable=False, default=None), source,
                       f"{key}[{i}]") for i, x in enumerate(items)]
        if kind == "floats" and key == "fractions":
            for i, x in enumerate(vals):
                if not 0 < x <= 1:
                    raise InputError(f"{source}: fractions[{i}]: {x} is not in (0, 1]")
        if kind == "ints" and key == "seeds" and any(x < 0 for x in vals):
            raise InputError(f"{source}: seeds: seeds must be >= 0")
        if len(set(vals)) != len(vals):
            raise InputError(f"{source}: {key}: repeated values in {_show(vals)}")
        return vals
    if kind == "methods":
        return _methods(v, source, key)
    raise AssertionError(kind)


def _methods(v: Any, source: str, key: str) -> dict[str, dict[str, Any]]:
    """``[baseline, naive, full]`` or ``{name: {preset: full, select: random, ...}}`` -> {name: {preset, switches}}."""
    if isinstance(v, str):
        v = [v]
    if isinstance(v, list):
        out: dict[str, dict[str, Any]] = {}
        for i, name in enumerate(v):
            if not isinstance(name, str) or name not in PRESETS:
                raise InputError(f"{source}: {key}[{i}]: {_show(name)} is not one of {', '.join(PRESETS)} "
                                 "(use a mapping name -> {preset: ..., switches} for custom methods)")
            if name in out:
                raise InputError(f"{source}: {key}: {name} listed twice")
            out[name] = {"preset": name}
        if not out:
            raise InputError(f"{source}: {key}: expected at least one method")
        return out
    if not isinstance(v, dict) or not v:
        raise InputError(f"{source}: {key}: expected a list of presets or a mapping, got {_show(v)}")
    switches = _distill_section()
    out = {}
    for name, body in v.items():
        body = {} if body is None else body
        if not isinstance(body, dict):
            raise InputError(f"{source}: {key}.{name}: expected a mapping (preset: ..., select: ...), got "
                             f"{_show(body)}")
        rest = {k: b for k, b in body.items() if k != "preset"}
        for k in rest:
            if k not in switches:
                raise InputError(f"{source}: unknown key {key}.{name}.{k} (known: preset, "
                                 f"{', '.join(sorted(switches))})")
        preset = body.get("preset", name)
        if preset not in PRESETS:
            raise InputError(f"{source}: {key}.{name}.preset: {_show(preset)} is not one of {', '.join(PRESETS)}")
        sw = {k: _value(b, switches[k], source, f"{key}.{name}.{k}") for k, b in rest.items()}
        out[str(name)] = {"preset": preset, **sw}
    return out


def _check_whole(values: dict[str, Any], source: str) -> None:
    data = values["data"]
    if data["root"] is None and data["shapes"]["size"] is None:
        raise InputError(f"{source}: data: give data.root (a data root) or data.shapes.size (generate the shapes "
                         "world)")
    if data["root"] is not None and data["shapes"]["size"] is not None:
        raise InputError(f"{source}: data: give data.root or data.shapes, not both")
    # the objective: every method's switches must make a valid MADConfig (reported by YAML key)
    for name in values["methods"]:
        mad_config(values, name, source)
    from ..training.trainer import TrainConfig

    try:
        TrainConfig(**train_kwargs(values))
    except InputError as e:
        raise InputError(f"{source}: train: {e}") from None


def mad_config(values: dict[str, Any], method: str, source: str = "<config>"):
    """The MADConfig of one method: its preset, the config's ``distill`` switches, then the method's own switches.
    The baseline is always the plain-finetuning preset (switches do not apply to it, and do not change its key)."""
    from ..losses import MADConfig

    m = values["methods"][method]
    if m["preset"] == "baseline":
        return MADConfig.baseline()
    switches = {k: v for k, v in values["distill"].items() if v is not None}
    switches.update({k: v for k, v in m.items() if k != "preset" and v is not None})
    base = {"full": MADConfig.full, "naive": MADConfig.naive}[m["preset"]]()
    names = {"select": ("select_v", "select_t"), "top_k": ("k_v", "k_t"), "alpha": ("alpha0",),
             "image_tokens": ("tokens_v",), "text_tokens": ("tokens_t",), "pooled": ("use_pooled",)}
    changes: dict[str, Any] = {}
    for k, v in switches.items():
        for field_name in names.get(k, (k,)):
            changes[field_name] = v
    try:
        return base.replace(**changes)
    except ValueError as e:
        raise InputError(f"{source}: methods.{method}: {e}") from None


def train_kwargs(values: dict[str, Any]) -> dict[str, Any]:
    t = dict(values["train"])
    t.update(num_workers=values["num_workers"], device=values["device"], eval_batch_size=values["eval_batch_size"])
    return t


__all__ = ["F", "PRESETS", "PipelineConfig", "from_dict", "load_config", "mad_config", "schema", "train_kwargs"]
