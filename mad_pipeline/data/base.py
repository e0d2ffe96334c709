"""The dataset interface every reader yields (JSONL manifest, VQA v2, SNLI-VE, VCR) and stage 1 consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sources import FileImages, ImageSource


@dataclass(frozen=True)
class Sample:
    """One dataset record.

    ``image`` is a reference the dataset's image source resolves (:mod:`mad_pipeline.data.sources`): a POSIX path
    relative to the dataset's root (already checked not to escape it), or for images held inside a container the
    location ``shard.tar:member`` / ``file.parquet:row N``. ``texts`` are the texts the text teacher encodes for
    this sample (a caption or several; a question; a hypothesis; VCR's question and choices rendered as text).
    ``meta`` carries task fields (labels, answers, question type) that stage 1 ignores.
    """

    id: str
    image: str | None
    texts: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Skipped:
    """A record that could not be used, kept so ``--on-error skip`` can report and store it."""

    source: str  # "file:line" or "file:record"
    sample_id: str | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "sample_id": self.sample_id, "reason": self.reason}


@dataclass
class Dataset:
    name: str  # reader name (``--dataset``): "jsonl" or a registered reader's
    root: Path  # data root; every Sample.image is relative to it
    split: str | None
    samples: list[Sample]
    skipped: list[Skipped] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)  # the annotation files (or tar shards) read
    images: ImageSource | None = None  # where Sample.image is read from; None: files under ``root``

    def image_source(self) -> ImageSource:
        return self.images if self.images is not None else FileImages(self.root)

    def image_paths(self) -> list[str]:
        """Distinct image paths in first-seen order."""
        return list(dict.fromkeys(s.image for s in self.samples if s.image is not None))

    def texts(self) -> list[str]:
        """Distinct texts in first-seen order."""
        return list(dict.fromkeys(t for s in self.samples for t in s.texts))
