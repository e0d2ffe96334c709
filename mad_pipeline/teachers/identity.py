"""Teacher identity for cache keys, computed without building the model.

A teacher's identity is what determines its outputs: the architecture config (open_clip's model config or the
transformers ``config.json``), the digest of the weights' tensor contents (:mod:`.digest`: the same tensors give
the same digest in any container), the preprocessing (image size, mean, std, interpolation, resize mode) or the
tokenizer (its vocabulary files and length), and the compute precision. The registry name is not part of it.
Everything is read from files: no model is built to find a key, so a run whose stores are in a local or shared
cache never constructs its teacher. The tensor digests are memoised under ``<cache>/identities/tensors/`` by the
weight file's real path, size and mtime, and whole identities under ``<cache>/identities/``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..hashing import content_key
from .base import resolve_device, resolve_precision
from .registry import TeacherSpec, get_teacher_spec, load_teacher, text_source

SCHEME = 2  # how identities are made (memos of another scheme are not reused)

def _weights_stamp(weights: str | None) -> object:
    if not weights:
        return None
    p = weights[len("local-dir:") :] if weights.startswith("local-dir:") else weights
    try:
        if os.path.isdir(p):
            return [os.path.realpath(p)] + [(f.name, f.stat().st_size, f.stat().st_mtime_ns)
                                            for f in sorted(Path(p).iterdir()) if f.is_file()]
        st = os.stat(p)
        return [os.path.realpath(p), st.st_size, st.st_mtime_ns]
    except OSError:
        return weights


def compute_identity(spec: TeacherSpec, weights: str | None, precision: str, max_length: int | None,
                     digest_memo: Path | None, flag: str = "--weights") -> dict | None:
    """``{"image": ..., "text": ...}`` (None for a tower the teacher lacks) read from the teacher's files; None
    when only the library's hub download can tell (a transformers teacher not in the local hub cache)."""
    if spec.family == "open_clip":
        from .digest import tensor_digest
        from .openclip import clip_identity, resolve_source

        source = resolve_source(spec.name, spec.model, spec.pretrained, weights, flag)
        ckpt = source.checkpoint  # a wrong architecture is one line before the weights' contents are read
        digest = tensor_digest(ckpt, digest_memo, check=source.check_shapes) if ckpt else None
        return clip_identity(source, precision, digest)
    from .hf_text import hf_text_identity

    text = hf_text_identity(text_source(spec, weights, flag), precision, max_length or spec.max_length, digest_memo)
    return None if text is None else {"image": None, "text": text}


class LazyTeacher:
    """Identity now (from the files, memoised), the model only when a store must really be computed.

    ``flag`` is the option that named ``weights`` (``--weights`` or ``--text-weights``), for messages."""

    def __init__(self, name: str, weights: str | None, device: str, precision: str, max_length: int | None,
                 memo_dir: Path, flag: str = "--weights"):
        self.spec = get_teacher_spec(name)
        self.name = name
        self.weights = weights
        self.device = device
        dev = resolve_device(device)
        self.precision = resolve_precision(precision, dev)
        self.max_length = max_length
        self.flag = flag
        self._model = None
        self._memo_dir = Path(memo_dir)
        own = self.spec.model if weights is None and self.spec.model.startswith("local-dir:") else weights
        stamp = {"scheme": SCHEME, "spec": self.spec.__dict__, "weights": _weights_stamp(own),
                 "precision": self.precision, "max_length": max_length}
        self._memo = self._memo_dir / f"{content_key(stamp)}.json"

    @property
    def towers(self) -> tuple[str, ...]:
        return self.spec.towers

    def get(self):
        if self._model is None:
            self._model = load_teacher(self.name, self.weights, self.device, self.precision, self.max_length,
                                       flag=self.flag)
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _compute(self) -> dict:
        ident = compute_identity(self.spec, self.weights, self.precision, self.max_length,
                                 self._memo_dir / "tensors", self.flag)
        if ident is None:  # only the hub download can tell: load it (it is needed anyway)
            t = self.get()
            ident = {"image": t.image_identity() if "image" in self.towers else None,
                     "text": t.text_identity() if "text" in self.towers else None}
        return ident

    def identity(self, tower: str) -> dict:
        try:
            ident = json.loads(self._memo.read_text())
        except (OSError, json.JSONDecodeError):
            ident = self._compute()
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
