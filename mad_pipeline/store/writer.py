"""Write a feature store shard by shard, resumably, and publish it atomically.

A store is built in a *partial* directory. Each shard (a row range covering one shard file of every array) is
written whole and then marked done with a small marker file; a run that is killed and started again reopens the
partial directory, keeps the shards marked done and recomputes only the others. Every chunk is written, fill values
included (zarr would skip an all-fill chunk), so a published store has every chunk file its metadata implies. When
every shard is done, the manifest, with the record of the chunk files (count and bytes per array), goes into the
group attributes, metadata is consolidated, and the directory is renamed to its final name in one atomic step.
Nothing without a manifest is ever served.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import zarr
from zarr.errors import UnstableSpecificationWarning

from .integrity import chunk_record
from .layout import FORMAT_VERSION, ArraySpec, codecs_for, rows_per_chunk, rows_per_shard
from .location import is_complete

PROGRESS_DIR = "_mad_progress"
LAYOUT_FILE = "_mad_progress/layout.json"


class StoreWriter:
    def __init__(self, path: Path, kind: str, n_rows: int, specs: list[ArraySpec], key: str,
                 shard_rows: int | None = None):
        self.path = Path(path)
        self.kind = kind
        self.n_rows = n_rows
        self.specs = {s.name: s for s in specs}
        self.key = key
        chunk_rows = rows_per_chunk(specs)
        if shard_rows:  # an explicit shard size wins; chunks shrink to fit inside it
            chunk_rows = min(chunk_rows, shard_rows)
            shard_rows = (shard_rows // chunk_rows) * chunk_rows
        else:
            shard_rows = rows_per_shard(specs, n_rows, chunk_rows)
        layout = {"format_version": FORMAT_VERSION, "kind": kind, "key": key, "n_rows": n_rows,
                  "chunk_rows": chunk_rows, "shard_rows": shard_rows,
                  "arrays": {s.name: [list(s.row_shape), s.dtype] for s in specs}}
        existing = self._read_layout()
        if existing is not None and existing["key"] == key and existing["arrays"] == layout["arrays"] \
                and existing["n_rows"] == n_rows:
            layout = existing  # resume with the layout the interrupted run chose
            self.resumed = True
        else:
            if self.path.exists():
                shutil.rmtree(self.path)
            self._create(layout)
            self.resumed = False
        self.chunk_rows = layout["chunk_rows"]
        self.shard_rows = layout["shard_rows"]
        self.group = zarr.open_group(str(self.path), mode="r+")

    # ----------------------------------------------------------------- layout
    @property
    def n_shards(self) -> int:
        return max(1, -(-self.n_rows // self.shard_rows))

    def shard_range(self, i: int) -> tuple[int, int]:
        return i * self.shard_rows, min(self.n_rows, (i + 1) * self.shard_rows)

    def _read_layout(self):
        try:
            return json.loads((self.path / LAYOUT_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def _create(self, layout: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(str(self.path), mode="w")
        n = max(self.n_rows, 0)
        for s in self.specs.values():
            chunk_rows = layout["chunk_rows"] if s.big else layout["shard_rows"]
            shards = (layout["shard_rows"], *s.row_shape) if s.big else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UnstableSpecificationWarning)  # fixed-width hash strings
                group.create_array(
                    s.name, shape=(n, *s.row_shape), chunks=(chunk_rows, *s.row_shape), shards=shards,
                    dtype=str if s.dtype == "str" else s.dtype, compressors=codecs_for(s), fill_value=s.fill,
                    dimension_names=list(s.dims),
                )
        (self.path / PROGRESS_DIR).mkdir(exist_ok=True)
        _atomic_write(self.path / LAYOUT_FILE, json.dumps(layout))

    # ----------------------------------------------------------------- shards
    def _marker(self, i: int) -> Path:
        return self.path / PROGRESS_DIR / f"shard-{i:06d}.done"

    def done_shards(self) -> set[int]:
        return {i for i in range(self.n_shards) if self._marker(i).exists()}

    def write_shard(self, i: int, data: dict[str, np.ndarray]) -> None:
        lo, hi = self.shard_range(i)
        missing = set(self.specs) - set(data)
        if missing:
            raise ValueError(f"shard {i}: missing arrays {sorted(missing)}")
        for name, values in data.items():
            values = np.asarray(values)
            if values.shape[0] != hi - lo:
                raise ValueError(f"shard {i}: {name} has {values.shape[0]} rows, expected {hi - lo}")
            # every chunk is written, even one that holds only fill values: a missing file is then corruption
            self.group[name].with_config({"write_empty_chunks": True})[lo:hi] = values
        _atomic_write(self._marker(i), "")

    def record_errors(self, errors: list[dict]) -> None:
        """Append per-row failures (skip mode) so they survive a kill and reach the manifest."""
        if errors:
            with open(self.path / PROGRESS_DIR / "errors.jsonl", "a") as f:
                for e in errors:
                    f.write(json.dumps(e) + "\n")

    def recorded_errors(self) -> list[dict]:
        try:
            lines = (self.path / PROGRESS_DIR / "errors.jsonl").read_text().splitlines()
        except OSError:
            return []
        out: dict[str, dict] = {}
        for line in lines:
            try:
                e = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            out[json.dumps(e, sort_keys=True)] = e
        return list(out.values())

    # ----------------------------------------------------------------- publish
    def finalize(self, manifest: dict, final_path: Path) -> Path:
        """Write the manifest (last), consolidate metadata, and atomically rename to ``final_path``."""
        todo = set(range(self.n_shards)) - self.done_shards()
        if todo:
            raise RuntimeError(f"cannot publish {self.path}: shards {sorted(todo)[:5]} not written")
        self.group.attrs["mad"] = {**manifest, "chunks": chunk_record(self.path)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "consolidated metadata is not part of the v3 spec"
            zarr.consolidate_metadata(str(self.path))
        shutil.rmtree(self.path / PROGRESS_DIR, ignore_errors=True)
        final_path = Path(final_path)
        final_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(self.path, final_path)
        except OSError:
            if is_complete(final_path, self.key):  # someone else published the same key first: theirs wins
                shutil.rmtree(self.path, ignore_errors=True)
            else:
                raise
        return final_path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
