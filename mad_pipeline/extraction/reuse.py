"""Reuse the rows that published stores of the same teacher identity already hold.

Rows are content-addressed: the row of an image (text) store for content hash h depends only on the teacher identity
and that one input. So before running the teacher, an extraction looks for *donor* stores -- published stores of the
same kind whose manifest records the same teacher identity, in the local cache and in each shared cache that can be
listed (a directory, ``s3://``; an ``http(s)://`` cache has no listing and is not searched) -- and copies the rows
they have, shard by shard in store order; the teacher runs only on the rest. Image rows that failed to decode in a
donor (``valid`` false) are not copied: they are decoded again, so the new run fails or records them itself.
The new store is self-contained: rows are copied into it, never linked. A store with a storage option (int8,
bitround, kept tokens; see :mod:`mad_pipeline.store.storage`) holds approximations, so it is never a donor; it takes
its rows from fp16 donors like any other store (its writer then encodes them as the teacher's own would be).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ..cache import Cache
from ..errors import MadError
from ..hashing import content_key
from ..store.layout import FORMAT_VERSION
from ..store.location import Location, manifest_of, parse_store_rel, store_glob
from ..store.reader import FeatureStore, open_store

HASH_COLUMN = {"image": "image_hash", "text": "text_hash"}


def identity_digest(teacher: dict) -> str:
    """Digest of a teacher identity as a manifest records it under ``teacher`` (its name and tower left out)."""
    return content_key({k: v for k, v in teacher.items() if k not in ("name", "tower")})


@dataclass
class Donor:
    key: str
    source: str  # local | shared:<cache root>
    store: FeatureStore


@dataclass
class ReusePlan:
    """For each row of the store being built: the donor holding it (-1: compute it) and its row there."""

    donors: list[Donor]
    which: np.ndarray
    src: np.ndarray

    @property
    def geometry(self) -> dict:
        return dict(self.donors[0].store.manifest.get("geometry", {}))

    def covered(self) -> int:
        return int((self.which >= 0).sum())

    def missing(self, rows: list[int]) -> list[int]:
        """The rows among ``rows`` that no donor has (the teacher must compute them)."""
        rows_arr = np.asarray(rows, np.int64)
        return rows_arr[self.which[rows_arr] < 0].tolist() if len(rows_arr) else []

    def shard_rows(self, lo: int, hi: int) -> dict[str, dict]:
        """How many rows of ``[lo, hi)`` each donor gives: ``{key: {"source", "rows"}}``."""
        out = {}
        for d, n in zip(*np.unique(self.which[lo:hi][self.which[lo:hi] >= 0], return_counts=True), strict=True):
            donor = self.donors[int(d)]
            out[donor.key] = {"source": donor.source, "rows": int(n)}
        return out

    def copy(self, lo: int, hi: int, names: list[str], hashes: np.ndarray
             ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """The donors' rows of ``[lo, hi)``, one batch per donor, in store order. ``hashes`` (this store's hash
        column) fills the hash column itself."""
        rows = np.arange(lo, hi, dtype=np.int64)
        which = self.which[lo:hi]
        for d in np.unique(which[which >= 0]):
            sel = rows[which == d]
            store = self.donors[int(d)].store
            idx = self.src[sel]
            arrays = {name: _read_rows(store[name], idx) for name in names if name not in HASH_COLUMN.values()}
            for name in names:
                if name in HASH_COLUMN.values():
                    arrays[name] = hashes[sel]
            yield sel, arrays


def _read_rows(array, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` (increasing) of a zarr array: one slice when they are contiguous."""
    contiguous = len(idx) and idx[-1] - idx[0] + 1 == len(idx)
    values = np.asarray(array[int(idx[0]) : int(idx[-1]) + 1] if contiguous else array.oindex[idx])
    if values.dtype.kind == "S":
        values = np.char.decode(values, "utf-8")
    if values.dtype.kind in ("U", "T"):  # strings (fixed-width or numpy StringDType): as Python str objects
        values = values.astype(object)
    return values


def _candidates(cache: Cache, kind: str, want: str, log: Callable[[str], None]) -> list[tuple[str, str, str]]:
    """(key, source, where) of the published stores of ``kind`` with the teacher identity digest ``want``."""
    found: list[tuple[str, str, str]] = []
    seen: set[str] = set()

    def consider(rel_key: str | None, man: dict | None, source: str, where: str) -> None:
        if rel_key is None or rel_key in seen or not man:
            return
        if man.get("kind") != kind or man.get("format_version") != FORMAT_VERSION or man.get("cache_key") != rel_key:
            return
        if man.get("storage"):  # int8 / bitround / kept tokens: not the teacher's exact rows, never a donor
            return
        teacher = man.get("teacher")
        if isinstance(teacher, dict) and identity_digest(teacher) == want:
            seen.add(rel_key)
            found.append((rel_key, source, where))

    for p in cache.stores(kind):
        parsed = parse_store_rel(f"stores/{kind}/{p.name}")
        consider(parsed[1] if parsed else None, manifest_of(p), "local", str(p))
    for root in cache.shared:
        loc = Location(root)
        if not loc.writable:  # http(s): no listing, so no search
            continue
        try:
            rels = loc.glob(store_glob(kind))
            for rel in rels:
                parsed = parse_store_rel(rel)
                if parsed is not None and parsed[1] not in seen:
                    store = loc.child(rel)
                    consider(parsed[1], manifest_of(store), f"shared:{root}", store.url)
        except Exception as e:  # noqa: BLE001 - a shared cache that is down must not stop a run
            log(f"shared cache {root}: unreachable while looking for reusable rows ({type(e).__name__}: {e}); "
                f"skipped")
    return found


def plan_reuse(cache: Cache, kind: str, ident: dict, hashes: list[str], log: Callable[[str], None] = print
               ) -> ReusePlan | None:
    """Which donor store gives each row of a new ``kind`` store of teacher identity ``ident`` over ``hashes``
    (sorted); None when no donor has any of them. Donors are taken greedily, the one giving most rows first."""
    if not hashes:
        return None
    want = content_key(ident)
    query = np.asarray(hashes, dtype=str)
    options: list[tuple[Donor, np.ndarray]] = []
    geometry = None
    for key, source, where in _candidates(cache, kind, want, log):
        try:
            store = open_store(where)
            rows = store.rows_for(query)
            if kind == "image" and (rows >= 0).any():
                valid = np.asarray(store["valid"][:], bool)
                rows = np.where((rows >= 0) & valid[np.clip(rows, 0, None)], rows, -1)
        except (MadError, OSError, ValueError, KeyError) as e:
            log(f"{kind} store {key[:12]} ({source}): cannot be read for reuse ({e}); skipped")
            continue
        geo = store.manifest.get("geometry")
        if not (rows >= 0).any() or (geometry is not None and geo != geometry):
            continue
        geometry = geo
        options.append((Donor(key, source, store), rows))
    which = np.full(len(hashes), -1, np.int64)
    src = np.full(len(hashes), -1, np.int64)
    donors: list[Donor] = []
    while options:
        gains = [int(((rows >= 0) & (which < 0)).sum()) for _, rows in options]
        best = int(np.argmax(gains))
        if gains[best] == 0:
            break
        donor, rows = options.pop(best)
        take = (rows >= 0) & (which < 0)
        which[take] = len(donors)
        src[take] = rows[take]
        donors.append(donor)
    return ReusePlan(donors, which, src) if donors else None
