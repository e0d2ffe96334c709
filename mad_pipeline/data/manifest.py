"""The generic JSONL manifest: one ``{"id": ..., "image": "relative/path.jpg", "text": "..."}`` per line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InputError
from .base import Dataset, Sample
from .jsonio import check_texts, read_jsonl
from .paths import safe_relpath


def read_jsonl_manifest(manifest: Path, root: Path, on_error: str = "fail") -> Dataset:
    """Parse a manifest. Fields: ``id`` (str/int, unique), ``image`` (path under ``root``), ``text`` (a caption, or
    a list of captions of the same image) or ``texts`` (list of str); other fields go to ``Sample.meta``. A list
    of captions stays one sample whose ``texts`` are the captions (the index store's row lists them all). Every
    problem names ``manifest:line``."""
    manifest = Path(manifest)
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--data-root {root}: not a directory")
    if not manifest.is_file():
        raise InputError(f"--manifest {manifest}: file not found")
    samples, skipped = read_jsonl(manifest, lambda rec, seen: _parse_record(rec, root, seen), on_error=on_error,
                                  what="manifest", sample_id=_peek_id)
    return Dataset(name="jsonl", root=root, split=None, samples=samples, skipped=skipped, sources=[manifest])


def _parse_record(rec: Any, root: Path, seen: set[str]) -> Sample:
    if not isinstance(rec, dict):
        raise ValueError("expected a JSON object")
    if "id" not in rec:
        raise ValueError("missing field 'id'")
    sid = rec["id"]
    if not isinstance(sid, (str, int)) or isinstance(sid, bool):
        raise ValueError("field 'id' must be a string or an integer")
    sid = str(sid)
    if sid in seen:
        raise ValueError(f"duplicate id {sid!r}")
    image = rec.get("image")
    if image is not None:
        if not isinstance(image, str):
            raise ValueError("field 'image' must be a string path")
        image = safe_relpath(image, root)
    if "texts" in rec:
        texts = check_texts(rec["texts"], "texts")
    elif "text" in rec:
        texts = check_texts(rec["text"], "text")  # a caption, or a list of captions of the same image
    else:
        texts = []
    if image is None and not texts:
        raise ValueError("record has neither 'image' nor 'text'")
    meta = {k: v for k, v in rec.items() if k not in ("id", "image", "text", "texts")}
    return Sample(id=sid, image=image, texts=tuple(texts), meta=meta)


def _peek_id(line: bytes) -> str | None:
    try:
        rec = json.loads(line.decode("utf-8", errors="replace"))
        return str(rec.get("id")) if isinstance(rec, dict) and "id" in rec else None
    except (ValueError, RecursionError):
        return None
