"""Rows of a local sharded store array read without zarr's per-chunk machinery (building a text view).

A text store holds one row per inner chunk inside ~32 MB shards; zarr spends about a millisecond of CPU on every
inner chunk it reads, far more than decoding it costs. :class:`ShardRows` reads the inner chunks of given rows
straight from the shard files: the shard index (kept per shard), then each needed inner chunk, its crc32c checked,
Blosc-decoded. It serves only arrays written exactly as the store writer writes them (``sharding_indexed`` with the
index at the end, inner codecs bytes (little endian) -> blosc -> crc32c, index codecs bytes -> crc32c, inner and
outer chunks spanning whole rows, the default chunk-key encoding) in a local directory; :meth:`ShardRows.open`
returns None for anything else, and the caller reads through zarr.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import StoreError

_EMPTY = np.iinfo(np.uint64).max  # an inner chunk never written


def _crc32c_strip(buf: bytes, where: str) -> bytes:
    import google_crc32c

    data, stored = buf[:-4], int.from_bytes(buf[-4:], "little")
    if google_crc32c.value(data) != stored:
        raise StoreError(f"{where}: crc32c checksum mismatch (corrupt chunk)")
    return data


class ShardRows:
    def __init__(self, path: Path, meta: dict, shard_rows: int, inner_rows: int, dtype: np.dtype, blosc):
        self.path, self.meta = path, meta
        self.shape = tuple(meta["shape"])
        self.shard_rows, self.inner_rows = shard_rows, inner_rows
        self.dtype, self.blosc = dtype, blosc
        self.per_shard = -(-shard_rows // inner_rows)
        self._index: dict[int, np.ndarray] = {}

    @classmethod
    def open(cls, store: str, name: str) -> ShardRows | None:
        """The reader of array ``name`` of the local store directory ``store``, or None (not a layout it reads)."""
        root = Path(store)
        try:
            meta = json.loads((root / "zarr.json").read_text())["consolidated_metadata"]["metadata"][name]
            (codec,) = meta["codecs"]
            cfg = codec["configuration"]
            inner = [c["name"] for c in cfg["codecs"]]
            index = [c["name"] for c in cfg["index_codecs"]]
            shard = meta["chunk_grid"]["configuration"]["chunk_shape"]
            enc = meta.get("chunk_key_encoding", {"name": "default"})
        except (OSError, ValueError, KeyError, TypeError):
            return None
        shape = meta.get("shape") or []
        if (codec.get("name") != "sharding_indexed" or cfg.get("index_location", "end") != "end"
                or inner != ["bytes", "blosc", "crc32c"] or index != ["bytes", "crc32c"]
                or any(c.get("configuration", {}).get("endian", "little") != "little"
                       for c in (cfg["codecs"][0], cfg["index_codecs"][0]))
                or enc.get("name") != "default" or enc.get("configuration", {}).get("separator", "/") != "/"
                or not shape or list(shard[1:]) != list(shape[1:]) or list(cfg["chunk_shape"][1:]) != list(shape[1:])
                or not isinstance(meta.get("data_type"), str)):
            return None
        import numcodecs

        dtype = np.dtype(meta["data_type"])
        return cls(root / name, meta, int(shard[0]), int(cfg["chunk_shape"][0]), dtype, numcodecs.Blosc())

    def _shard_file(self, s: int) -> Path:
        return self.path / "c" / "/".join([str(s)] + ["0"] * (len(self.shape) - 1))

    def _shard_index(self, s: int) -> np.ndarray:
        idx = self._index.get(s)
        if idx is None:
            f = self._shard_file(s)
            n = 16 * self.per_shard + 4
            try:
                with open(f, "rb") as fh:
                    fh.seek(-n, 2)
                    raw = fh.read(n)
            except OSError as e:
                raise StoreError(f"{f}: cannot read the shard ({e.strerror or e})") from None
            idx = np.frombuffer(_crc32c_strip(raw, str(f)), "<u8").reshape(self.per_shard, 2)
            self._index[s] = idx
        return idx

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """``array[rows]`` (any row order, repeats allowed)."""
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        decoded: dict[tuple[int, int], np.ndarray] = {}
        for j, r in enumerate(rows.tolist()):
            s, within = divmod(r, self.shard_rows)
            c = within // self.inner_rows
            block = decoded.get((s, c))
            if block is None:
                off, nbytes = (int(x) for x in self._shard_index(s)[c])
                f = self._shard_file(s)
                if off == _EMPTY:
                    raise StoreError(f"{f}: inner chunk {c} missing from the shard")
                with open(f, "rb") as fh:
                    fh.seek(off)
                    raw = fh.read(nbytes)
                data = self.blosc.decode(_crc32c_strip(raw, f"{f} (inner chunk {c})"))
                block = decoded[(s, c)] = np.frombuffer(data, self.dtype).reshape(-1, *self.shape[1:])
            out[j] = block[within - c * self.inner_rows]
        return out


__all__ = ["ShardRows"]
