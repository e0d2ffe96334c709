"""VCR predictions in the leaderboard's format: one CSV row per question with the probabilities of the four answers
and of the four rationales conditioned on each answer (the format of ``models/README.md`` and
``models/eval_for_leaderboard.py`` in rowanz/r2c, which visualcommonsense.com's leaderboard takes)::

    annot_id,answer_0,answer_1,answer_2,answer_3,rationale_conditioned_on_a0_0,...,rationale_conditioned_on_a3_3

``rationale_conditioned_on_a{i}_{j}`` is the probability of rationale ``j`` given answer ``i``. The leaderboard takes
the argmax over the answers (Q->A) and the argmax over the rationales conditioned on the *right* answer (QA->R);
:func:`~mad_pipeline.tasks.metrics.vcr_evaluate_probabilities` scores it the same way.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..data.vcr import NUM_CHOICES
from ..errors import InputError

ANSWER_COLUMNS = tuple(f"answer_{i}" for i in range(NUM_CHOICES))
RATIONALE_COLUMNS = tuple(f"rationale_conditioned_on_a{i}_{j}" for i in range(NUM_CHOICES) for j in range(NUM_CHOICES))
COLUMNS = ("annot_id", *ANSWER_COLUMNS, *RATIONALE_COLUMNS)


def softmax(logits) -> np.ndarray:
    """Softmax over the last axis, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def write_csv(path: Path, rows: Sequence[tuple[str, Sequence[float], Sequence[Sequence[float]]]]) -> Path:
    """Write ``(annot_id, answer probabilities (4,), rationale probabilities (4 answers, 4 rationales))`` rows;
    numbers as Python writes them (they read back exactly). Atomic: a temporary file renamed into place."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for annot_id, answer, rationale in rows:
        w.writerow([annot_id, *(repr(float(x)) for x in answer),
                    *(repr(float(x)) for row in rationale for x in row)])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    tmp.replace(path)
    return path


def is_csv(path: Path) -> bool:
    """Whether ``path`` is a leaderboard CSV (by its suffix, or a first line starting with ``annot_id``)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return True
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            return f.read(len("annot_id,")) == "annot_id,"
    except OSError:
        return False


def read_csv(path: Path, expected: Collection[str], annotations: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{annot_id: (answer scores (4,), rationale scores (4, 4))}``, exactly one row per id of ``expected``. Any
    mistake is one :class:`InputError` naming the file, the line and the column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the predictions file ({e})") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise InputError(f"{path}: empty file (expected the VCR leaderboard CSV header {','.join(COLUMNS[:3])},...)")
    header = [h.strip() for h in header]
    for name in header:
        if name not in COLUMNS:
            raise InputError(f"{path}:1: unknown column {name!r} (the VCR leaderboard columns are annot_id, "
                             "answer_0..answer_3, rationale_conditioned_on_a0_0..rationale_conditioned_on_a3_3)")
        if header.count(name) > 1:
            raise InputError(f"{path}:1: column {name!r} appears twice")
    for name in COLUMNS:
        if name not in header:
            raise InputError(f"{path}:1: missing column {name!r}")
    col = {name: header.index(name) for name in COLUMNS}
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for row in reader:
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise InputError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
        annot_id = row[col["annot_id"]].strip()
        where = f"{path}:{line} (annot_id={annot_id})"
        if annot_id in out:
            raise InputError(f"{where}: duplicate prediction")
        if annot_id not in expected:
            raise InputError(f"{where}: not in {annotations}")
        values = []
        for name in COLUMNS[1:]:
            cell = row[col[name]].strip()
            try:
                v = float(cell)
            except ValueError:
                v = math.nan
            if not math.isfinite(v):
                raise InputError(f"{where}: column {name!r} must be a finite number, got {cell!r}")
            values.append(v)
        out[annot_id] = (np.array(values[:NUM_CHOICES]), np.array(values[NUM_CHOICES:]).reshape(NUM_CHOICES, -1))
    missing = [k for k in expected if k not in out]
    if missing:
        raise InputError(f"{path}: no prediction for annot_id={missing[0]} ({len(missing)} of {len(expected)} "
                         f"annotated records have none; every one needs a row)")
    return out


def rows_of(records: Sequence[Mapping], key: str) -> list[tuple[str, list[float], list[list[float]]]]:
    """The CSV rows of prediction records that carry their probabilities under ``key``."""
    return [(str(r["annot_id"]), r[key]["answer"], r[key]["rationale"]) for r in records]


__all__ = ["ANSWER_COLUMNS", "COLUMNS", "RATIONALE_COLUMNS", "is_csv", "read_csv", "rows_of", "softmax",
           "write_csv"]
