"""Where a dataset's image bytes live: files under the data root, members of tar shards, cells of a parquet file.

A :class:`~mad_pipeline.data.base.Sample` names its image by a reference (``Sample.image``) that the dataset's
image source resolves. Every source answers three questions:

* ``where(ref)``: the location a user reads in messages (``DIR/img/0001.jpg``, ``shards/00003.tar:000123.jpg``,
  ``data.parquet:row 17``); extraction hands these locations to its decode workers: a file's path, or an
  :class:`ImageLocation` (a ``str`` that also reads its own bytes);
* ``sha256(ref)``: the content hash of the image's bytes (or why they cannot be read), which is what identifies an
  image in every store, whatever it was read from;
* ``load(location, max_pixels)``: the decoded RGB image, or :class:`ImageDecodeError` with a one-line reason.

Locations are picklable and open their files lazily, once per process (a DataLoader worker opens its own handles; a
tar member is one ``pread`` at the offset recorded when the shard was indexed, so random access is cheap).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

from PIL import Image

from ..hashing import sha256_file
from .images import MAX_PIXELS, ImageDecodeError, decode_image, load_image


class ImageSource(Protocol):
    def where(self, ref: str) -> str: ...

    def sha256(self, ref: str) -> tuple[str | None, str]: ...

    def load(self, location: str, max_pixels: int = MAX_PIXELS) -> Image.Image: ...


class FileImages:
    """Image files under a data root; ``ref`` is a POSIX path relative to it."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def where(self, ref: str) -> str:
        return str(self.root / ref)

    def sha256(self, ref: str) -> tuple[str | None, str]:
        path = self.root / ref
        try:
            if not path.is_file():
                return None, "file not found" if not path.exists() else "not a regular file"
            return sha256_file(path), ""
        except OSError as e:
            return None, f"cannot read file ({e.strerror})"

    def load(self, location: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
        return load_image(location, max_pixels)


class ImageLocation(str):
    """A location string (what messages and manifests show) that also knows how to read its image's bytes, so a
    list of locations is all a decode worker (a DataLoader process, a dask task) needs. It pickles small: the
    string and the few numbers that find the bytes, never the dataset's whole index."""

    what = "image"

    def read(self) -> bytes:
        raise NotImplementedError

    def load(self, max_pixels: int = MAX_PIXELS) -> Image.Image:
        try:
            data = self.read()
        except OSError as e:
            raise ImageDecodeError(f"cannot read {self.what} ({e.strerror or e})") from None
        return decode_image(data, max_pixels)

    def sha256(self) -> tuple[str | None, str]:
        try:
            return hashlib.sha256(self.read()).hexdigest(), ""
        except OSError as e:
            return None, f"cannot read {self.what} ({e.strerror or e})"


class _OpenFiles:
    """Read-only file descriptors of this process, opened on first use, at most ``limit`` open at once."""

    def __init__(self, limit: int = 64):
        self.limit = limit
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def pread(self, path: str, offset: int, size: int) -> bytes:
        with self._lock:
            if self._pid != os.getpid():  # a forked worker opens its own descriptors
                self._fds, self._pid = OrderedDict(), os.getpid()
            fd = self._fds.get(path)
            if fd is None:
                fd = os.open(path, os.O_RDONLY)
                self._fds[path] = fd
                while len(self._fds) > self.limit:
                    os.close(self._fds.popitem(last=False)[1])
            else:
                self._fds.move_to_end(path)
        data = os.pread(fd, size, offset)  # positionless: threads and processes never share a file offset
        if len(data) != size:
            raise OSError(0, f"file ends {size - len(data)} bytes early")
        return data


_FILES = _OpenFiles()


class TarMember(ImageLocation):
    """``shard:member``, read with one pread of ``size`` bytes at ``offset`` (the member's data) in ``shard``."""

    what = "tar member"

    def __new__(cls, location: str, shard: str, offset: int, size: int):
        obj = super().__new__(cls, location)
        obj.shard, obj.offset, obj.size = shard, offset, size
        return obj

    def __reduce__(self):
        return TarMember, (str(self), self.shard, self.offset, self.size)

    def read(self) -> bytes:
        return _FILES.pread(self.shard, self.offset, self.size)


class TarMembers:
    """Images that are members of tar shards. ``ref`` is the location ``shard:member`` (the shard as the user
    wrote it); the index maps it to (shard number, data offset, size), read from the tar headers once."""

    def __init__(self, shards: list[str], index: dict[str, tuple[int, int, int]]):
        self.shards = [os.path.abspath(s) for s in shards]  # opened from any working directory (dask workers)
        self.index = index

    def where(self, ref: str) -> TarMember:
        shard, offset, size = self.index[ref]
        return TarMember(ref, self.shards[shard], offset, size)

    def sha256(self, ref: str) -> tuple[str | None, str]:
        return self.where(ref).sha256()

    def load(self, location: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
        return self.where(location).load(max_pixels)


class _RowGroups:
    """The image column of parquet row groups, read whole and kept (most recent first) up to ``limit`` bytes in
    this process."""

    def __init__(self, limit: int = 512 << 20):
        self.limit = limit
        self._reset()

    def _reset(self) -> None:
        self._groups: OrderedDict[tuple, tuple[list, int]] = OrderedDict()
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def get(self, path: str, column: str, group: int) -> list:
        import pyarrow.parquet as pq

        if self._pid != os.getpid():
            self._reset()
        key = (path, column, group)
        with self._lock:
            if key in self._groups:
                self._groups.move_to_end(key)
                return self._groups[key][0]
            col = pq.ParquetFile(path).read_row_group(group, columns=[column]).column(0)
            values = [image_bytes(v) for v in col.to_pylist()]
            self._groups[key] = (values, sum(len(v) for v in values if v))
            while len(self._groups) > 1 and sum(n for _, n in self._groups.values()) > self.limit:
                self._groups.popitem(last=False)
            return values


_GROUPS = _RowGroups()


class ParquetCell(ImageLocation):
    """``file.parquet:row N``: the image bytes of one cell, read with its row group (kept for the next cells)."""

    what = "parquet file"

    def __new__(cls, location: str, path: str, column: str, group: int, row: int):
        obj = super().__new__(cls, location)
        obj.path, obj.column, obj.group, obj.row = path, column, group, row
        return obj

    def __reduce__(self):
        return ParquetCell, (str(self), self.path, self.column, self.group, self.row)

    def read(self) -> bytes:
        try:
            return _GROUPS.get(self.path, self.column, self.group)[self.row] or b""
        except Exception as e:  # pyarrow's own errors: a file changed or damaged since it was indexed
            if isinstance(e, OSError):
                raise
            raise OSError(0, str(e)) from None


class ParquetCells:
    """Images stored as bytes in a parquet column. ``ref`` is ``file:row N``; the index maps it to (row group, row
    in the group). Row groups are read whole (the image column only) and the last ones kept up to 512 MiB per
    process: hashing reads in file order, so each group once; extraction reads in content-hash order and reads a
    group again when it has left the cache, so small row groups (the datasets library writes 100 images per group)
    keep that cheap."""

    def __init__(self, path: str, column: str, index: dict[str, tuple[int, int]]):
        self.path = os.path.abspath(path)
        self.column = column
        self.index = index

    def where(self, ref: str) -> ParquetCell:
        group, row = self.index[ref]
        return ParquetCell(ref, self.path, self.column, group, row)

    def sha256(self, ref: str) -> tuple[str | None, str]:
        return self.where(ref).sha256()

    def load(self, location: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
        return self.where(location).load(max_pixels)


def image_bytes(value) -> bytes | None:
    """The bytes of a parquet image cell: plain binary, or the datasets library's ``{"bytes": ..., "path": ...}``."""
    if isinstance(value, dict):
        value = value.get("bytes")
    return value if isinstance(value, (bytes, bytearray)) else None


__all__ = ["FileImages", "ImageLocation", "ImageSource", "ParquetCell", "ParquetCells", "TarMember", "TarMembers",
           "image_bytes"]
