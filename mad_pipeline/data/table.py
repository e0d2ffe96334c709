"""Tables of image-caption pairs: ``--dataset parquet`` / ``--dataset csv`` with ``--manifest FILE``.

One row is one sample. Columns are found by name, case-insensitively, the first present of:

* image: ``image``, ``image_path``, ``img``, ``jpg``, ``png``, ``file_name``, ``filepath``, ``path`` -- a path
  relative to ``--data-root`` (CSV and parquet string columns), or in parquet the image's bytes (a binary column,
  or the datasets library's ``{"bytes", "path"}`` struct);
* caption: ``text``, ``caption``, ``captions``, ``texts``, ``txt`` -- a string, or in parquet a list of strings
  (several captions of one image: one sample, see docs/inputs.md);
* id: ``id``, ``key``, ``__key__``, ``sample_id`` -- else the row's number (0 for the first data row).

``columns={"image": ..., "text": ..., "id": ...}`` names them explicitly (Python API). Every problem names the
place: ``file.csv:LINE`` or ``file.parquet:row N``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError
from .base import Dataset, Sample, Skipped
from .jsonio import check_texts
from .paths import safe_relpath
from .sources import ParquetCells

CANDIDATES = {
    "image": ("image", "image_path", "img", "jpg", "png", "file_name", "filepath", "path"),
    "text": ("text", "caption", "captions", "texts", "txt"),
    "id": ("id", "key", "__key__", "sample_id"),
}


def _pick(names: list[str], columns: dict[str, str] | None, what: str, source: Path) -> str | None:
    if columns and columns.get(what):
        if columns[what] not in names:
            raise InputError(f"{source}: no column {columns[what]!r} (columns: {', '.join(names)})")
        return columns[what]
    lower = {n.lower(): n for n in names}
    return next((lower[c] for c in CANDIDATES[what] if c in lower), None)


def _columns(names: list[str], columns: dict[str, str] | None, source: Path) -> dict[str, str | None]:
    got = {what: _pick(names, columns, what, source) for what in CANDIDATES}
    if got["image"] is None and got["text"] is None:
        raise InputError(f"{source}: no image column ({', '.join(CANDIDATES['image'])}) and no caption column "
                         f"({', '.join(CANDIDATES['text'])}); columns: {', '.join(names)}")
    return got


def _sample(n: int, rid: Any, image: str | None, text: Any, text_col: str | None, seen: set[str]) -> Sample:
    if rid is None:
        rid = n
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise ValueError("the id must be a string or an integer")
    sid = str(rid)
    if sid in seen:
        raise ValueError(f"duplicate id {sid!r}")
    texts = check_texts(text, text_col) if text is not None and text != "" else []
    if image is None and not texts:
        raise ValueError("row has neither an image nor a caption")
    return Sample(id=sid, image=image, texts=tuple(texts))


def _collect(rows: Iterator[tuple[str, Any, Any, Any]], text_col: str | None, root: Path, on_error: str,
             bytes_refs: bool) -> tuple[list[Sample], list[Skipped]]:
    """rows: (where, id, image value, text value). String images are paths under ``root``; with ``bytes_refs``
    the image value is already the row's location in the parquet file."""
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for n, (where, rid, image, text) in enumerate(rows):
        try:
            if image is not None and not bytes_refs:
                if not isinstance(image, str):
                    raise ValueError("the image must be a path string")
                image = safe_relpath(image, root) if image.strip() else None
            sample = _sample(n, rid, image, text, text_col, seen)
        except ValueError as e:
            if on_error != "skip":
                raise InputError(f"{where}: {e}") from None
            skipped.append(Skipped(where, None if rid is None else str(rid), str(e)))
            continue
        seen.add(sample.id)
        samples.append(sample)
    return samples, skipped


def read_csv_manifest(manifest: Path, root: Path, on_error: str = "fail",
                      columns: dict[str, str] | None = None) -> Dataset:
    manifest = Path(manifest)
    try:
        text = manifest.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{manifest}: not valid UTF-8 (byte {e.start})") from None
    reader = csv.DictReader(text.splitlines(keepends=True))
    try:
        names = list(reader.fieldnames or [])
    except csv.Error as e:
        raise InputError(f"{manifest}:1: malformed CSV header ({e})") from None
    if not names:
        raise InputError(f"{manifest}: empty file (expected a CSV header line)")
    col = _columns(names, columns, manifest)

    def rows():
        try:
            for rec in reader:
                yield (f"{manifest}:{reader.line_num}", rec.get(col["id"]) if col["id"] else None,
                       rec.get(col["image"]) if col["image"] else None, rec.get(col["text"]) if col["text"] else None)
        except csv.Error as e:
            raise InputError(f"{manifest}:{reader.line_num}: malformed CSV ({e})") from None

    samples, skipped = _collect(rows(), col["text"], root, on_error, bytes_refs=False)
    if not samples and not skipped:
        raise InputError(f"{manifest}: no rows")
    return Dataset(name="csv", root=root, split=None, samples=samples, skipped=skipped, sources=[manifest])


def read_parquet_manifest(manifest: Path, root: Path, on_error: str = "fail",
                          columns: dict[str, str] | None = None) -> Dataset:
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = Path(manifest)
    try:
        pf = pq.ParquetFile(manifest)
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"{manifest}: not a readable parquet file ({e})") from None
    schema = pf.schema_arrow
    col = _columns(list(schema.names), columns, manifest)
    image_type = schema.field(col["image"]).type if col["image"] else None
    as_bytes = image_type is not None and not (pa.types.is_string(image_type) or pa.types.is_large_string(image_type))
    if as_bytes and not (pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type)
                         or (pa.types.is_struct(image_type) and image_type.get_field_index("bytes") >= 0)):
        raise InputError(f"{manifest}: column {col['image']!r} is {image_type}: expected a path string, image bytes, "
                         f"or a {{bytes, path}} struct")
    index: dict[str, tuple[int, int]] = {}

    def rows():
        wanted = [c for c in (col["id"], col["text"]) if c] + ([col["image"]] if col["image"] and not as_bytes else [])
        n = 0
        for g in range(pf.num_row_groups):
            part = pf.read_row_group(g, columns=wanted).to_pylist() if wanted else \
                [{}] * pf.metadata.row_group(g).num_rows
            for r, rec in enumerate(part):
                where = f"{manifest}:row {n}"
                if as_bytes:
                    index[where] = (g, r)
                    image = where
                else:
                    image = rec.get(col["image"]) if col["image"] else None
                yield where, rec.get(col["id"]) if col["id"] else None, image, rec.get(col["text"]) if col["text"] \
                    else None
                n += 1

    try:
        samples, skipped = _collect(rows(), col["text"], root, on_error, bytes_refs=as_bytes)
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"{manifest}: cannot read the parquet file ({e})") from None
    if not samples and not skipped:
        raise InputError(f"{manifest}: no rows")
    images = ParquetCells(str(manifest), col["image"], index) if as_bytes else None
    return Dataset(name="parquet", root=root, split=None, samples=samples, skipped=skipped, sources=[manifest],
                   images=images)


__all__ = ["CANDIDATES", "read_csv_manifest", "read_parquet_manifest"]
