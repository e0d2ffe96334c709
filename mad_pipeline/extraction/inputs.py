"""Content hashes of a dataset's inputs: images by the sha256 of their bytes, texts by the sha256 of their UTF-8.

The bytes are the same whether an image is a file, a tar member or a parquet cell, so the same images give the same
image store key and rows whichever reader listed them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..data.base import Dataset
from ..hashing import content_key, sha256_text


@dataclass
class DatasetInputs:
    image_hash: dict[str, str]  # Sample.image -> sha256 (readable images only)
    missing: dict[str, str] = field(default_factory=dict)  # Sample.image -> reason
    text_hash: dict[str, str] = field(default_factory=dict)

    def unique_images(self) -> tuple[list[str], list[str]]:
        """(sorted hashes, one Sample.image per hash): the rows of the image store."""
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


def hash_inputs(ds: Dataset, progress=None, threads: int = 4) -> DatasetInputs:
    """Hash every distinct image (through the dataset's image source: files, tar members, parquet cells) and
    text. An image that cannot be read goes to ``missing`` with the reason."""
    rels = ds.image_paths()
    source = ds.image_source()
    task = progress.add_task("hashing images", total=len(rels), unit="img") if progress else None
    out = DatasetInputs(image_hash={})
    with ThreadPoolExecutor(threads) as pool:
        for rel, (h, why) in zip(rels, pool.map(source.sha256, rels), strict=True):
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
