"""``key=value`` overrides of a ``mad run`` YAML, applied to the raw mapping before it is validated.

A dotted key follows the schema (``train.steps=50``, ``data.shapes.size=4000``); the sections keyed by the user's own
names follow the YAML: ``methods.<name>.<switch>=``, ``methods.<name>.train.<key>=``, ``per_task.<task>.<key...>=``
and ``per_fraction.<fraction>.train.<key>=`` (the fraction as YAML writes it: ``per_fraction.0.05.train.lr=3e-4``).
The value is parsed as YAML. What the override sets is then checked with the rest of the file, so a bad value is the
same one line as in the YAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from .schema import Key
from .yaml_io import load_value


def parse_override(ov: str) -> tuple[str, list[str], str, Any]:
    """``key=value`` -> (key, its parts, the value's text, the value parsed as YAML)."""
    if "=" not in ov:
        raise InputError(f"override {ov!r}: expected key=value (e.g. train.steps=50)")
    key, text = ov.split("=", 1)
    key = key.strip()
    try:
        value = load_value(text) if text.strip() else None
    except InputError as e:
        raise InputError(f"override {ov if len(ov) < 60 else ov[:57] + '...'!r}: {e}") from None
    return key, key.split("."), text, value


def apply_override(raw: dict, sch: dict, ov: str) -> str:
    """Set one ``key=value`` in the raw config (the value is parsed as YAML); returns the dotted key."""
    key, parts, text, value = parse_override(ov)
    if parts[0] == "methods" and len(parts) > 1:
        _override_method(raw, parts, value, ov)
        return key
    if parts[0] in FREE_SECTIONS and len(parts) > 1:
        _override_free(raw, parts, value, ov)
        return key
    if parts == ["methods"] and isinstance(value, (list, str)) and isinstance(raw.get("methods"), dict):
        # a list picks methods: the ones the config defines keep their settings (lr, init, ...)
        raw["methods"] = {str(x): raw["methods"].get(str(x), {}) for x in ([value] if isinstance(value, str)
                                                                            else value)}
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
    if isinstance(node_s, Key) and node_s.kind == "path" and value is not None:
        value = str((Path.cwd() / Path(str(value)).expanduser()).resolve())
    if isinstance(node_s, Key) and node_s.kind in ("str", "path") and value is not None and not isinstance(value, str):
        value = text  # e.g. name=2024 stays the string "2024"
    node_r[parts[-1]] = value
    return key


FREE_SECTIONS = ("per_task", "per_fraction")  # sections keyed by the user's names: checked when parsed


def _override_free(raw: dict, parts: list[str], value: Any, ov: str) -> None:
    """``per_task.<task>.<key...>=`` or ``per_fraction.<fraction>.train.<key>=``: set in the raw config, creating
    the mappings on the way; the section's own parser checks the result like the YAML's. A fraction is written as
    in YAML (``per_fraction.0.05.train.steps=800``: its two dotted parts are one number)."""
    keys: list[Any] = []
    i = 0
    while i < len(parts):
        if keys and keys[-1] == "per_fraction":
            digits = i + 1 < len(parts) and parts[i + 1].isdigit()
            text = ".".join(parts[i:i + 2]) if digits else parts[i]
            try:
                keys.append(float(text))
            except ValueError:
                raise InputError(f"override {ov!r}: per_fraction.{text}: not a training fraction") from None
            i += 2 if digits else 1
        else:
            keys.append(parts[i])
            i += 1
    *path, last = keys
    node = raw
    for depth, key in enumerate(path):
        key = _as_written(node, key)
        if node.get(key) is None:
            node[key] = {}
        if not isinstance(node[key], dict):
            raise InputError(f"override {ov!r}: {'.'.join(map(str, keys[:depth + 1]))} is not a mapping")
        node = node[key]
    node[_as_written(node, last)] = value


def _as_written(node: dict, key: Any) -> Any:
    """A fraction as ``node`` spells it (YAML's ``1`` or ``1.0``), else ``key`` itself."""
    if not isinstance(key, float):
        return key
    return next((k for k in node if not isinstance(k, bool) and isinstance(k, int | float) and float(k) == key), key)


def _override_method(raw: dict, parts: list[str], value: Any, ov: str) -> None:
    """``methods.<name>=...``, ``methods.<name>.<switch>=...`` or ``methods.<name>.train.<key>=...`` (the list form
    becomes a mapping)."""
    if len(parts) > 4 or (len(parts) == 4 and parts[2] != "train"):
        raise InputError(f"override {ov!r}: expected methods.<name>=..., methods.<name>.<switch>=... or "
                         "methods.<name>.train.<key>=...")
    m = raw.get("methods")
    m = [m] if isinstance(m, str) else m
    m = {str(x): {} for x in m} if isinstance(m, list) else (m if isinstance(m, dict) else {})
    raw["methods"] = m
    if len(parts) == 2:
        m[parts[1]] = value
        return
    body = m.get(parts[1]) or {}
    if not isinstance(body, dict):
        raise InputError(f"override {ov!r}: methods.{parts[1]} is not a mapping")
    if len(parts) == 4:
        train = body.get("train") or {}
        if not isinstance(train, dict):
            raise InputError(f"override {ov!r}: methods.{parts[1]}.train is not a mapping")
        train[parts[3]] = value
        value = train
    body[parts[2]] = value
    m[parts[1]] = body


__all__ = ["apply_override", "parse_override"]
