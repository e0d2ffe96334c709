"""Teacher identity for cache keys, memoised so a cached rerun does not even load the teacher.

The identity (architecture config, weight-file sha256, preprocessing, tokenizer, compute precision) is computed
from a loaded teacher once and remembered under ``<cache>/identities/`` keyed by the teacher name, the weight
file's path, size and mtime, and the precision.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..hashing import content_key
from .base import resolve_device, resolve_precision
from .registry import get_teacher_spec, load_teacher


def _weights_stamp(weights: str | None) -> object:
    if not weights:
        return None
    p = weights[len("local-dir:") :] if weights.startswith("local-dir:") else weights
    try:
        if os.path.isdir(p):
            return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(Path(p).iterdir())
                    if f.is_file()]
        st = os.stat(p)
        return [os.path.realpath(p), st.st_size, st.st_mtime_ns]
    except OSError:
        return weights


class LazyTeacher:
    """Identity now (from the memo when possible), the model only when a store must really be computed."""

    def __init__(self, name: str, weights: str | None, device: str, precision: str, max_length: int | None,
                 memo_dir: Path):
        self.spec = get_teacher_spec(name)
        self.name = name
        self.weights = weights
        self.device = device
        dev = resolve_device(device)
        self.precision = resolve_precision(precision, dev)
        self.max_length = max_length
        self._model = None
        stamp = {"spec": self.spec.__dict__, "weights": _weights_stamp(weights), "precision": self.precision,
                 "max_length": max_length}
        self._memo = Path(memo_dir) / f"{content_key(stamp)}.json"

    @property
    def towers(self) -> tuple[str, ...]:
        return self.spec.towers

    def get(self):
        if self._model is None:
            self._model = load_teacher(self.name, self.weights, self.device, self.precision, self.max_length)
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def identity(self, tower: str) -> dict:
        try:
            ident = json.loads(self._memo.read_text())
        except (OSError, json.JSONDecodeError):
            t = self.get()
            ident = {"image": t.image_identity() if "image" in self.towers else None,
                     "text": t.text_identity() if "text" in self.towers else None}
            try:
                self._memo.parent.mkdir(parents=True, exist_ok=True)
                tmp = self._memo.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(ident))
                os.replace(tmp, self._memo)
            except OSError:
                pass
        ident_t = ident.get(tower)
        if ident_t is None:
            raise ValueError(f"teacher {self.name} has no {tower} tower")
        return ident_t
