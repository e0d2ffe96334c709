"""Feature-store format v2: which arrays each store kind has, their chunking and codecs.

Rows are the leading dimension of every array. Chunks hold whole rows and are sized to at least ~1 MB for the
big token arrays (a random read touches one chunk per row group, not the store); shards group chunks into files of
tens of MB so a writer writes one file per row range. The text-store arrays training reads (tokens, length, pooled,
char_span) are read a row at a time, at random (rows are sorted by hash, not by the images that use them): they
hold one row per chunk inside the same shards, so a row read decodes that row only. The zero-shot store's ``logits``
are chunked like a token array, its per-row candidate columns like its ``logits`` (``follows_big``; see
:mod:`.zeroshot`). Every chunk is Blosc/Zstd-compressed with byte shuffle and carries a crc32c checksum; every array
has ``dimension_names`` so xarray and dask can open it.

Content-hash columns (``image_hash``, ``text_hash``) are fixed-width unicode (numpy ``<U64``): zarr returns them as
plain numpy ``<U64`` arrays, which every numpy sorts, compares with Python ``str`` and ``searchsorted`` correctly.
Format v1 stored them as variable-length strings (zarr 3 returns numpy ``StringDType``); v1 stores stay readable.
Format v2 also writes every chunk, fill values included, and records the chunk files in the manifest, so a missing
file is corruption (see :mod:`.integrity`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .storage import TOKEN_INDEX, TOKEN_SCALE, Storage

FORMAT_VERSION = 2  # in every cache key (mad_pipeline.cache.make_key) and every manifest; bump both by bumping this
READABLE_VERSIONS = (1, 2)  # versions the reader and `mad store verify` accept
HASH_DTYPE = "<U64"  # a sha256 hex digest; "" where there is none
CHUNK_TARGET_BYTES = 1 << 20  # at least ~1 MB per token chunk
SHARD_TARGET_BYTES = 32 << 20  # one shard file per ~32 MB of token rows
DENSE = "dense"  # the image store's optional dense joint-space features (mad extract --dense)


@dataclass(frozen=True)
class ArraySpec:
    name: str
    row_shape: tuple[int, ...]  # shape of one row
    dtype: str  # numpy dtype name (HASH_DTYPE for content hashes), or "str" for variable-length UTF-8
    dims: tuple[str, ...]  # dimension names, leading "row" name first
    fill: object = 0
    big: bool = False  # chunked by bytes (token arrays); small arrays use one chunk per shard
    storage: Storage | None = None  # a token array stored otherwise than as it is written and read (storage.py)
    keepbits: int = 0  # a stored array written through numcodecs' BitRound filter (mantissa bits kept)
    row_chunks: bool = False  # read one row at a time, at random (text store): one row per chunk, inside shards
    follows_big: bool = False  # chunked and sharded like the big arrays, not counted in their size (zero-shot strings)

    def row_bytes(self) -> int:
        itemsize = 64 if self.dtype == "str" else np.dtype(self.dtype).itemsize
        return itemsize * int(np.prod(self.row_shape, dtype=np.int64))


def image_arrays(num_tokens: int, width: int, embed_dim: int, storage: Storage | None = None,
                 dense: bool = False) -> list[ArraySpec]:
    """The arrays an image store is written with and read as; ``storage`` (non-default) changes what is stored of
    ``tokens`` (see :func:`stored_arrays`); ``dense`` adds ``dense (T, embed_dim)`` float16, every token's dense
    joint-space features (``mad extract --dense``), chunked like the tokens."""
    storage = None if storage is None or storage.default else storage
    return [
        ArraySpec("image_hash", (), HASH_DTYPE, ("image",), fill=""),
        ArraySpec("tokens", (num_tokens, width), "float16", ("image", "token", "channel"), big=True, storage=storage),
        ArraySpec("pooled", (embed_dim,), "float16", ("image", "embed")),
        ArraySpec("crop_box", (4,), "float32", ("image", "box")),
        ArraySpec("valid", (), "bool", ("image",), fill=False),
        *([ArraySpec(DENSE, (num_tokens, embed_dim), "float16", ("image", "token", "embed"), big=True)] if dense
          else []),
    ]


def text_arrays(max_length: int, width: int, embed_dim: int) -> list[ArraySpec]:
    return [
        ArraySpec("text_hash", (), HASH_DTYPE, ("text",), fill=""),
        ArraySpec("text", (), "str", ("text",), fill=""),
        ArraySpec("tokens", (max_length, width), "float16", ("text", "token", "channel"), big=True, row_chunks=True),
        ArraySpec("length", (), "int32", ("text",), row_chunks=True),
        ArraySpec("pooled", (embed_dim,), "float16", ("text", "embed"), row_chunks=True),
        ArraySpec("char_span", (max_length, 2), "int32", ("text", "token", "span"), fill=-1, row_chunks=True),
    ]


def stored_arrays(specs: list[ArraySpec]) -> list[ArraySpec]:
    """The arrays on disk: a token array with a non-default storage becomes ``tokens`` (int8 or float16, ``1 + K``
    token rows when only K patches are kept), plus ``tokens_scale`` (int8) and ``token_index`` (kept tokens), chunked
    like ``tokens``. Every other array is stored as written."""
    out: list[ArraySpec] = []
    for s in specs:
        st = s.storage
        if st is None or st.default:
            out.append(s)
            continue
        n, width = st.stored_tokens(s.row_shape[0]), s.row_shape[1]
        out.append(ArraySpec(s.name, (n, width), "int8" if st.dtype == "int8" else "float16", s.dims, big=True,
                             keepbits=st.keepbits))
        if st.dtype == "int8":
            out.append(ArraySpec(TOKEN_SCALE, (n,), "float32", s.dims[:2], big=True))
        if st.keep_tokens:
            out.append(ArraySpec(TOKEN_INDEX, (n,), "int16", s.dims[:2], big=True))
    return out


def rows_per_chunk(specs: list[ArraySpec], target: int = CHUNK_TARGET_BYTES) -> int:
    big = max((s.row_bytes() for s in specs if s.big), default=target)
    return max(1, math.ceil(target / big))


def rows_per_shard(specs: list[ArraySpec], n_rows: int, chunk_rows: int, target: int = SHARD_TARGET_BYTES) -> int:
    big = max((s.row_bytes() for s in specs if s.big), default=1)
    chunks = max(1, target // max(1, big * chunk_rows))
    return max(chunk_rows, min(chunks * chunk_rows, _round_up(max(n_rows, 1), chunk_rows)))


def _round_up(x: int, m: int) -> int:
    return ((x + m - 1) // m) * m


def codecs_for(spec: ArraySpec):
    import zarr.codecs as zc

    if spec.dtype == "str" or np.dtype(spec.dtype).kind == "U":
        return [zc.ZstdCodec(level=3), zc.Crc32cCodec()]
    return [zc.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), zc.Crc32cCodec()]


def filters_for(spec: ArraySpec) -> dict:
    """``create_array``'s ``filters`` for a stored array: BitRound before compression, else nothing (the keyword
    left out, so the arrays of a default store are created exactly as they always were)."""
    if not spec.keepbits:
        return {}
    from zarr.codecs.numcodecs import BitRound

    return {"filters": [BitRound(keepbits=spec.keepbits)]}


def index_arrays(max_texts: int) -> list[ArraySpec]:
    """Dataset index: sample -> image row / text rows (by content hash, so any teacher's stores fit)."""
    return [
        ArraySpec("sample_id", (), "str", ("sample",), fill=""),
        ArraySpec("image_hash", (), HASH_DTYPE, ("sample",), fill=""),
        ArraySpec("text_hash", (max(max_texts, 1),), HASH_DTYPE, ("sample", "text"), fill=""),
        ArraySpec("meta_json", (), "str", ("sample",), fill="{}"),
    ]


def zarr_data_type(dtype: str) -> str | dict:
    """The ``data_type`` a zarr v3 array of an ArraySpec dtype has in its ``zarr.json``."""
    if dtype == "str":
        return "string"
    dt = np.dtype(dtype)
    if dt.kind == "U":
        return {"name": "fixed_length_utf32", "configuration": {"length_bytes": dt.itemsize}}
    return dt.name


def hash_column(values) -> np.ndarray:
    """A hash column as numpy ``<U`` strings, whichever format wrote it (v1 variable-length strings come back from
    zarr 3 as ``StringDType``, which ``searchsorted`` on some numpy versions gets wrong)."""
    values = np.asarray(values)
    return values if values.dtype.kind == "U" else np.asarray(values, dtype=object).astype(str)
