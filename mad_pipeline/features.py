"""Feature stores as xarray Datasets (lazy, dask-backed), and a sample's features through the dataset index.

``open_features(store)`` opens a published store (a path, a URL, or a key / unique key prefix in the cache) with
the reader's checks (see :mod:`mad_pipeline.store.integrity`) and wraps every array in a dask array whose chunks are
the store's shard files, so nothing is read until asked for. The row dimension is indexed by content hash::

    image store   dims image, token, channel, embed, box   index: image = image_hash   (ds.sel(image=h))
    text store    dims text, token, channel, embed, span   index: text = text_hash     (the string: text_string)
    index store   dims sample, text (the sample's K text slots)          index: sample = sample_id
    zero-shot     dims sample, candidate                                 index: sample = sample_id

``features_for(sample_ids, index, image=..., text=...)`` looks each sample up in the index store and gathers its
image row and text rows (still lazy): one Dataset with a ``sample`` dimension.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .cache import resolve_store
from .errors import InputError
from .store.layout import hash_column
from .store.reader import FeatureStore, open_store

# per store kind: (row dimension, the column that indexes it); the string array ``text`` of a text store is renamed
# ``text_string`` because its dimension ``text`` is indexed by hash
ROW_INDEX = {"image": ("image", "image_hash"), "text": ("text", "text_hash"), "index": ("sample", "sample_id"),
             "zeroshot": ("sample", "sample_id")}


_OPENED: dict[str, FeatureStore] = {}  # stores reopened in this process by unpickled arrays (dask workers)


class _Rows:
    """A store array as dask reads it: hash columns as numpy ``<U64`` and other strings as Python objects, whichever
    format version wrote them; decode failures are the reader's one-line ``StoreError``. Pickles as (store path,
    array name), so dask.distributed workers open the store themselves (with the same checks)."""

    def __init__(self, st: FeatureStore, name: str):
        self.path, self.name, self._a = st.path, name, st[name]
        self.shape, self.ndim = tuple(self._a.shape), len(self._a.shape)
        self.kind = "hash" if name.endswith("_hash") else ("str" if self._a.dtype.kind not in "biufc" else "")
        if self.kind:
            self.dtype = np.dtype("<U64") if self.kind == "hash" else np.dtype(object)
        else:  # zarr says <f2: the same bytes as numpy's native float16, which is how users know it
            dt = np.dtype(self._a.dtype)
            self.dtype = dt.newbyteorder("=") if dt.isnative else dt

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_a": None}

    def __getitem__(self, sel):
        if self._a is None:
            if self.path not in _OPENED:
                _OPENED[self.path] = open_store(self.path)
            self._a = _OPENED[self.path][self.name]
        out = np.asarray(self._a[sel])
        if self.kind == "hash":
            return hash_column(out)
        return out.astype(object) if self.kind == "str" else out.view(self.dtype)


def _lazy(st: FeatureStore, name: str):
    import dask.array as da

    rows = _Rows(st, name)
    a = st[name]
    outer = (a.shards or a.chunks)[0] if a.shape else 1
    chunks = (max(1, int(outer)), *a.shape[1:]) if a.shape else ()
    return da.from_array(rows, chunks=chunks, asarray=False, fancy=False, name=f"{st.path}/{name}",
                         meta=np.empty((0,) * rows.ndim, dtype=rows.dtype))


def as_dataset(st: FeatureStore):
    """The store as an ``xarray.Dataset``: every array lazy (dask, one task per shard file), the row dimension
    indexed by its content hash (image / text stores) or sample id (index / zero-shot stores), the other hash columns
    as coordinates, the manifest in ``attrs["mad"]``."""
    import xarray as xr

    dim, col = ROW_INDEX.get(st.kind, (None, None))
    data, coords = {}, {}
    for name in st.array_names():
        dims = tuple(st[name].metadata.dimension_names or ())
        var = xr.Variable(dims, _lazy(st, name))
        if name == col:
            keys = np.asarray(var.values)
            coords[dim] = (dim, keys if keys.dtype.kind == "U" else keys.astype(str))
            if name != dim:
                coords[name] = (dim, coords[dim][1])
        elif name.endswith("_hash"):
            coords[name] = var
        else:
            data["text_string" if (st.kind, name) == ("text", "text") else name] = var
    return xr.Dataset(data, coords=coords, attrs={"mad": st.manifest, "path": st.path})


def open_features(store: str | Path | FeatureStore, cache: str | Path | None = None):
    """A published store (path, URL, or key / unique key prefix in ``cache``) as a lazy ``xarray.Dataset``; see the
    module's docstring for its dimensions. ``ds.sel(image=h)`` selects an image by its sha256 hex digest."""
    st = store if isinstance(store, FeatureStore) else open_store(resolve_store(store, cache))
    return as_dataset(st)


