"""What a ``mad run`` YAML key accepts (:class:`Key`), the check of one value (:func:`check_value`), and the keys
read from the settings dataclasses.

A key that mirrors a setting is not described here a second time: :func:`key_from_field` reads the field's own
description (:func:`mad_pipeline.settings.setting`: default, help, ``min``, ``choices``) and its annotation, so the
``train:`` section is :class:`~mad_pipeline.training.config.TrainConfig`'s fields (a new trainer option is a new YAML
key), the ``distill:`` section is the objective's switches (:data:`mad_pipeline.losses.SWITCHES`), and the stage
settings a YAML sets at its top level come from the stage's settings dataclass (passed to :func:`schema`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InputError

# annotation -> kind of the settings fields a YAML key can mirror (``X | None`` too)
_ANNOTATION_KINDS = {"str": "str", "int": "int", "float": "float", "bool": "bool", "Path": "path"}
# list kinds -> the kind of one element
LIST_KINDS = {"floats": "float", "ints": "int", "strs": "str"}
# TrainConfig fields a YAML sets at its top level, next to the other settings that change no key, not under train:
TOP_LEVEL_TRAIN = ("device", "num_workers", "eval_batch_size")
DEFAULT_METHODS = ("baseline", "naive", "full")


@dataclass(frozen=True)
class Key:
    """One YAML key: its kind, default, allowed values, lower bound and a one-line description. ``null`` in a YAML
    means the default; a key whose default is None stays None (an optional setting) unless it is ``required``."""

    kind: str  # str | path | int | float | bool | floats | ints | strs | custom (``parse``)
    default: Any = None
    help: str = ""
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    why: str = ""  # why ``max`` is the limit, said in the error
    required: bool = False
    # kind custom: (value, source, key) -> the parsed value, or an InputError naming source and key
    parse: Callable[[Any, str, str], Any] | None = None
    # list kinds: (values, source, key) -> None, or an InputError: a check of the whole list
    check: Callable[[list, str, str], None] | None = None

    @property
    def nullable(self) -> bool:
        return self.default is None and not self.required


def show(v: Any) -> str:
    s = repr(v)
    return s if len(s) < 60 else s[:57] + "..."


def expected(source: str, key: str, what: str, v: Any) -> InputError:
    return InputError(f"{source}: {key}: expected {what}, got {show(v)}")


# ----------------------------------------------------------------------------------------------------------------------
# keys from settings dataclasses


def kind_of(annotation: Any) -> str:
    """The key kind of a field annotation: ``int``, ``float``, ``str``, ``bool``, ``Path``, optionally ``| None``."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts = [p.strip() for p in text.split("|") if p.strip() != "None"]
    if len(parts) != 1 or parts[0] not in _ANNOTATION_KINDS:
        raise TypeError(f"no YAML kind for the annotation {text!r}: give the key a kind or a parse")
    return _ANNOTATION_KINDS[parts[0]]


def key_from_field(f: dataclasses.Field, **extra: Any) -> Key:
    """The YAML key of one settings field: default, help, ``min`` and ``choices`` from its description, the kind from
    its annotation; a field without a default is required. ``extra`` sets what the description does not say (a
    ``parse`` for another type, a ``kind``, a ``min``...)."""
    if f.default is not dataclasses.MISSING:
        default, required = f.default, False
    elif f.default_factory is not dataclasses.MISSING:
        default, required = f.default_factory(), False
    else:
        default, required = None, True
    spec: dict[str, Any] = {"default": default, "required": required, "help": f.metadata.get("help", ""),
                            "choices": tuple(f.metadata.get("choices", ())), "min": f.metadata.get("min"),
                            "max": f.metadata.get("max"), "why": f.metadata.get("why", "")}
    spec.update(extra)
    if "kind" not in spec:
        spec["kind"] = "custom" if spec.get("parse") else kind_of(f.type)
    return Key(**spec)


