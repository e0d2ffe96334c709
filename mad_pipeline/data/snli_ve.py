"""SNLI-VE reader for the official release files (https://github.com/necla-ml/SNLI-VE).

Official files: ``snli_ve_{train,dev,test}.jsonl``, one SNLI record per line with the added ``Flickr30K_ID``
(keys sorted, as the official generator writes them)::

    {"Flickr30K_ID": "3416050480", "annotator_labels": [...], "captionID": "3416050480.jpg#4",
     "gold_label": "neutral", "pairID": "3416050480.jpg#4r1n", "sentence1": ..., "sentence1_binary_parse": ...,
     "sentence1_parse": ..., "sentence2": "A person is training his horse.", "sentence2_binary_parse": ...,
     "sentence2_parse": ...}

Images: ``Flickr30K/flickr30k_images/{Flickr30K_ID}.jpg`` (the generator's layout) or ``flickr30k_images/...``
directly under the data root; whichever folder exists is used. The jsonl files sit at the root or in
``annotations/``. Split names follow the release: ``train``, ``dev``, ``test``.

Each sample is one (image, hypothesis) pair: ``id`` = pairID, ``texts`` = (sentence2,) — the premise caption
``sentence1`` is deliberately not used — and ``meta`` = gold_label, pairID, Flickr30K_ID, captionID.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError
from .base import Dataset, Sample, Skipped
from .paths import safe_relpath
from .vqa import check_text, require

SPLITS = ("train", "dev", "test")
LABELS = ("entailment", "neutral", "contradiction")
FILE = "snli_ve_{split}.jsonl"
IMAGE_DIRS = ("Flickr30K/flickr30k_images", "flickr30k_images")
_FILE_DIRS = ("", "annotations")


def iter_jsonl(path: Path, what: str = "JSONL file") -> Iterator[tuple[int, Any | ValueError]]:
    """Yield ``(line_number, record)`` per non-blank line; a line that is not valid UTF-8 JSON yields a
    ValueError in place of the record, so the caller can fail or skip with ``file:line``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    raw = path.read_bytes()
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield lineno, ValueError(f"not valid UTF-8 (byte {e.start})")
            continue
        try:
            yield lineno, json.loads(text)
        except json.JSONDecodeError as e:
            yield lineno, ValueError(f"malformed JSON ({e.msg} at column {e.colno})")


def snli_ve_file(root: Path, split: str) -> Path:
    if split not in SPLITS:
        raise InputError(f"--split {split!r}: SNLI-VE splits are {', '.join(SPLITS)}")
    root = Path(root)
    name = FILE.format(split=split)
    for d in _FILE_DIRS:
        p = root / d / name if d else root / name
        if p.is_file():
            return p
    raise InputError(f"{root / name}: SNLI-VE file not found (also looked in {root / 'annotations'})")


def image_dir(root: Path) -> str:
    """The Flickr30k image folder under ``root`` (the first layout that exists; the generator's by default)."""
    for d in IMAGE_DIRS:
        if (Path(root) / d).is_dir():
            return d
    return IMAGE_DIRS[0]


def read_snli_ve(root: Path, split: str, on_error: str = "fail") -> Dataset:
    root = Path(root)
    path = snli_ve_file(root, split)
    samples, skipped = parse_snli_ve(path, root=root, on_error=on_error)
    return Dataset(name="snli-ve", root=root, split=split, samples=samples, skipped=skipped, sources=[path])


def parse_snli_ve(path: Path, *, root: Path | None = None, on_error: str = "fail",
                  ) -> tuple[list[Sample], list[Skipped]]:
    """Parse one ``snli_ve_*.jsonl`` file. With ``root`` samples get image paths; without (scoring) they don't.
    Problems name ``file:line``."""
    path = Path(path)
    img_dir = image_dir(root) if root is not None else None
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for lineno, rec in iter_jsonl(path, "SNLI-VE file"):
        where = f"{path}:{lineno}"
        sid = rec.get("pairID") if isinstance(rec, dict) and isinstance(rec.get("pairID"), str) else None
        try:
            if isinstance(rec, ValueError):
                raise rec
            sample = _parse_record(rec, root, img_dir)
            if sample.id in seen:
                raise ValueError(f"duplicate pairID {sample.id!r}")
        except ValueError as e:
            if on_error == "skip":
                skipped.append(Skipped(where, sid, str(e)))
                continue
            raise InputError(f"{where}: {e}") from None
        seen.add(sample.id)
        samples.append(sample)
    if not samples and not skipped:
        raise InputError(f"{path}: no records")
    return samples, skipped


def _parse_record(rec: Any, root: Path | None, img_dir: str | None) -> Sample:
    if not isinstance(rec, dict):
        raise ValueError("expected a JSON object")
    pair_id = check_text(require(rec, "pairID"), "pairID")
    hypothesis = check_text(require(rec, "sentence2"), "sentence2")
    label = require(rec, "gold_label")
    if label not in LABELS:
        raise ValueError(f"gold_label {label!r} is not one of {', '.join(LABELS)}")
    fid = require(rec, "Flickr30K_ID")
    if isinstance(fid, int) and not isinstance(fid, bool):
        fid = str(fid)
    if not isinstance(fid, str) or not fid.strip():
        raise ValueError("field 'Flickr30K_ID' must be a non-empty string")
    if "/" in fid or "\\" in fid or fid in (".", ".."):
        raise ValueError(f"Flickr30K_ID {fid!r} must be an image id, not a path")
    image = safe_relpath(f"{img_dir}/{fid}.jpg", root) if root is not None else None
    meta: dict[str, Any] = {"gold_label": label, "pairID": pair_id, "Flickr30K_ID": fid}
    if isinstance(rec.get("captionID"), str):
        meta["captionID"] = rec["captionID"]
    return Sample(id=pair_id, image=image, texts=(hypothesis,), meta=meta)
