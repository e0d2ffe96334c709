"""A config's methods: each a preset of the objective (baseline, naive, full), the objective switches that apply
to it only, and its own training settings (``train:``, ``init``) over the config's.

``methods: [baseline, naive, full]`` is the list form; ``methods: {name: {preset: full, select: random, train: {lr:
3e-4}, init: scratch}}`` the mapping form (ablations, methods at their own tuned learning rates, a from-scratch
student beside the pretrained one).
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from .schema import Key, check_value, distill_section, show, train_section


def parse_methods(v: Any, source: str, key: str) -> dict[str, dict[str, Any]]:
    """``[baseline, naive, full]`` or ``{name: {preset: full, select: random, train: {...}, ...}}`` -> {name: {preset,
    switches, train, init}} (``train`` and ``init`` only when the method sets them)."""
    from ..losses import PRESETS

    if isinstance(v, str):
        v = [v]
    if isinstance(v, list):
        out: dict[str, dict[str, Any]] = {}
        for i, name in enumerate(v):
            if not isinstance(name, str) or name not in PRESETS:
                raise InputError(f"{source}: {key}[{i}]: {show(name)} is not one of {', '.join(PRESETS)} "
                                 "(use a mapping name -> {preset: ..., switches} for custom methods)")
            if name in out:
                raise InputError(f"{source}: {key}: {name} listed twice")
            out[name] = {"preset": name}
        if not out:
            raise InputError(f"{source}: {key}: expected at least one method")
        return out
    if not isinstance(v, dict) or not v:
        raise InputError(f"{source}: {key}: expected a list of presets or a mapping, got {show(v)}")
    switches = distill_section()
    out = {}
    for name, body in v.items():
        body = {} if body is None else body
        if not isinstance(body, dict):
            raise InputError(f"{source}: {key}.{name}: expected a mapping (preset: ..., select: ...), got "
                             f"{show(body)}")
        rest = {k: b for k, b in body.items() if k not in ("preset", *METHOD_SETTINGS)}
        for k in rest:
            if k not in switches:
                raise InputError(f"{source}: unknown key {key}.{name}.{k} (known: preset, "
                                 f"{', '.join(sorted((*switches, *METHOD_SETTINGS)))})")
        preset = body.get("preset", name)
        if preset not in PRESETS:
            raise InputError(f"{source}: {key}.{name}.preset: {show(preset)} is not one of {', '.join(PRESETS)}")
        sw = {k: check_value(b, switches[k], source, f"{key}.{name}.{k}") for k, b in rest.items()}
        out[str(name)] = {"preset": preset, **sw, **_method_settings(body, source, f"{key}.{name}")}
    return out


# A method's own settings beside its objective switches: ``train:`` (any of the train section's keys, over the
# config's) and ``init`` (its student's initial weights, over the config's ``init``).
METHOD_SETTINGS = ("train", "init")


def _method_settings(body: dict[str, Any], source: str, key: str) -> dict[str, Any]:
    from ..students.weights import RUN_INITS

    out: dict[str, Any] = {}
    train = body.get("train")
    if train is not None:
        if not isinstance(train, dict):
            raise InputError(f"{source}: {key}.train: expected a mapping of train settings (lr: ..., warmup: ...), "
                             f"got {show(train)}")
        section = train_section()
        for k in train:
            if k not in section:
                raise InputError(f"{source}: unknown key {key}.train.{k} (known: {', '.join(sorted(section))})")
        out["train"] = {k: check_value(x, section[k], source, f"{key}.train.{k}") for k, x in train.items()
                        if x is not None}
    if body.get("init") is not None:
        out["init"] = check_value(body["init"], Key("str", choices=RUN_INITS), source, f"{key}.init")
    return out


def mad_config(values: dict[str, Any], method: str, source: str = "<config>"):
    """The MADConfig of one method: its preset, the config's ``distill`` switches, then the method's own switches.
    The baseline is always the plain-finetuning preset (switches do not apply to it, and do not change its key)."""
    from ..losses import MADConfig

    m = values["methods"][method]
    if m["preset"] == "baseline":
        return MADConfig.from_switches("baseline")
    switches = {k: v for k, v in values["distill"].items() if v is not None}
    switches.update({k: v for k, v in m.items() if k not in ("preset", *METHOD_SETTINGS) and v is not None})
    try:
        return MADConfig.from_switches(m["preset"], **switches)
    except InputError as e:
        raise InputError(f"{source}: methods.{method}: {e}") from None


def for_method(values: dict[str, Any], method: str) -> dict[str, Any]:
    """The config's values as one method trains with them: its own ``train:`` settings over the config's, its own
    ``init`` over the config's (the values themselves when the method sets neither)."""
    m = values["methods"][method]
    if not m.get("train") and not m.get("init"):
        return values
    out = dict(values)
    out["train"] = {**values["train"], **(m.get("train") or {})}
    out["init"] = m.get("init") or values.get("init")
    return out


def inits(values: dict[str, Any]) -> set[Any]:
    """The students' initialisations a config uses (``init``, or the methods' own)."""
    return {for_method(values, m).get("init") for m in values["methods"]}


__all__ = ["METHOD_SETTINGS", "for_method", "inits", "mad_config", "parse_methods"]