def settings_keys(cls: type, names: Iterable[str] | None = None, skip: Iterable[str] = (),
                  extras: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Key]:
    """Keys of a settings dataclass: the fields ``names`` (in that order), else every field not marked ``yaml=False``
    and not in ``skip``; ``extras[name]`` goes to :func:`key_from_field`."""
    extras = extras or {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if names is None:
        names = [n for n, f in fields.items() if f.metadata.get("yaml", True) and n not in set(skip)]
    return {n: key_from_field(fields[n], **extras.get(n, {})) for n in names}


def train_section() -> dict[str, Key]:
    """``train:``: the trainer's settings (TrainConfig) but those a YAML sets elsewhere or not at all."""
    from ..training.config import TrainConfig, parse_warmup

    def warmup(v: Any, source: str, key: str) -> int | float:  # a count of steps (2.0 is 2) or a fraction below 1
        v = _number(v, Key("float", min=0), source, key)
        try:
            return parse_warmup(v, key)
        except InputError as e:
            raise InputError(f"{source}: {e}") from None

    return settings_keys(TrainConfig, skip=TOP_LEVEL_TRAIN, extras={"warmup": {"parse": warmup}})


def top_level_train_keys() -> dict[str, Key]:
    from ..training.config import TrainConfig, check_device, parse_num_workers

    def workers(v: Any, source: str, key: str) -> int | str:
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise expected(source, key, "a count >= 0 or auto", v)
        try:
            return parse_num_workers(v)
        except InputError as e:
            if "at most" in str(e):
                raise InputError(f"{source}: {key}: {str(e).split(': ', 1)[1]}") from None
            raise expected(source, key, "a count >= 0 or auto", v) from None

    def device(v: Any, source: str, key: str) -> str:
        if not isinstance(v, str):
            raise expected(source, key, "auto, cpu, cuda or cuda:N", v)
        try:
            return check_device(v)  # against the devices of this machine
        except InputError as e:
            raise InputError(f"{source}: {key}: {str(e).removeprefix('--device ')}") from None

    return settings_keys(TrainConfig, TOP_LEVEL_TRAIN,
                         extras={"num_workers": {"parse": workers}, "device": {"parse": device}})


def distill_section() -> dict[str, Key]:
    """``distill:``: the objective's switches (:data:`mad_pipeline.losses.SWITCHES`), each with the kind of the
    MADConfig field it sets and the choices of its registry; null keeps the preset's value."""
    from ..losses import (
        ALPHA_SCHEDULES,
        CONFIDENCE_MODES,
        SELECTION_POLICIES,
        SWITCHES,
        TOKEN_LOSSES,
        MADConfig,
        parse_top_k,
    )

    def top_k(v: Any, source: str, key: str) -> float | int:
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise expected(source, key, "a fraction in (0, 1] or a count", v)
        try:
            return parse_top_k(v)
        except ValueError as e:
            raise InputError(f"{source}: {key}: {e}") from None

    extras: dict[str, dict[str, Any]] = {
        "select": {"choices": tuple(SELECTION_POLICIES)}, "confidence": {"choices": CONFIDENCE_MODES},
        "alpha_schedule": {"choices": ALPHA_SCHEDULES}, "token_loss": {"choices": TOKEN_LOSSES},
        "top_k": {"kind": "custom", "parse": top_k}, "alpha": {"min": 0}, "alpha_ratio": {"min": 0},
    }
    kinds = {f.name: f.type for f in dataclasses.fields(MADConfig)}
    out = {}
    for name, targets in SWITCHES.items():
        spec = {"help": "sets MADConfig." + ", ".join(targets), **extras.get(name, {})}
        if "kind" not in spec:
            spec["kind"] = kind_of(kinds[targets[0]])
        out[name] = Key(**spec)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# values


def check_value(v: Any, spec: Key, source: str, key: str) -> Any:
    """``v`` checked against ``spec`` (ints stay ints, numbers become floats, strings stay strings); a mistake is
    one :class:`InputError` naming ``source`` and ``key``."""
    if v is None:
        if spec.nullable:
            return None
        if spec.default is not None:
            return default_value(spec, source, key)
        raise expected(source, key, "a value", v)
    if spec.parse is not None:
        return spec.parse(v, source, key)
    if spec.kind in LIST_KINDS:
        return _list(v, spec, source, key)
    return _SCALARS[spec.kind](v, spec, source, key)


def default_value(spec: Key, source: str, key: str) -> Any:
    """The value of a key the YAML leaves out (or sets to null): a copy of its default, parsed when the key has its
    own parser (``methods: [baseline, naive, full]`` -> the mapping of methods)."""
    d = copy.deepcopy(spec.default)
    return spec.parse(d, source, key) if spec.parse is not None and d is not None else d


def _text(v: Any, spec: Key, source: str, key: str) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise expected(source, key, "a string", v)
    v = str(v)
    if spec.choices and v not in spec.choices:
        raise InputError(f"{source}: {key}: {v!r} is not one of {', '.join(spec.choices)}")
    return v


def _bool(v: Any, spec: Key, source: str, key: str) -> bool:
    if not isinstance(v, bool):
        raise expected(source, key, "true or false", v)
    return v


def _number(v: Any, spec: Key, source: str, key: str) -> int | float:
    integer = spec.kind == "int"
    if isinstance(v, str):  # YAML 1.1 reads 1e-3 and 1E-3 (no dot) as text; Python's float() reads them
        v = _number_text(v, integer)
    if isinstance(v, float) and integer and v.is_integer() and math.isfinite(v):
        v = int(v)  # steps: 1e3, 2.0
    if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
        raise expected(source, key, "an integer" if integer else "a number", v)
    if isinstance(v, float) and not math.isfinite(v):
        raise InputError(f"{source}: {key}: expected a finite number, got {v}")
    if spec.min is not None and v < spec.min:
        raise InputError(f"{source}: {key}: must be at least {spec.min:g}, got {v}")
    if spec.max is not None and v > spec.max:
        why = f" ({spec.why})" if spec.why else ""
        raise InputError(f"{source}: {key}: must be at most {spec.max:,}{why}, got {v:.3g}")
    return v if integer else float(v)


def _number_text(text: str, integer: bool) -> Any:
    """A number written as text (``1e-3``, ``1E-3``, ``.5``, ``5.``, ``1_000``, ``+2``) as Python reads it; the text
    itself when it is not one (reported by the caller as not a number)."""
    for parse in ((int, float) if integer else (float,)):
        try:
            return parse(text.strip())
        except (ValueError, OverflowError):
            continue
    return text


_SCALARS = {"str": _text, "path": _text, "bool": _bool, "int": _number, "float": _number}


def _list(v: Any, spec: Key, source: str, key: str) -> list:
    items = v if isinstance(v, list) else [v]
    if not items:
        if spec.kind == "strs":
            return []
        raise expected(source, key, "a non-empty list", v)
    one = dataclasses.replace(spec, kind=LIST_KINDS[spec.kind], default=None, required=True, check=None)
    vals = [check_value(x, one, source, f"{key}[{i}]") for i, x in enumerate(items)]
    if spec.check is not None:
        spec.check(vals, source, key)
    if len(set(vals)) != len(vals):
        raise InputError(f"{source}: {key}: repeated values in {show(vals)}")
    return vals


__all__ = ["DEFAULT_METHODS", "LIST_KINDS", "TOP_LEVEL_TRAIN", "Key", "check_value", "default_value",
           "distill_section", "expected", "key_from_field", "kind_of", "settings_keys", "show", "top_level_train_keys",
           "train_section"]
