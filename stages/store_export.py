"""``mad store export``: a store's pooled embeddings, with their ids in the same order, for retrieval tools.

Rows are the store's rows (sorted by content hash) that hold an embedding: an image store's undecodable images
(``valid`` false, zero vectors) are left out, and the metadata lists exactly the rows written, in order.

  npy      OUT/img_emb/img_emb_0.npy (text store: text_emb/text_emb_0.npy), float16 as stored, and
           OUT/metadata/metadata_0.parquet: clip-retrieval's embeddings-folder layout (autofaiss builds on it)
  parquet  one file OUT: the ids and an ``embedding`` column (fixed-size list of float32), one row group per step
  faiss    OUT/image.index (text.index) and OUT/metadata/metadata_0.parquet: index row i is metadata row i;
           ``--index-factory`` (faiss.index_factory, default Flat: exact); inner product with --normalize (cosine),
           L2 otherwise

The metadata has the hash column (``image_hash`` / ``text_hash``), for a text store ``caption`` (the text, as
clip-retrieval names it), and with ``--index`` a ``sample_ids`` list per row (the samples that use the image/text).
Reads go step by step over the store's shards (``--batch-rows``), so memory holds one step, not the store; the
output is assembled under a temporary name and renamed into place when whole.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mad_pipeline.cache import resolve_store
from mad_pipeline.errors import InputError, MadError
from mad_pipeline.progress import make_progress
from mad_pipeline.store.layout import hash_column
from mad_pipeline.store.reader import FeatureStore, open_store

FORMATS = ("npy", "parquet", "faiss")
FAISS_HINT = "pip install 'mad-pipeline[faiss]'"


@dataclass(frozen=True)
class ExportConfig:
    store: str  # a store directory, URL, or key / unique key prefix in the cache
    to: str  # npy | parquet | faiss
    out: Path
    normalize: bool = False  # L2-normalise each embedding (zero vectors stay zero)
    index: str | None = None  # the dataset's index store: adds each row's sample ids
    cache: Path | str | None = None
    index_factory: str = "Flat"  # faiss.index_factory description (--to faiss)
    train_rows: int = 100_000  # rows an index that needs training (IVF, PQ) is trained on: the first ones
    batch_rows: int = 65_536  # rows read per step (rounded to whole shards)
    force: bool = False  # replace OUT if it exists
    progress: bool = True


@dataclass
class ExportResult:
    store: str
    kind: str
    to: str
    out: str
    rows: int  # rows written
    dim: int
    skipped: int = 0  # rows without an embedding (undecodable images)
    normalized: bool = False
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _faiss():
    try:
        import faiss
    except ImportError:
        raise MadError(f"--to faiss needs the faiss library: {FAISS_HINT}") from None
    return faiss


def _steps(st: FeatureStore, batch_rows: int) -> list[tuple[int, int]]:
    a = st["pooled"]
    outer = int((a.shards or a.chunks)[0]) or 1
    step = max(outer, (max(1, batch_rows) // outer) * outer)
    n = int(a.shape[0])
    return [(lo, min(n, lo + step)) for lo in range(0, n, step)]


def _normalize(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def _sample_ids(index: str | None, cache, kind: str) -> dict[str, list[str]] | None:
    """content hash -> the ids of the samples that use it (their image, or one of their texts)."""
    if index is None:
        return None
    idx = open_store(resolve_store(index, cache))
    if idx.kind != "index":
        raise InputError(f"--index {idx.path}: a {idx.kind} store, expected an index store")
    ids = np.asarray(idx["sample_id"][:], dtype=object).astype(str)
    hashes = hash_column(idx[f"{kind}_hash"][:])
    out: dict[str, list[str]] = defaultdict(list)
    for sid, hs in zip(ids, hashes.reshape(len(ids), -1), strict=True):
        for h in dict.fromkeys(hs.tolist()):
            if h:
                out[h].append(str(sid))
    return out


class _Writer:
    """Where the embeddings go, step by step, for one output format."""

    def __init__(self, cfg: ExportConfig, kind: str, tmp: Path, dim: int, rows: int, faiss_mod=None):
        self.cfg, self.kind, self.tmp, self.dim = cfg, kind, tmp, dim
        self.meta: list = []
        self.files: list[str] = []
        short = "img" if kind == "image" else "text"
        if cfg.to == "npy":
            rel = f"{short}_emb/{short}_emb_0.npy"
            (tmp / rel).parent.mkdir(parents=True)
            self.npy = np.lib.format.open_memmap(tmp / rel, mode="w+", dtype=np.float16, shape=(rows, dim))
            self.files.append(rel)
            self.at = 0
        elif cfg.to == "faiss":
            metric = faiss_mod.METRIC_INNER_PRODUCT if cfg.normalize else faiss_mod.METRIC_L2
            try:
                self.index = faiss_mod.index_factory(dim, cfg.index_factory, metric)
            except RuntimeError as e:
                raise InputError(f"--index-factory {cfg.index_factory!r}: {str(e).strip().splitlines()[-1]}") from None
            self.pending: list[np.ndarray] = []
        self.pq = None

    def add(self, emb: np.ndarray, meta: dict) -> None:
        if self.cfg.to == "npy":
            self.npy[self.at : self.at + len(emb)] = emb.astype(np.float16)
            self.at += len(emb)
        elif self.cfg.to == "faiss":
            self._faiss_add(np.ascontiguousarray(emb, dtype=np.float32))
        if self.cfg.to == "parquet":
            self._parquet_add(emb, meta)
        else:
            self.meta.append(meta)

    def _faiss_add(self, x: np.ndarray) -> None:
        if self.index.is_trained:
            self.index.add(x)
            return
        self.pending.append(x)  # held until there are enough rows to train on
        if sum(len(p) for p in self.pending) >= self.cfg.train_rows:
            self._train()

    def _train(self) -> None:
        if not self.index.is_trained and self.pending:
            x = np.concatenate(self.pending)
            try:
                self.index.train(x[: self.cfg.train_rows])
            except RuntimeError as e:
                raise InputError(f"--index-factory {self.cfg.index_factory!r}: cannot train on {len(x)} rows "
                                 f"({str(e).strip().splitlines()[-1]})") from None
            self.index.add(x)
            self.pending = []

    def _parquet_add(self, emb: np.ndarray, meta: dict) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = dict(meta)
        flat = pa.array(np.ascontiguousarray(emb, dtype=np.float32).ravel())
        cols["embedding"] = pa.FixedSizeListArray.from_arrays(flat, self.dim)
        table = pa.table(cols)
        if self.pq is None:
            self.pq = pq.ParquetWriter(self.tmp / "embeddings.parquet", table.schema)
        self.pq.write_table(table)

    def close(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.cfg.to == "parquet":
            if self.pq is not None:
                self.pq.close()
            return
        if self.cfg.to == "npy":
            self.npy.flush()
            del self.npy
        else:
            self._train()
            faiss = _faiss()
            rel = f"{self.kind}.index"
            faiss.write_index(self.index, str(self.tmp / rel))
            self.files.append(rel)
        cols: dict = defaultdict(list)
        for m in self.meta:
            for k, v in m.items():
                cols[k].extend(v)
        (self.tmp / "metadata").mkdir()
        pq.write_table(pa.table(dict(cols)), self.tmp / "metadata" / "metadata_0.parquet")
        self.files.append("metadata/metadata_0.parquet")


def _meta(st: FeatureStore, lo: int, hi: int, keep: np.ndarray, samples: dict | None) -> dict:
    col = f"{st.kind}_hash"
    hashes = hash_column(st[col][lo:hi])[keep]
    meta = {col: hashes.tolist()}
    if st.kind == "text":
        meta["caption"] = [str(t) for t in np.asarray(st["text"][lo:hi], dtype=object)[keep]]
    if samples is not None:
        meta["sample_ids"] = [samples.get(h, []) for h in meta[col]]
    return meta


def _prepare_out(cfg: ExportConfig) -> tuple[Path, Path]:
    out = Path(cfg.out).expanduser()
    if out.exists() and not cfg.force:
        raise InputError(f"--out {out}: already exists (remove it, or pass --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return out, tmp


def _publish(tmp: Path, out: Path, to: str) -> None:
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    if to == "parquet":
        os.replace(tmp / "embeddings.parquet", out)
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, out)


def run(cfg: ExportConfig) -> ExportResult:
    t0 = time.perf_counter()
    if cfg.to not in FORMATS:
        raise InputError(f"--to {cfg.to!r}: expected one of {', '.join(FORMATS)}")
    faiss_mod = _faiss() if cfg.to == "faiss" else None  # a missing extra is said before anything is read
    st = open_store(resolve_store(cfg.store, cfg.cache))
    if st.kind not in ("image", "text") or "pooled" not in st.array_names():
        raise InputError(f"{st.path}: a {st.kind} store has no pooled embeddings; export an image or a text store")
    samples = _sample_ids(cfg.index, cfg.cache, st.kind)
    n, dim = (int(x) for x in st["pooled"].shape)
    valid = np.asarray(st["valid"][:], dtype=bool) if "valid" in st.array_names() else np.ones(n, bool)
    out, tmp = _prepare_out(cfg)
    try:
        writer = _Writer(cfg, st.kind, tmp, dim, int(valid.sum()), faiss_mod)
        with make_progress(cfg.progress) as progress:
            task = progress.add_task(f"export {st.kind} -> {cfg.to}", total=n, unit="rows")
            for lo, hi in _steps(st, cfg.batch_rows):
                keep = valid[lo:hi]
                emb = np.asarray(st["pooled"][lo:hi])[keep]
                writer.add(_normalize(emb) if cfg.normalize else emb, _meta(st, lo, hi, keep, samples))
                progress.advance(task, hi - lo)
        writer.close()
        _publish(tmp, out, cfg.to)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    files = [str(out)] if cfg.to == "parquet" else [str(out / f) for f in writer.files]
    return ExportResult(store=st.path, kind=st.kind, to=cfg.to, out=str(out), rows=int(valid.sum()), dim=dim,
                        skipped=int(n - valid.sum()), normalized=cfg.normalize, files=files,
                        seconds=time.perf_counter() - t0)
