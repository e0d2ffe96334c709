"""Content hashes of a dataset's inputs: images by the sha256 of their bytes, texts by the sha256 of their UTF-8."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..data.base import Dataset
from ..hashing import content_key, sha256_file, sha256_text


@dataclass
class DatasetInputs:
    image_hash: dict[str, str]  # relpath -> sha256 (readable files only)
    missing: dict[str, str] = field(default_factory=dict)  # relpath -> reason
    text_hash: dict[str, str] = field(default_factory=dict)

    def unique_images(self) -> tuple[list[str], list[str]]:
        """(sorted hashes, one relpath per hash): the rows of the image store."""
        first: dict[str, str] = {}
        for rel, h in self.image_hash.items():
            first.setdefault(h, rel)
        hashes = sorted(first)
        return hashes, [first[h] for h in hashes]

    def unique_texts(self) -> tuple[list[str], list[str]]:
        """(sorted hashes, texts): the rows of the text store."""
        by_hash = {h: t for t, h in self.text_hash.items()}
        hashes = sorted(by_hash)
        return hashes, [by_hash[h] for h in hashes]


def _hash_one(path: Path) -> tuple[str | None, str]:
    try:
        if not path.is_file():
            return None, "file not found" if not path.exists() else "not a regular file"
        return sha256_file(path), ""
    except OSError as e:
        return None, f"cannot read file ({e.strerror})"


def hash_inputs(ds: Dataset, progress=None, threads: int = 4) -> DatasetInputs:
    rels = ds.image_paths()
    task = progress.add_task("hashing images", total=len(rels), unit="img") if progress else None
    out = DatasetInputs(image_hash={})
    with ThreadPoolExecutor(threads) as pool:
        for rel, (h, why) in zip(rels, pool.map(_hash_one, (ds.root / r for r in rels)), strict=True):
            if h is None:
                out.missing[rel] = why
            else:
                out.image_hash[rel] = h
            if progress:
                progress.update(task, advance=1)
    out.text_hash = {t: sha256_text(t) for t in ds.texts()}
    return out


def samples_digest(ds: Dataset, inputs: DatasetInputs) -> str:
    """What the dataset index depends on: each sample's id, image content hash and text hashes, in order."""
    rows = [[s.id, inputs.image_hash.get(s.image, "") if s.image else "",
             [inputs.text_hash[t] for t in s.texts], s.meta] for s in ds.samples]
    return content_key({"samples": rows, "skipped": [k.as_dict() for k in ds.skipped]})