def _kind_of(st: FeatureStore, expected: str, what: str) -> FeatureStore:
    if st.kind != expected:
        raise InputError(f"{what}={st.path}: a {st.kind} store, expected a{'n' if expected[0] in 'aeiou' else ''} "
                         f"{expected} store")
    return st


def _open(store, cache, expected: str, what: str) -> FeatureStore:
    st = store if isinstance(store, FeatureStore) else open_store(resolve_store(store, cache))
    return _kind_of(st, expected, what)


def _gather(rows_ds, dim: str, rows: np.ndarray, out_dims: tuple[str, ...], prefix: str) -> dict:
    """The rows ``rows`` (-1: absent) of a store's Dataset, lazily, as variables named ``<prefix>_<name>`` with the
    row dimension replaced by ``out_dims`` and the others prefixed (``image_token``); absent rows are NaN (floats),
    -1 (integers), False (booleans) or "" (strings)."""
    import xarray as xr

    found = rows >= 0
    idx = xr.DataArray(np.where(found, rows, 0), dims=out_dims)
    mask = xr.DataArray(found, dims=out_dims)
    constants = [n for n, v in rows_ds.data_vars.items() if dim not in v.dims]  # visual_proj: not per row
    picked = rows_ds.drop_vars(list(rows_ds.coords) + constants).isel({dim: idx})
    picked = picked.rename_dims({d: f"{prefix}_{d}" for d in picked.dims if d not in out_dims})
    out = {f"{prefix}_found": mask}
    for name, var in picked.data_vars.items():
        fill = {"f": np.nan, "b": False, "i": -1, "u": 0}.get(var.dtype.kind, "")
        out[name if name.startswith(f"{prefix}_") else f"{prefix}_{name}"] = var.where(mask, fill)
    return out


def features_for(sample_ids, index, image=None, text=None, cache: str | Path | None = None):
    """The features of samples, by id: a lazy ``xarray.Dataset`` with dimension ``sample`` (the ids, in the order
    given) and ``text`` (the sample's text slots), holding each sample's ``image_hash`` / ``text_hash`` and, from
    the image store, ``image_<array>`` (``image_pooled``, ``image_tokens``, ...) and from the text store
    ``text_<array>`` (their other dimensions prefixed too: ``image_token``, ``text_embed``). ``image_found`` /
    ``text_found`` are false where a store lacks the row (an empty text slot, an image the store does not hold),
    whose values are then NaN / -1 / False / "".

    ``index`` is the dataset's index store, ``image`` / ``text`` the feature stores (any teacher's: rows are found by
    content hash), each a path, URL, key prefix or ``FeatureStore``. An id the index lacks is an ``InputError``.
    """
    import xarray as xr

    ids = [str(s) for s in ([sample_ids] if isinstance(sample_ids, str) else sample_ids)]
    idx = _open(index, cache, "index", "index")
    all_ids = np.asarray(idx["sample_id"][:], dtype=object).astype(str)
    order = np.argsort(all_ids, kind="stable")
    pos = np.clip(np.searchsorted(all_ids[order], ids), 0, max(len(all_ids) - 1, 0))
    at = order[pos] if len(all_ids) else np.zeros(len(ids), np.int64)
    missing = [s for s, r in zip(ids, at, strict=True) if not len(all_ids) or all_ids[r] != s]
    if missing:
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        raise InputError(f"{idx.path}: no sample {', '.join(map(repr, missing[:5]))}{more} in this index store")
    image_hash = hash_column(idx["image_hash"][:])[at]
    text_hash = hash_column(idx["text_hash"][:])[at]
    coords = {"sample": ("sample", np.asarray(ids)), "image_hash": ("sample", image_hash),
              "text_hash": (("sample", "text"), text_hash)}
    data: dict = {}
    if image is not None:
        st = _open(image, cache, "image", "image")
        data.update(_gather(as_dataset(st), "image", st.rows_for(image_hash), ("sample",), "image"))
    if text is not None:
        st = _open(text, cache, "text", "text")
        rows = st.rows_for(text_hash.ravel()).reshape(text_hash.shape)
        data.update(_gather(as_dataset(st), "text", rows, ("sample", "text"), "text"))
    return xr.Dataset(data, coords=coords)
