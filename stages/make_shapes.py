"""Generate a dataset: ``mad datasets make shapes`` writes the shapes world in the official VQA v2, SNLI-VE and VCR
formats (see :mod:`mad_pipeline.shapes.formats` for the layout)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mad_pipeline.errors import InputError
from mad_pipeline.progress import make_progress
from mad_pipeline.shapes.formats import split_sizes, write_dataset

KINDS = ("shapes",)


@dataclass(frozen=True)
class MakeShapesConfig:
    out: Path
    kind: str = "shapes"
    size: int = 2000  # training images; val, test and shift get size // 4 each
    seed: int = 0
    progress: bool = True


@dataclass
class MakeShapesResult:
    out: Path
    manifest: dict[str, Any]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "seconds": round(self.seconds, 2), **self.manifest}


def run(cfg: MakeShapesConfig) -> MakeShapesResult:
    if cfg.kind not in KINDS:
        raise InputError(f"unknown dataset kind {cfg.kind!r}; known: {', '.join(KINDS)}")
    t0 = time.time()
    total = sum(split_sizes(max(1, cfg.size)).values())
    with make_progress(cfg.progress) as progress:
        task = progress.add_task("shapes world", total=total, unit="img") if progress else None

        def tick(k: int) -> None:
            if task is not None:
                progress.update(task, advance=k)

        manifest = write_dataset(Path(cfg.out), cfg.size, cfg.seed, tick)
    return MakeShapesResult(Path(cfg.out), manifest, time.time() - t0)
