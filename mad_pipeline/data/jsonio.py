"""Reading annotation files: whole JSON documents, JSONL files record by record, and the field checks the readers
(and ``mad score``) share.

Every problem is an :class:`~mad_pipeline.errors.InputError` naming the file, and the line or record where there is
one. :func:`read_jsonl` is the one loop every JSONL reader runs: on a bad line it either fails naming ``file:line``
or, with ``on_error="skip"``, records a :class:`~mad_pipeline.data.base.Skipped` and goes on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputError
from .base import Sample, Skipped


def load_json(path: Path, what: str = "JSON file") -> Any:
    """Load a whole JSON document; every failure is an InputError naming the file (and line for bad JSON)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not valid UTF-8 (byte {e.start})") from None
    if not text.strip():
        raise InputError(f"{path}: empty file (expected a {what})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply to read") from None


def decode_line(line: bytes) -> Any:
    """One JSONL line as a JSON value; ValueError (the reason, without the place) if it is not UTF-8 JSON."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not valid UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None


def peek_field(line: bytes, field: str) -> str | None:
    """``field`` of a JSONL line when the line is a JSON object holding it as a string, else None (for naming a
    skipped record)."""
    try:
        rec = decode_line(line)
    except ValueError:
        return None
    value = rec.get(field) if isinstance(rec, dict) else None
    return value if isinstance(value, str) else None


def read_jsonl(path: Path, parse: Callable[[Any, set[str]], Sample], *, sample_id: Callable[[bytes], str | None],
               on_error: str = "fail", what: str = "JSONL file") -> tuple[list[Sample], list[Skipped]]:
    """Read a JSONL file into samples, one per non-blank line.

    ``parse(record, seen)`` turns one decoded line into a Sample or raises ValueError with the reason; ``seen``
    holds the ids of the samples read so far (for the reader's own duplicate check). On a bad line: with
    ``on_error="skip"`` a Skipped naming ``file:line`` (and ``sample_id(line)``) is recorded, otherwise an
    InputError naming ``file:line`` is raised. A file without any record is an InputError.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for lineno, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            sample = parse(decode_line(line), seen)
        except ValueError as e:
            if on_error == "skip":
                skipped.append(Skipped(where, sample_id(line), str(e)))
                continue
            raise InputError(f"{where}: {e}") from None
        seen.add(sample.id)
        samples.append(sample)
    if not samples and not skipped:
        raise InputError(f"{path}: no records")
    return samples, skipped


# a lone surrogate (JSON's "\ud800" escapes decode to one) or the replacement character a bad decode leaves
not_unicode = re.compile("[\ud800-\udfff\ufffd]").search


def check_text(value: Any, field: str) -> str:
    """A text field: a string that is valid Unicode (no lone surrogates, no U+FFFD from a bad decode)."""
    if not isinstance(value, str):
        raise ValueError(f"field {field!r} must be a string")
    if not_unicode(value):
        raise ValueError(f"field {field!r} is not valid Unicode (replacement characters or lone surrogates)")
    return value


def check_texts(value: Any, field: str) -> list[str]:
    """A caption field: one string, or a list of strings (several captions of one image, one sample)."""
    if isinstance(value, str):
        return [check_text(value, field)]
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) for t in value):
        raise ValueError(f"field {field!r} must be a string or a list of strings")
    return [check_text(t, field) for t in value]


def check_int(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"field {field!r} must be an integer")
    return value


def require(rec: dict, field: str) -> Any:
    if field not in rec:
        raise ValueError(f"missing field {field!r}")
    return rec[field]


__all__ = ["check_int", "check_text", "check_texts", "decode_line", "load_json", "peek_field", "read_jsonl", "require"]
