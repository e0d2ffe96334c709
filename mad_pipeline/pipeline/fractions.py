"""A training fraction's own settings in a ``mad run`` config, and the settings one run trains with.

``per_fraction: {1.0: {train: {steps: 3000}}}`` gives the runs at one training fraction their own ``train:``
settings over the config's: a larger step cap where there is more data to learn from, for instance, while early
stopping ends the small fractions' runs long before it. A method's own ``train:`` settings
(``methods.<name>.train``) apply over both; a ``train.<key>=`` override on the command line is final over a
fraction's own (:func:`final_over_fractions`). A run's settings are in its key, so only the runs whose settings change
are trained again.
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from .methods import for_method
from .schema import check_value, show, train_section


def parse_per_fraction(v: Any, source: str, key: str) -> dict[float, dict[str, Any]]:
    """``{1.0: {train: {steps: 3000}}}`` -> ``{1.0: {"train": {...}}}``, each train key checked like the ``train:``
    section's."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise InputError(f"{source}: {key}: expected a mapping fraction -> {{train: {{...}}}}, got {show(v)}")
    section = train_section()
    out: dict[float, dict[str, Any]] = {}
    for f, body in v.items():
        where = f"{key}.{f}"
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0 < f <= 1:
            raise InputError(f"{source}: {where}: {show(f)} is not a training fraction in (0, 1]")
        if not isinstance(body, dict) or set(body) - {"train"}:
            extra = sorted(set(body) - {"train"}) if isinstance(body, dict) else None
            what = f"unknown key {where}.{extra[0]} (known: train)" if extra else \
                f"{where}: expected {{train: {{steps: ...}}}}, got {show(body)}"
            raise InputError(f"{source}: {what}")
        train = body.get("train") or {}
        if not isinstance(train, dict):
            raise InputError(f"{source}: {where}.train: expected a mapping of train settings, got {show(train)}")
        for k in train:
            if k not in section:
                raise InputError(f"{source}: unknown key {where}.train.{k} (known: {', '.join(sorted(section))})")
        out[float(f)] = {"train": {k: check_value(x, section[k], source, f"{where}.train.{k}")
                                   for k, x in train.items() if x is not None}}
    return out


def for_run(values: dict[str, Any], method: str, fraction: float) -> dict[str, Any]:
    """The config's values as the run of ``method`` at ``fraction`` trains with them: the config's ``train:``, then
    the fraction's own, then the method's own (and the method's ``init``)."""
    own = (values.get("per_fraction") or {}).get(float(fraction))
    if not own or not own.get("train"):
        return for_method(values, method)
    base = dict(values)
    base["train"] = {**values["train"], **own["train"]}
    return for_method(base, method)


def final_over_fractions(raw: dict[str, Any], overridden: dict[str, str]) -> None:
    """A ``train.<key>=`` override is final at every fraction: the key is dropped from each ``per_fraction`` entry of
    the file (``train.steps=30`` caps every run, also at a fraction with its own cap). A ``per_fraction=`` override
    is kept whole."""
    keys = {k.split(".", 1)[1] for k in overridden if k.startswith("train.")}
    entries = raw.get("per_fraction") if "per_fraction" not in overridden else None
    if not keys or not isinstance(entries, dict):
        return
    for body in entries.values():
        train = body.get("train") if isinstance(body, dict) else None
        if isinstance(train, dict):
            for k in keys & set(train):
                del train[k]


def check_per_fraction(values: dict[str, Any], source: str, train_config,
                       filtered: frozenset[float] = frozenset()) -> None:
    """Each ``per_fraction`` entry names one of the config's fractions, and makes valid trainer settings with every
    method (``train_config``: values -> TrainConfig, raising :class:`InputError`). An entry for a fraction in
    ``filtered`` (the file lists it, a ``fractions=`` override left it out) is dropped: those runs are not in this
    plan, so one config serves a run of one fraction as it serves the whole study."""
    fractions = [float(f) for f in values["fractions"]]
    own = values.get("per_fraction") or {}
    for f in list(own):
        if f not in fractions and f in filtered:
            del own[f]
        elif f not in fractions:
            raise InputError(f"{source}: per_fraction.{f:g}: not one of the config's fractions "
                             f"({', '.join(f'{x:g}' for x in fractions)})")
    for f in own:
        for name in values["methods"]:
            try:
                train_config(for_run(values, name, f))
            except InputError as e:
                raise InputError(f"{source}: per_fraction.{f:g}.train: {e}") from None


__all__ = ["check_per_fraction", "final_over_fractions", "for_run", "parse_per_fraction"]
