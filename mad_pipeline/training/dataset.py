"""Datasets of stage 2: a split's samples as :class:`~.batch.Item` records.

- :class:`SampleDataset`: the student's inputs and the task's target (evaluation).
- :class:`DistillDataset`: the same plus the teacher's side: its features looked up by content hash in the stage-1
  stores (the image-store row of the sample's image, the text-store row of the text the task distils, the zero-shot
  row of the sample), or, for an online teacher, its input pixels and text (only zero-shot logits come from a store).

Reading: zarr is opened lazily in whichever process reads (each DataLoader worker opens its own handles; nothing
opened is ever pickled), and ``__getitems__`` reads a whole batch through a :class:`~.chunks.ChunkCache`, so each
chunk is decompressed once per batch (and, with the chunk-aware sampler over :meth:`DistillDataset.image_rows`, about
once per epoch). Text features come from the dataset's text view when it has one (:meth:`DistillDataset.use_text_view`,
see :mod:`.text_view`: the same values, in training order, one chunk per image-store chunk), else from the text store.
Nothing here runs a teacher or builds targets: that is :class:`~.collate.Collate`'s job.

Images: each process keeps the student's input of the images it has decoded (pixels and crop box, exactly what
``preprocess`` returned) up to :data:`PIXEL_CACHE_MB`, so an image read again -- the same picture under several
questions, the next epoch, the next dev evaluation -- is not decoded and resized again. Once the budget is full new
images are simply not kept (a dataset larger than the budget keeps a fixed part of itself cached, which random access
uses as well as any eviction rule would). The cache never travels to DataLoader workers: each fills its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ..data.base import Sample
from ..data.images import ImageDecodeError, load_image
from ..errors import InputError, StoreError
from ..hashing import sha256_text
from ..store.zeroshot import candidate_labels
from ..tasks import Task
from .batch import Item
from .chunks import ChunkCache, count_reads

CACHE_MIB_PER_CHUNK = 1 << 20  # an LRU of cache_chunks chunks holds up to this many bytes per chunk of small ones
PIXEL_CACHE_MB = 256  # per dataset and process: the student's inputs of decoded images (the shapes world's 4,000
# training images at 64 x 64 take 197 MB; a real dataset's larger images simply fill it and stop)


@dataclass(frozen=True)
class StorePaths:
    """Published stage-1 stores (paths or URLs). Any may be None."""

    image: str | None = None
    text: str | None = None
    index: str | None = None
    zeroshot: str | None = None

    def widths(self) -> dict[str, int | None]:
        """Teacher widths for the MAD projections, from the store manifests."""
        from ..store.reader import open_store

        out: dict[str, int | None] = {"image": None, "image_pooled": None, "text": None, "text_pooled": None}
        for kind in ("image", "text"):
            path = getattr(self, kind)
            if path is not None:
                g = open_store(path).manifest.get("geometry", {})
                out[kind], out[f"{kind}_pooled"] = int(g["width"]), int(g["embed_dim"])
        return out


@dataclass(frozen=True)
class OnlineTeacherInput:
    """How an online teacher sees an image: its ``preprocess`` (image -> pixels) and ``crop_box(width, height)``."""

    preprocess: Callable
    crop_box: Callable


class SampleDataset(Dataset):
    """A split's samples with the student's inputs and the task's targets. ``preprocess`` is the student's
    (picklable; runs in workers)."""

    def __init__(self, samples: Sequence[Sample], root: str | Path, task: Task, preprocess: Callable):
        self.samples = list(samples)
        self.root = Path(root)
        self.task = task
        self.preprocess = preprocess
        self._pixels: dict[str, tuple[Any, np.ndarray]] = {}  # image -> the student's input (see above)
        self._pixel_bytes = 0

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_pixels"], state["_pixel_bytes"] = {}, 0  # each process fills its own
        return state

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Item:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Item]:
        return [self._item(int(i))[0] for i in indices]

    def _item(self, i: int, need_image: bool = False) -> tuple[Item, Any]:
        """Sample ``i`` as an :class:`Item`, and its decoded image when ``need_image`` (else None)."""
        s = self.samples[i]
        image = None
        cached = None if need_image else self._pixels.get(s.image)
        if cached is None:
            path = self.root / s.image
            try:
                image = load_image(path)
            except ImageDecodeError as e:
                raise InputError(f"{path}: {e} (sample {s.id})") from None
            pixels, box = self.preprocess(image)
            cached = pixels, np.asarray(box, np.float32)
            self._keep(s.image, cached)
        target = self.task.target(s)
        item = Item(index=i, pixels=cached[0], box=cached[1], texts=self.task.student_texts(s),
                    target=target, choice=self.task.distilled_choice(s, target))
        return item, image

    def _keep(self, image: str, value: tuple[Any, np.ndarray]) -> None:
        size = int(value[0].nbytes) + value[1].nbytes  # a torch tensor or, from some preprocessing, an array
        if image not in self._pixels and self._pixel_bytes + size <= PIXEL_CACHE_MB << 20:
            self._pixels[image] = value
            self._pixel_bytes += size


class DistillDataset(SampleDataset):
    """Training samples with their teacher side (see the module docstring).

    Samples the index store lacks (skipped at extraction) and samples whose image the image store marks invalid are
    dropped (see ``dropped``). ``online``: the online teacher's input; then no image or text features are read.
    ``has_image_targets(row)``: True when the image row's targets are already made (the target builder's cache), so
    its teacher tokens need not be read (its item then carries ``image_tokens`` None).
    """

    def __init__(self, samples: Sequence[Sample], root: str | Path, task: Task, preprocess: Callable,
                 stores: StorePaths, online: OnlineTeacherInput | None = None, cache_chunks: int = 32,
                 has_image_targets: Callable[[int], bool] | None = None, read_dense: bool = False):
        super().__init__(samples, root, task, preprocess)
        self.stores = stores
        self.read_dense = read_dense  # also read the image store's dense joint-space features (question-aware)
        self.online = online
        self.has_image_targets = has_image_targets
        self.cache_chunks = cache_chunks
        self.dropped: list[dict[str, str]] = []
        n = len(self.samples)
        self._image_rows = np.full(n, -1, np.int64)
        self._text_rows = np.full(n, -1, np.int64)
        self._zs_rows = np.full(n, -1, np.int64)
        self.teacher_texts = [task.teacher_texts(s)[-1] for s in self.samples]
        self.image_chunk_rows = 1
        self.grid: tuple[int, int] | None = None
        self.kept_tokens = 0  # a keep-tokens image store: patches kept per image (see training/kept.py)
        self.text_view = None  # the text rows in training order (see training/text_view.py, use_text_view)
        self.samples = self._index(self.samples)
        self._handles: dict[str, Any] | None = None
        self._pid: int | None = None

    # -- lookups, in the constructing process (handles are dropped afterwards) -------------------------------------

    def _index(self, samples: list[Sample]) -> list[Sample]:
        from ..store.reader import open_store

        st = self.stores
        keep = np.ones(len(samples), bool)
        by_id = None
        if st.index is not None:
            idx = open_store(st.index)
            ids = np.asarray(idx["sample_id"][:], dtype=object).astype(str)
            hashes = np.asarray(idx["image_hash"][:], dtype=object).astype(str)
            by_id = dict(zip(ids.tolist(), hashes.tolist(), strict=True))
        if st.image is not None and self.online is None:
            keep &= self._index_images(samples, open_store(st.image), by_id)
        elif by_id is not None:
            for i, s in enumerate(samples):
                if s.id not in by_id:
                    keep[i] = False
                    self.dropped.append({"sample_id": s.id, "reason": "not in the stage-1 index (skipped there)"})
        if st.text is not None:
            self._index_texts(samples, open_store(st.text))
        if st.zeroshot is not None:
            zs = open_store(st.zeroshot)
            ids = np.asarray(zs["sample_id"][:], dtype=object).astype(str)
            pos = {sid: i for i, sid in enumerate(ids.tolist())}
            self._zs_rows = np.asarray([pos.get(s.id, -1) for s in samples], np.int64)
        self._image_rows = self._image_rows[keep]
        self._text_rows = self._text_rows[keep]
        self._zs_rows = self._zs_rows[keep]
        self.teacher_texts = [t for t, k in zip(self.teacher_texts, keep, strict=True) if k]
        return [s for s, k in zip(samples, keep, strict=True) if k]

    def _index_images(self, samples: list[Sample], image, by_id: dict[str, str] | None) -> np.ndarray:
        if by_id is None:
            raise StoreError("teacher image features need the dataset index store (image hash per sample)")
        keep = np.ones(len(samples), bool)
        self._image_rows = image.rows_for([by_id.get(s.id, "") for s in samples])
        valid = np.asarray(image["valid"][:], bool)
        self.image_chunk_rows = int(image["tokens"].chunks[0])
        self.grid = tuple(image.manifest.get("geometry", {}).get("grid") or ()) or None
        self.kept_tokens = image.storage.keep_tokens
        for i, s in enumerate(samples):
            r = self._image_rows[i]
            if s.id not in by_id or r < 0:
                keep[i] = False
                self.dropped.append({"sample_id": s.id, "reason": "not in the stage-1 stores (skipped there)"})
            elif not valid[r]:
                keep[i] = False
                self.dropped.append({"sample_id": s.id, "reason": "image could not be decoded at extraction"})
        return keep

    def _index_texts(self, samples: list[Sample], text) -> None:
        """The text-store row of each sample's teacher text: the task's most preferred text the store holds."""
        cands = [self.task.teacher_texts(s) for s in samples]
        chosen = [c[-1] for c in cands]
        rows = np.full(len(samples), -1, np.int64)
        for level in range(max((len(c) for c in cands), default=0) - 1, -1, -1):  # most preferred wins
            which = [i for i, c in enumerate(cands) if level < len(c)]
            found = text.rows_for([sha256_text(cands[i][level]) for i in which])
            for i, r in zip(which, found.tolist(), strict=True):
                if r >= 0:
                    rows[i], chosen[i] = r, cands[i][level]
        self.teacher_texts = chosen
        self._text_rows = rows
        missing = [s.id for s, r in zip(samples, rows.tolist(), strict=True) if r < 0]
        if missing and self.online is None:
            raise StoreError(f"{self.stores.text}: no text features for sample {missing[0]} ({len(missing)} "
                             "samples); was it extracted from another dataset?")

    def image_rows(self) -> np.ndarray:
        """Image store row of each sample (-1 = none): what the chunk-aware sampler groups by."""
        return self._image_rows.copy()

    def text_rows(self) -> np.ndarray:
        """Text store row of each sample's teacher text (-1 = none)."""
        return self._text_rows.copy()

    def reads_text_store(self) -> bool:
        """Whether items read text features from the text store beside an image store (what a text view serves)."""
        return (self.online is None and self.stores.text is not None and self.stores.image is not None
                and bool(len(self._text_rows)) and bool((self._text_rows >= 0).all()))

    def use_text_view(self, view) -> None:
        """Read text features from ``view`` (a :class:`~.text_view.TextView`: the same values in training order)
        instead of the text store; None: from the text store again. Handles opened so far are dropped."""
        self.text_view = view
        self._handles = None

    # -- lazy per-process handles -------------------------------------------------------------------------------------

    def __getstate__(self):
        state = super().__getstate__()
        state["_handles"] = None  # never ship open zarr handles (or their caches) to another process
        state["_pid"] = None
        return state

    def _open(self) -> dict[str, Any]:
        if self._handles is not None and self._pid == os.getpid():
            return self._handles
        from ..store.reader import open_store

        # Array handles are opened once per process and kept (ChunkCache keeps one LRU of decoded chunks per array,
        # of cache_chunks chunks or as many one-row chunks as cache_chunks MiB hold).
        cache = ChunkCache(self.cache_chunks, max_bytes=self.cache_chunks * CACHE_MIB_PER_CHUNK)
        h: dict[str, Any] = {"cache": cache}
        st = self.stores

        def arrays(path: str, names: tuple[str, ...], side: str) -> dict[str, Any]:
            store = count_reads(open_store(path), cache.side(side))
            return {n: store[n] for n in names}

        if self.online is None:
            if st.image is not None:
                kept = ("token_index",) if self.kept_tokens else ()  # where each kept token sits
                kept += ("dense",) if self.read_dense else ()
                h["image"] = arrays(st.image, ("tokens", "pooled", "crop_box", *kept), "image")
            if self.text_view is not None:  # one packed array in training order (text_view.py)
                h["text_view"] = count_reads(open_store(self.text_view.path), cache.side("text"))["rows"]
            elif st.text is not None:
                h["text"] = arrays(st.text, ("tokens", "pooled", "char_span", "length"), "text")
        if st.zeroshot is not None:
            zs = count_reads(open_store(st.zeroshot), cache.side("zeroshot"))  # labels: shared (a tuple) or per row
            h["zeroshot"] = {"logits": zs["logits"], "candidate_label": candidate_labels(zs)}
        self._handles, self._pid = h, os.getpid()
        return h

    def read_counts(self) -> dict[str, dict[str, float]]:
        """What reading cost so far in this process, per side and per sample (chunks decoded, bytes they decode to,
        storage requests and bytes read): see :class:`~.chunks.SideCounts`. Empty before the first read."""
        return self._handles["cache"].per_sample() if self._handles is not None else {}

    # -- items ----------------------------------------------------------------------------------------------------

    def __getitems__(self, indices: Sequence[int]) -> list[Item]:
        idx = np.asarray(list(indices), np.int64)
        items = []
        for i in idx.tolist():
            item, image = self._item(i, need_image=self.online is not None)
            item.image_key = int(self._image_rows[i])
            item.teacher = {}
            if self.online is not None:
                item.teacher_pixels = self.online.preprocess(image)
                item.teacher_box = np.asarray(self.online.crop_box(*image.size), np.float32)
                item.teacher_text = self.teacher_texts[i]
            items.append(item)
        h = self._open()
        cache = h["cache"]
        kept = {"token_index": "image_token_index"} if self.kept_tokens else {}
        kept.update({"dense": "image_dense"} if self.read_dense else {})
        reads = {"image": (self._image_rows, {"tokens": "image_tokens", "pooled": "image_pooled",
                                              "crop_box": "crop_box", **kept}),
                 "text": (self._text_rows, {"tokens": "text_tokens", "pooled": "text_pooled",
                                            "char_span": "text_spans", "length": "text_length"})}
        for kind, (all_rows, names) in reads.items():
            if kind in h:
                cache.side(kind).samples += len(idx)
                rows = all_rows[idx]
                for array, name in names.items():
                    need = np.ones(len(rows), bool)
                    if name in ("image_tokens", "image_dense") and self.has_image_targets is not None:
                        need = np.asarray([not self.has_image_targets(int(r)) for r in rows], bool)
                    values = iter(cache.rows(h[kind][array], rows[need], side=kind))
                    for it, needed in zip(items, need.tolist(), strict=True):
                        it.teacher[name] = next(values) if needed else None
        if "text_view" in h:
            self._text_view(h, idx, items)
        if "zeroshot" in h:
            self._zeroshot(h, idx, items)
        return items

    def _text_view(self, h: dict[str, Any], idx: np.ndarray, items: list[Item]) -> None:
        view = self.text_view
        h["cache"].side("text").samples += len(idx)
        block = h["cache"].rows(h["text_view"], view.sample_rows[idx], side="text")
        values = view.unpack(block)
        names = {"tokens": "text_tokens", "pooled": "text_pooled", "char_span": "text_spans", "length": "text_length"}
        for j, it in enumerate(items):
            for array, name in names.items():
                it.teacher[name] = values[array][j]

    def _zeroshot(self, h: dict[str, Any], idx: np.ndarray, items: list[Item]) -> None:
        zs = h["zeroshot"]
        if zs["logits"].shape[0] == 0:
            for it in items:
                it.teacher.update(zs_logits=np.zeros(self.task.num_classes, np.float32), zs_mask=False)
            return
        rows = self._zs_rows[idx]
        ok = rows >= 0
        safe = np.where(ok, rows, 0)
        h["cache"].side("zeroshot").samples += len(idx)
        logits = h["cache"].rows(zs["logits"], safe, side="zeroshot").astype(np.float32)
        shared = zs["candidate_label"] if isinstance(zs["candidate_label"], tuple) else None
        labels = [shared] * len(items) if shared is not None else \
            h["cache"].rows(zs["candidate_label"], safe, side="zeroshot")
        for j, it in enumerate(items):
            z, good = self.task.sample_zeroshot_vector(self.samples[int(idx[j])], logits[j], labels[j])
            it.teacher.update(zs_logits=z, zs_mask=bool(ok[j] and good))


__all__ = ["DistillDataset", "OnlineTeacherInput", "SampleDataset", "StorePaths"]
