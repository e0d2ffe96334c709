"""Write a feature store shard by shard, resumably, and publish it atomically.

A store is built in a *partial* directory. Each shard (a row range covering one shard file of every array) is
written whole and then marked done with a small marker file; a run that is killed and started again reopens the
partial directory, keeps the shards marked done and recomputes only the others. Every chunk is written, fill values
included (zarr would skip an all-fill chunk), so a published store has every chunk file its metadata implies. When
every shard is done, the manifest, with the record of the chunk files (count and bytes per array), goes into the
group attributes, metadata is consolidated, and the directory is renamed to its final name in one atomic step.
Nothing without a manifest is ever served.

A write that fails (a full disk: ``ENOSPC``) leaves the partial directory as a kill would: the shards marked done are
kept and the next run resumes from them. Tests fill the disk at a chosen write: ``MAD_TEST_FAIL=store-write@N`` (see
:mod:`mad_pipeline.testhooks`) makes the write numbered N (from 0, counted over this process while the variable keeps
its value) fail with ``ENOSPC``, naming the file it was about to write.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import zarr
from zarr.errors import UnstableSpecificationWarning

from .. import testhooks
from .integrity import chunk_record
from .layout import FORMAT_VERSION, ArraySpec, codecs_for, filters_for, rows_per_chunk, rows_per_shard, stored_arrays
from .location import is_complete
from .storage import encode_tokens

PROGRESS_DIR = "_mad_progress"
LAYOUT_FILE = "_mad_progress/layout.json"
WRITE_POINT = "store-write"  # MAD_TEST_FAIL=store-write@N: the N-th write fails as on a full disk (tests only)
_writes = {"spec": None, "count": 0}
_writes_lock = threading.Lock()


def _before_write(path: Path) -> None:
    """Test hook point before every write of a store (``MAD_TEST_FAIL=store-write@N``); inert otherwise."""
    spec = os.environ.get(testhooks.FAIL_ENV, "")
    if not spec.startswith(WRITE_POINT + "@"):
        _writes["spec"] = None  # the count starts again when the variable is set again
        return
    with _writes_lock:
        if _writes["spec"] != spec:
            _writes.update(spec=spec, count=0)
        n = _writes["count"]
        _writes["count"] = n + 1
    try:
        testhooks.fail(WRITE_POINT, n)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None


class StoreWriter:
    def __init__(self, path: Path, kind: str, n_rows: int, specs: list[ArraySpec], key: str,
                 shard_rows: int | None = None):
        self.path = Path(path)
        self.kind = kind
        self.n_rows = n_rows
        self.specs = {s.name: s for s in specs}  # what write_shard takes
        self.stored = {s.name: s for s in stored_arrays(specs)}  # what is on disk (a non-default token storage)
        self.key = key
        chunk_rows = rows_per_chunk(list(self.stored.values()))
        if shard_rows:  # an explicit shard size wins; chunks shrink to fit inside it
            chunk_rows = min(chunk_rows, shard_rows)
            shard_rows = (shard_rows // chunk_rows) * chunk_rows
        else:
            shard_rows = rows_per_shard(list(self.stored.values()), n_rows, chunk_rows)
        layout = {"format_version": FORMAT_VERSION, "kind": kind, "key": key, "n_rows": n_rows,
                  "chunk_rows": chunk_rows, "shard_rows": shard_rows,
                  "arrays": {s.name: [list(s.row_shape), s.dtype] for s in self.stored.values()}}
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
        self._arrays: dict = {}

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
        _before_write(self.path / "zarr.json")
        group = zarr.open_group(str(self.path), mode="w")
        n = max(self.n_rows, 0)
        for s in self.stored.values():
            _before_write(self.path / s.name / "zarr.json")
            chunk_rows = 1 if s.row_chunks else layout["chunk_rows"] if s.big or s.follows_big else layout["shard_rows"]
            shards = (layout["shard_rows"], *s.row_shape) if s.big or s.row_chunks or s.follows_big else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UnstableSpecificationWarning)  # fixed-width hash strings
                warnings.filterwarnings("ignore", message="Numcodecs codecs are not in")  # bitround, on purpose
                group.create_array(
                    s.name, shape=(n, *s.row_shape), chunks=(chunk_rows, *s.row_shape), shards=shards,
                    dtype=str if s.dtype == "str" else s.dtype, compressors=codecs_for(s), fill_value=s.fill,
                    dimension_names=list(s.dims), **filters_for(s),
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
        stored: dict[str, np.ndarray] = {}
        for name, values in data.items():
            values = np.asarray(values)
            if values.shape[0] != hi - lo:
                raise ValueError(f"shard {i}: {name} has {values.shape[0]} rows, expected {hi - lo}")
            st = self.specs[name].storage if name in self.specs else None
            stored.update(encode_tokens(values, st) if st is not None else {name: values})
        for name, values in stored.items():
            _before_write(self.path / name)
            self._array(name)[lo:hi] = values
        _atomic_write(self._marker(i), "")

    def _array(self, name: str):
        """The array opened once for writing (shards are written from several threads; each writes its own files).

        Every chunk is written, even one that holds only fill values: a missing file is then corruption."""
        arr = self._arrays.get(name)
        if arr is None:
            arr = self._arrays[name] = self.group[name].with_config({"write_empty_chunks": True})
        return arr

    def record_errors(self, errors: list[dict]) -> None:
        """Append per-row failures (skip mode) so they survive a kill and reach the manifest."""
        if errors:
            self._append("errors.jsonl", errors)

    def recorded_errors(self) -> list[dict]:
        out: dict[str, dict] = {}
        for e in self._records("errors.jsonl"):
            out[json.dumps(e, sort_keys=True)] = e
        return list(out.values())

    def record_reuse(self, shard: int, donors: dict[str, dict]) -> None:
        """Which donor stores shard ``shard``'s rows were copied from (``{key: {"source", "rows"}}``); recorded
        before the shard is written, so every shard marked done has its record (a later record of a shard wins)."""
        self._append("reuse.jsonl", [{"shard": shard, "donors": donors}])

    def recorded_reuse(self) -> dict[str, dict]:
        """Rows copied from each donor store over the whole store: ``{key: {"source", "rows"}}``."""
        last: dict[int, dict] = {}
        for r in self._records("reuse.jsonl"):
            last[int(r["shard"])] = r["donors"]
        total: dict[str, dict] = {}
        for shard in sorted(last):
            for key, d in last[shard].items():
                t = total.setdefault(key, {"source": d["source"], "rows": 0})
                t["rows"] += int(d["rows"])
        return total

    def _append(self, name: str, records: list[dict]) -> None:
        path = self.path / PROGRESS_DIR / name
        _before_write(path)
        text = "".join(json.dumps(r) + "\n" for r in records).encode()
        with open(path, "ab+") as f:
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a line cut by a kill or a full disk: start on a line of our own
                    text = b"\n" + text
            f.write(text)

    def _records(self, name: str) -> list[dict]:
        try:
            lines = (self.path / PROGRESS_DIR / name).read_text().splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill or a full disk
                continue
        return out

    # ----------------------------------------------------------------- publish
    def finalize(self, manifest: dict, final_path: Path) -> Path:
        """Write the manifest (last), consolidate metadata, and atomically rename to ``final_path``."""
        todo = set(range(self.n_shards)) - self.done_shards()
        if todo:
            raise RuntimeError(f"cannot publish {self.path}: shards {sorted(todo)[:5]} not written")
        _before_write(self.path / "zarr.json")
        self.group.attrs["mad"] = {**manifest, "chunks": chunk_record(self.path)}
        _before_write(self.path / "zarr.json")
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
    try:
        _before_write(path)
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no stray temporary file
        raise
