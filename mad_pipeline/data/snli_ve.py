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

from pathlib import Path
from typing import Any

from .base import Dataset, Sample, Skipped
from .jsonio import check_text, peek_field, read_jsonl, require
from .paths import safe_relpath, split_file
from .registry import register_reader

SPLITS = ("train", "dev", "test")
LABELS = ("entailment", "neutral", "contradiction")
FILE = "snli_ve_{split}.jsonl"
IMAGE_DIRS = ("Flickr30K/flickr30k_images", "flickr30k_images")
_FILE_DIRS = ("", "annotations")


def snli_ve_file(root: Path, split: str) -> Path:
    """The split's file; a split not in :data:`SPLITS` (the shapes world's ``shift``) only when its file exists."""
    return split_file(root, split, pattern=FILE, splits=SPLITS, dirs=_FILE_DIRS, dataset="SNLI-VE")


def image_dir(root: Path) -> str:
    """The Flickr30k image folder under ``root`` (the first layout that exists; the generator's by default)."""
    for d in IMAGE_DIRS:
        if (Path(root) / d).is_dir():
            return d
    return IMAGE_DIRS[0]


@register_reader("snli-ve")
def read_snli_ve(root: Path, split: str, on_error: str = "fail") -> Dataset:
    root = Path(root)
    path = snli_ve_file(root, split)
    samples, skipped = parse_snli_ve(path, root=root, on_error=on_error)
    return Dataset(name="snli-ve", root=root, split=split, samples=samples, skipped=skipped, sources=[path])


def parse_snli_ve(path: Path, *, root: Path | None = None, on_error: str = "fail",
                  ) -> tuple[list[Sample], list[Skipped]]:
    """Parse one ``snli_ve_*.jsonl`` file. With ``root`` samples get image paths; without (scoring) they don't.
    Problems name ``file:line``."""
    img_dir = image_dir(root) if root is not None else None
    return read_jsonl(path, lambda rec, seen: _parse_record(rec, root, img_dir, seen), on_error=on_error,
                      what="SNLI-VE file", sample_id=lambda line: peek_field(line, "pairID"))


def _parse_record(rec: Any, root: Path | None, img_dir: str | None, seen: set[str]) -> Sample:
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
    if pair_id in seen:
        raise ValueError(f"duplicate pairID {pair_id!r}")
    return Sample(id=pair_id, image=image, texts=(hypothesis,), meta=meta)
