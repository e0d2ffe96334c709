"""Command-line options read from a setting's own description (:func:`mad_pipeline.settings.setting`), so the
option, the ``mad run`` YAML key and the Python setting share one default, one help text and one set of choices."""

from __future__ import annotations

import dataclasses
from typing import Any

import typer

from mad_pipeline.errors import InputError


def setting_option(cls: type, name: str, flag: str) -> Any:
    """A Typer option for the field ``name`` of the settings dataclass ``cls``: the field's default and help; a
    value outside its ``choices`` is one error line naming ``flag``."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    choices = tuple(f.metadata.get("choices", ()))
    text = f.metadata.get("help", "")

    def check(value: Any) -> Any:
        if choices and value not in choices:
            raise InputError(f"{flag} {value!r}: expected one of {', '.join(map(str, choices))}")
        return value

    return typer.Option(f.default, flag, help=text[:1].upper() + text[1:] + "." if text else None, callback=check)


__all__ = ["setting_option"]
