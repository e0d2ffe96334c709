"""The zero-shot store's layout: which arrays it has, how its rows are ordered and chunked, and how it is read.

- **Rows** are the task's samples that have an image, **ordered by image** (``image_hash``, the image store's own row
  order, then dataset order): training reads its samples in chunk-aware order over the image store, so a batch's
  zero-shot rows sit next to each other, as its image rows do. Stores written before hold their rows in dataset
  order; readers look rows up by ``sample_id`` and never depend on the order.
- **logits** ``(S, K)`` float32 is chunked like a token array: whole rows, ~1 MB a chunk, inside ~32 MB shard files.
  With VQA v2's 3,129 answers that is 84 rows a chunk; a batch decodes a few small chunks, never the whole array.
- **Candidates shared by every row** (VQA's answer vocabulary, VCR's ``a0..a3 r0..r3``, SNLI-VE's ``hypothesis``,
  a question-independent VQA template's texts) are stored once, as ``shared_label`` / ``shared_text`` ``(K,)`` (the
  manifest lists them under ``constants``), with no per-row copy; where rows differ the per-row ``candidate_label`` /
  ``candidate_text`` ``(S, K)`` stay (chunked like ``logits``). Stores written before have the per-row arrays only,
  in one chunk per array, and read the same through :func:`candidate_labels` / :func:`zeroshot_blocks`.

The store's key does not depend on any of this (chunking, row order and the shared arrays are layout, not content):
an old store and a new one of the same inputs have the same key and give the same values by sample id.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from .layout import HASH_DTYPE, ArraySpec, codecs_for

SHARED = {"label": "shared_label", "text": "shared_text"}  # stored once, (K,), when every row has the same
PER_ROW = {"label": "candidate_label", "text": "candidate_text"}  # (S, K), when rows differ
ROW_ORDER = "image_hash, then dataset order"  # the manifest's row_order of stores written by image
BLOCK_BYTES = 64 << 20  # logits read per step by zeroshot_blocks


def zeroshot_arrays(max_candidates: int, shared: Sequence[str] = ()) -> list[ArraySpec]:
    """The per-row arrays of a zero-shot store with at most ``max_candidates`` candidates a row; ``shared``: the
    columns (``label``, ``text``) every row shares, stored once by :func:`write_shared` instead of per row."""
    k = max(max_candidates, 1)
    out = [
        ArraySpec("sample_id", (), "str", ("sample",), fill=""),
        ArraySpec("image_hash", (), HASH_DTYPE, ("sample",), fill=""),
        ArraySpec("logits", (k,), "float32", ("sample", "candidate"), fill=float("nan"), big=True),
    ]
    out += [ArraySpec(PER_ROW[c], (k,), "str", ("sample", "candidate"), fill="", follows_big=True)
            for c in ("label", "text") if c not in shared]
    return out


def shared_arrays(max_candidates: int) -> list[ArraySpec]:
    """The constant arrays a row-shared column is stored as (no row dimension)."""
    k = max(max_candidates, 1)
    return [ArraySpec(SHARED[c], (k,), "str", ("candidate",), fill="") for c in ("label", "text")]


def shared_columns(candidates) -> dict[str, tuple[str, ...]]:
    """The columns (``label``, ``text``) whose values every candidate set in ``candidates`` shares, and those values
    (compared by identity first: a task that shares one tuple among its samples costs nothing to check)."""
    if not candidates:
        return {}
    first = candidates[0]
    out = {}
    for col, get in (("label", lambda c: c.labels), ("text", lambda c: c.texts)):
        ref = get(first)
        if all(get(c) is ref or get(c) == ref for c in candidates):
            out[col] = tuple(ref)
    return out


def image_order(image_hashes: Sequence[str]) -> np.ndarray:
    """The row order of a zero-shot store: positions sorted by image hash, dataset order among an image's samples."""
    return np.argsort(np.asarray(list(image_hashes), dtype=HASH_DTYPE), kind="stable")


def write_shared(writer, columns: dict[str, Sequence[str]], k: int) -> list[str]:
    """Write each shared column into the store ``writer`` is building as a one-chunk ``(k,)`` string array (padded
    with ""), with the store's codecs; returns their names (the manifest's ``constants``)."""
    import zarr

    group = zarr.open_group(str(writer.path), mode="r+")
    names = []
    for col, values in sorted(columns.items()):
        spec = next(s for s in shared_arrays(k) if s.name == SHARED[col])
        padded = np.full(max(k, 1), "", dtype=object)
        padded[: len(values)] = list(values)
        arr = group.create_array(spec.name, shape=padded.shape, chunks=padded.shape, dtype=str,
                                 compressors=codecs_for(spec), fill_value="", dimension_names=list(spec.dims),
                                 overwrite=True)
        arr.with_config({"write_empty_chunks": True})[...] = padded
        names.append(spec.name)
    return names


def candidate_labels(store) -> tuple[str, ...] | object:
    """The candidates' labels of a zero-shot store: a tuple when every row shares them (``shared_label``), else the
    per-row ``candidate_label`` array (read rows of it)."""
    names = set(store.array_names())
    if SHARED["label"] in names:
        return tuple(str(x) for x in np.asarray(store[SHARED["label"]][:], dtype=object))
    return store[PER_ROW["label"]]


def zeroshot_blocks(store, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(sample_ids, logits float64, labels)`` over a zero-shot store, a block of whole chunks at a time (memory
    holds one block, not the store); ``labels`` is ``(rows, K)`` in either layout (a broadcast view when shared)."""
    logits = store["logits"]
    n, k = (int(x) for x in logits.shape)
    ids = np.asarray(store["sample_id"][:], dtype=object).astype(str)
    labels = candidate_labels(store)
    shared = np.asarray(labels, dtype=object) if isinstance(labels, tuple) else None
    step = int(logits.chunks[0])
    step *= max(1, block_bytes // max(1, step * k * 4))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        block = np.asarray(logits[lo:hi], dtype=np.float64)
        lab = np.broadcast_to(shared, (hi - lo, k)) if shared is not None else labels[lo:hi]
        yield ids[lo:hi], block, lab


__all__ = ["PER_ROW", "ROW_ORDER", "SHARED", "candidate_labels", "image_order", "shared_arrays", "shared_columns",
           "write_shared", "zeroshot_arrays", "zeroshot_blocks"]
