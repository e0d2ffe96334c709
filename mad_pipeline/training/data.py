"""The store-fed training dataset: per sample, the student's inputs, the task target and the teacher's features.

Teacher features are looked up by content hash in the stage-1 stores (SPEC section 3): the image store row of the
sample's image (CLS + patch tokens, pooled embedding, crop box), the text store row of its text (tokens, pooled
embedding, character spans, length) and the zero-shot store row of the sample (logits over its candidates). Nothing
here runs a teacher; with ``online=True`` the dataset instead hands out what an online teacher needs (its pixels,
its crop box and the text) and only the zero-shot logits come from a store.

Which text is distilled: VQA the question, SNLI-VE the hypothesis. VCR: the student scores the C texts
``"{question} {answer_c}"``; the teacher text is the right answer's pair text when the text store holds it, else the
question, whose characters are the prefix of every pair text -- so character-span alignment stays exact and the
answer's tokens simply have no teacher counterpart.

Zero-shot logits as the objective wants them (``TeacherBatch.zs_logits``): VQA in *answer-vocabulary space* (each
candidate's logit at its vocabulary index, :data:`ZS_FILL` elsewhere, so confidence is the expectation of the
teacher's answer distribution under the soft scores and logit KD lines up with the student's classes); SNLI-VE the
3-way logits of a 1-D calibration of the single image-hypothesis similarity (fitted on the training split); VCR the
logits of the Q->A candidates.

Reading: zarr is opened lazily in whichever process reads (each DataLoader worker opens its own handles; nothing
opened is ever pickled), and ``__getitems__`` reads a whole batch through a :class:`ChunkCache`, so each chunk is
decompressed once per batch (and, with :class:`ChunkShuffleSampler` over :meth:`DistillDataset.image_rows`, about
once per epoch).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.base import Sample
from ..data.images import ImageDecodeError, load_image
from ..data.vcr import NUM_CHOICES
from ..errors import InputError, StoreError
from ..hashing import sha256_text
from ..losses import (
    PRECOMPUTABLE_POLICIES,
    Calibration,
    MADConfig,
    TeacherBatch,
    TokenTargets,
    image_targets,
    text_reference,
    text_targets,
)
from ..students.base import TextInput, patch_centers
from ..tasks.snli_ve import NUM_LABELS, label_index
from ..tasks.vqa import AnswerVocab, soft_scores
from .chunks import ChunkCache

ZS_FILL = -1.0e4  # zero-shot logit of a vocabulary answer that was not a candidate: probability exactly 0
DEFAULT_EVAL_SPLITS = {"vqa": "val", "snli-ve": "dev", "vcr": "val"}


@dataclass(frozen=True)
class StorePaths:
    """Published stage-1 stores (paths or URLs). Any may be None."""

    image: str | None = None
    text: str | None = None
    index: str | None = None
    zeroshot: str | None = None


@dataclass(frozen=True)
class TargetPlan:
    """The teacher-side work of the MAD objective that the data pipeline does ahead of the training step.

    With ``teacher-saliency`` or ``all`` selection, aligning the teacher's tokens to the student's and picking the
    top-k needs no gradient and depends only on the teacher's features and the student's fixed patch grid /
    tokenisation. So the dataset computes the image targets once per image (and caches them per image row, up to
    ``cache_mb`` per process: the questions of one image come close together under chunk-aware shuffling) and the
    collate function the text targets per batch, in the DataLoader workers when there are any. The step then reads
    K selected teacher tokens per sample instead of the whole token grid. ``student_grid`` None: no image targets;
    ``select_t`` None: no text targets (the objective then works from the raw tokens as before).
    """

    student_grid: tuple[int, int] | None = None
    select_v: str | None = None
    k_v: float | int = 0.5
    select_t: str | None = None
    k_t: float | int = 0.5
    cache_mb: float = 256.0

    @classmethod
    def for_objective(cls, cfg: MADConfig, student_grid: tuple[int, int] | None) -> TargetPlan | None:
        """The plan for ``cfg`` with a student of patch grid ``student_grid``; None when nothing can be done ahead
        (distillation off, token terms off, or ``random`` / ``student-gap`` selection, which the step must do)."""
        if not cfg.distill:
            return None
        image = cfg.tokens_v and cfg.select_v in PRECOMPUTABLE_POLICIES and student_grid is not None
        text = cfg.tokens_t and cfg.select_t in PRECOMPUTABLE_POLICIES
        if not (image or text):
            return None
        return cls(student_grid=tuple(student_grid) if image else None, select_v=cfg.select_v if image else None,
                   k_v=cfg.k_v, select_t=cfg.select_t if text else None, k_t=cfg.k_t)


# ----------------------------------------------------------------------------------------------------------------------
# Targets and texts per task


def target_of(task: str, sample: Sample, vocab: AnswerVocab | None = None):
    """The training target: VQA soft scores ``(V,)`` float32 (zeros when unannotated), SNLI-VE the label index, VCR
    the right answer's index (-1 when unknown)."""
    if task == "vqa":
        out = np.zeros(len(vocab), np.float32)
        for i, score in soft_scores(sample.meta.get("answers", ()), vocab).items():
            out[i] = score
        return out
    if task == "snli-ve":
        label = sample.meta.get("gold_label")
        return -1 if label is None else label_index(label)
    label = sample.meta.get("answer_label")
    return -1 if label is None else int(label)


def student_texts(task: str, sample: Sample) -> list[str]:
    """What the student reads: one text (VQA question, SNLI-VE hypothesis) or VCR's C question+answer pairs."""
    if task == "vcr":
        q = sample.meta["question"]
        return [f"{q} {a}" for a in sample.meta["answer_choices"]]
    return [sample.texts[0]]


def rationale_texts(sample: Sample, answer: int) -> list[str]:
    """VCR QA->R texts conditioned on ``answer`` (the official protocol conditions on the right answer)."""
    q = sample.meta["question"]
    a = sample.meta["answer_choices"][answer]
    return [f"{q} {a} {r}" for r in sample.meta["rationale_choices"]]


def teacher_text_candidates(task: str, sample: Sample) -> list[str]:
    """Teacher texts in order of preference; the first one the text store holds is used (see module docstring)."""
    if task == "vcr":
        y = sample.meta.get("answer_label")
        first = [student_texts(task, sample)[y]] if y is not None else []
        return [*first, sample.meta["question"]]
    return [sample.texts[0]]


# ----------------------------------------------------------------------------------------------------------------------
# The dataset


class DistillDataset(Dataset):
    """Samples of one split with their targets and (``features=True``) teacher features.

    Args:
        samples: the split's samples (already subsampled); samples the index store lacks (skipped at extraction) and
            samples whose image the image store marks invalid are dropped (see ``dropped``).
        root: the data root the samples' image paths are relative to.
        task: ``vqa``, ``snli-ve`` or ``vcr``.
        preprocess: the student's ``preprocess_image`` (picklable; runs in workers).
        stores: the stage-1 stores; needed for teacher features.
        vocab: VQA answer vocabulary. calibration: SNLI-VE similarity -> 3-way logits.
        features: False for evaluation (student inputs and targets only; no store is read).
        online: True for the online-teacher mode: no image/text store reads; items carry the teacher's pixels
            (``teacher_preprocess``) and crop box (``teacher_crop_box(width, height)``) and the teacher text.
    """

    def __init__(self, samples: Sequence[Sample], root: str | Path, task: str, preprocess: Callable, *,
                 stores: StorePaths | None = None, vocab: AnswerVocab | None = None,
                 calibration: Calibration | None = None, features: bool = True, online: bool = False,
                 teacher_preprocess: Callable | None = None, teacher_crop_box: Callable | None = None,
                 cache_chunks: int = 32, plan: TargetPlan | None = None):
        if task == "vqa" and vocab is None:
            raise ValueError("VQA needs the answer vocabulary")
        self.root = Path(root)
        self.task = task
        self.preprocess = preprocess
        self.stores = stores or StorePaths()
        self.vocab = vocab
        self.calibration = calibration
        self.features = features
        self.online = online and features
        self.teacher_preprocess = teacher_preprocess
        self.teacher_crop_box = teacher_crop_box
        self.cache_chunks = cache_chunks
        self.plan = plan if (plan is not None and plan.student_grid is not None and features and not online) else None
        if self.online and (teacher_preprocess is None or teacher_crop_box is None):
            raise ValueError("online mode needs the teacher's preprocess and crop_box")
        self.dropped: list[dict[str, str]] = []
        samples = list(samples)
        n = len(samples)
        self._image_rows = np.full(n, -1, np.int64)
        self._text_rows = np.full(n, -1, np.int64)
        self._zs_rows = np.full(n, -1, np.int64)
        self.teacher_texts = [teacher_text_candidates(task, s)[-1] for s in samples]
        self.image_chunk_rows = 1
        self.grid: tuple[int, int] | None = None
        if features:
            samples = self._index(samples)
        self.samples = samples
        self._handles: dict[str, Any] | None = None
        self._pid: int | None = None
        self._targets: OrderedDict[int, TokenTargets] = OrderedDict()  # image row -> its image targets (LRU)
        self._targets_bytes = 0

    # -- lookups, in the constructing process (handles are dropped afterwards) -------------------------------------

    def _index(self, samples: list[Sample]) -> list[Sample]:
        from ..store.reader import open_store

        st = self.stores
        keep = np.ones(len(samples), bool)
        if st.index is not None:
            idx = open_store(st.index)
            ids = np.asarray(idx["sample_id"][:], dtype=object).astype(str)
            hashes = np.asarray(idx["image_hash"][:], dtype=object).astype(str)
            by_id = dict(zip(ids.tolist(), hashes.tolist(), strict=True))
        else:
            by_id = None
        if st.image is not None and not self.online:
            image = open_store(st.image)
            if by_id is None:
                raise StoreError("teacher image features need the dataset index store (image hash per sample)")
            img_hashes = [by_id.get(s.id, "") for s in samples]
            self._image_rows = image.rows_for(img_hashes)
            valid = np.asarray(image["valid"][:], bool)
            self.image_chunk_rows = int(image["tokens"].chunks[0])
            self.grid = tuple(image.manifest.get("geometry", {}).get("grid") or ()) or None
            for i, s in enumerate(samples):
                r = self._image_rows[i]
                if s.id not in by_id or r < 0:
                    keep[i] = False
                    self.dropped.append({"sample_id": s.id, "reason": "not in the stage-1 stores (skipped there)"})
                elif not valid[r]:
                    keep[i] = False
                    self.dropped.append({"sample_id": s.id, "reason": "image could not be decoded at extraction"})
        elif by_id is not None:
            for i, s in enumerate(samples):
                if s.id not in by_id:
                    keep[i] = False
                    self.dropped.append({"sample_id": s.id, "reason": "not in the stage-1 index (skipped there)"})
        if st.text is not None:
            text = open_store(st.text)
            cands = [teacher_text_candidates(self.task, s) for s in samples]
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
            if missing and not self.online:
                raise StoreError(f"{st.text}: no text features for sample {missing[0]} ({len(missing)} samples); "
                                 "was it extracted from another dataset?")
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

    def image_rows(self) -> np.ndarray:
        """Image store row of each sample (-1 = none): what :class:`ChunkShuffleSampler` groups by."""
        return self._image_rows.copy()

    # -- lazy per-process handles -------------------------------------------------------------------------------------

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = None  # never ship open zarr handles (or their caches) to another process
        state["_pid"] = None
        state["_targets"], state["_targets_bytes"] = OrderedDict(), 0
        return state

    def _open(self) -> dict[str, Any]:
        if self._handles is not None and self._pid == os.getpid():
            return self._handles
        from ..store.reader import open_store

        # Array handles are opened once per process and kept (ChunkCache keeps one LRU of decoded chunks per array).
        h: dict[str, Any] = {"cache": ChunkCache(self.cache_chunks)}
        st = self.stores

        def arrays(path: str, names: tuple[str, ...]) -> dict[str, Any]:
            store = open_store(path)
            return {n: store[n] for n in names}

        if self.features and not self.online:
            if st.image is not None:
                h["image"] = arrays(st.image, ("tokens", "pooled", "crop_box"))
            if st.text is not None:
                h["text"] = arrays(st.text, ("tokens", "pooled", "char_span", "length"))
        if self.features and st.zeroshot is not None:
            h["zeroshot"] = arrays(st.zeroshot, ("logits", "candidate_label"))
        self._handles, self._pid = h, os.getpid()
        return h

    # -- items ----------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        idx = np.asarray(list(indices), np.int64)
        items = [self._student_item(int(i)) for i in idx]
        if not self.features:
            return items
        h = self._open()
        cache = h["cache"]
        if "image" in h:
            rows = self._image_rows[idx]
            img = h["image"]
            pooled = cache.rows(img["pooled"], rows)
            if self.plan is not None:
                targets = self._image_targets(h, rows, items)
                for j, it in enumerate(items):
                    it.update(t_targets=targets[j], t_pooled=pooled[j])
            else:
                tok = cache.rows(img["tokens"], rows)
                box = cache.rows(img["crop_box"], rows)
                for j, it in enumerate(items):
                    it.update(t_tokens=tok[j], t_pooled=pooled[j], t_box=box[j].astype(np.float32))
        if "text" in h:
            rows = self._text_rows[idx]
            txt = h["text"]
            tok = cache.rows(txt["tokens"], rows)
            pooled = cache.rows(txt["pooled"], rows)
            spans = cache.rows(txt["char_span"], rows)
            length = cache.rows(txt["length"], rows)
            for j, it in enumerate(items):
                it.update(x_tokens=tok[j], x_pooled=pooled[j], x_spans=spans[j].astype(np.int64),
                          x_length=int(length[j]))
        if "zeroshot" in h:
            self._zeroshot(h, idx, items)
        return items

    def _image_targets(self, h: dict[str, Any], rows: np.ndarray, items: list[dict[str, Any]]) -> list[TokenTargets]:
        """Each sample's image targets (:class:`TargetPlan`): from the per-process cache, else computed from the
        store's tokens for the rows not cached (each row's result depends on that row only, so a cached row equals a
        recomputed one bit for bit)."""
        plan, cache = self.plan, self._targets
        first: dict[int, int] = {}
        for j, r in enumerate(rows.tolist()):
            if r in cache:
                cache.move_to_end(r)  # this batch's rows are the most recent: never evicted below
            else:
                first.setdefault(r, j)
        if first:
            todo = np.asarray(sorted(first), np.int64)
            img = h["image"]
            tok = h["cache"].rows(img["tokens"], todo)
            box = h["cache"].rows(img["crop_box"], todo).astype(np.float32)
            student_box = torch.from_numpy(np.stack([items[first[r]]["box"] for r in todo.tolist()]))
            centers = patch_centers(student_box, plan.student_grid)
            out = image_targets(plan.select_v, plan.k_v, torch.from_numpy(tok), self.grid, torch.from_numpy(box),
                                centers)
            dtype = torch.float16 if tok.dtype == np.float16 else torch.float32
            budget = plan.cache_mb * 2**20
            for r, t in zip(todo.tolist(), out.rows(), strict=True):
                t = replace(t, tokens=t.tokens.to(dtype))
                cache[r] = t
                self._targets_bytes += t.nbytes
            keep = len(set(rows.tolist()))
            while self._targets_bytes > budget and len(cache) > keep:
                self._targets_bytes -= cache.popitem(last=False)[1].nbytes
        return [cache[r] for r in rows.tolist()]

    def _student_item(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        path = self.root / s.image
        try:
            image = load_image(path)
        except ImageDecodeError as e:
            raise InputError(f"{path}: {e} (sample {s.id})") from None
        pixels, box = self.preprocess(image)
        target = target_of(self.task, s, self.vocab)
        item: dict[str, Any] = {"index": i, "pixels": pixels, "box": np.asarray(box, np.float32),
                                "texts": student_texts(self.task, s), "target": target,
                                "teacher_text": self.teacher_texts[i]}
        if self.task == "vcr":
            item["pair"] = max(int(target), 0)
        if self.online:
            item["t_pixels"] = self.teacher_preprocess(image)
            item["t_box"] = np.asarray(self.teacher_crop_box(*image.size), np.float32)
        return item

    def _zeroshot(self, h: dict[str, Any], idx: np.ndarray, items: list[dict[str, Any]]) -> None:
        zs = h["zeroshot"]
        rows = self._zs_rows[idx]
        ok = rows >= 0
        if zs["logits"].shape[0] == 0:
            size = {"vqa": len(self.vocab) if self.vocab else 0, "snli-ve": NUM_LABELS}.get(self.task, NUM_CHOICES)
            for it in items:
                it["zs"], it["zs_ok"] = np.zeros(size, np.float32), False
            return
        safe = np.where(ok, rows, 0)
        logits = h["cache"].rows(zs["logits"], safe).astype(np.float32)
        labels = h["cache"].rows(zs["candidate_label"], safe) if self.task != "snli-ve" else None
        for j, it in enumerate(items):
            z, good = self._zs_vector(logits[j], None if labels is None else labels[j])
            it["zs"], it["zs_ok"] = z, bool(ok[j] and good)

    def _zs_vector(self, logits: np.ndarray, labels) -> tuple[np.ndarray, bool]:
        if self.task == "vqa":
            out = np.full(len(self.vocab), ZS_FILL, np.float32)
            cols, where = self._vqa_map(tuple(str(x) for x in labels))
            vals = logits[where]
            fin = np.isfinite(vals)
            out[cols[fin]] = vals[fin]
            return out, bool(fin.any())
        if self.task == "snli-ve":
            if self.calibration is None or not np.isfinite(logits[0]):
                return np.zeros(NUM_LABELS, np.float32), False
            z = self.calibration.logits(torch.tensor([float(logits[0])]))[0].numpy().astype(np.float32)
            return z, True
        a = [k for k, lab in enumerate(labels) if str(lab).startswith("a")]
        z = logits[a].astype(np.float32)
        return z, bool(len(a) and np.isfinite(z).all())

    def _vqa_map(self, labels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Candidate positions whose label is a vocabulary answer, and their vocabulary indices (memoised per label
        set: a template prompt gives one set for every sample, the shapes world a handful)."""
        memo = self.__dict__.setdefault("_vqa_maps", {})
        hit = memo.get(labels)
        if hit is None:
            pairs = [(self.vocab.index(lab), k) for k, lab in enumerate(labels) if lab]
            pairs = [(c, k) for c, k in pairs if c is not None]
            # one logit per vocabulary answer: the first candidate that normalises to it
            seen: dict[int, int] = {}
            for c, k in pairs:
                seen.setdefault(c, k)
            cols = np.asarray(list(seen), np.int64)
            where = np.asarray(list(seen.values()), np.int64)
            hit = memo[labels] = (cols, where)
        return hit


# ----------------------------------------------------------------------------------------------------------------------
# Batches


@dataclass
class Batch:
    """One collated batch. ``text`` is ``(B, L)``, or ``(B, C, L)`` for VCR; ``pair`` (VCR) says which choice's text
    the teacher text features describe; ``teacher`` holds store features (None for evaluation); the ``teacher_*``
    inputs are filled in online-teacher mode."""

    indices: torch.Tensor
    pixel_values: torch.Tensor
    crop_boxes: torch.Tensor
    text: TextInput
    target: torch.Tensor
    texts: list[list[str]]
    teacher_texts: list[str]
    pair: torch.Tensor | None = None
    teacher: TeacherBatch | None = None
    teacher_pixels: torch.Tensor | None = None
    teacher_crop_box: torch.Tensor | None = None

    def to(self, device, non_blocking: bool = False) -> Batch:
        def mv(x):
            if isinstance(x, torch.Tensor):
                return x.to(device, non_blocking=non_blocking)
            if isinstance(x, (TextInput, TeacherBatch)):
                return x.to(device)
            return x

        return replace(self, **{f.name: mv(getattr(self, f.name)) for f in fields(self)})

    def pin_memory(self) -> Batch:
        def pin(x):
            if isinstance(x, torch.Tensor):
                return x.pin_memory()
            if isinstance(x, (TextInput, TeacherBatch, TokenTargets)):
                return replace(x, **{f.name: pin(getattr(x, f.name)) for f in fields(x)})
            return x

        return replace(self, **{f.name: pin(getattr(self, f.name)) for f in fields(self)})

    def __len__(self) -> int:
        return int(self.indices.shape[0])


class StudentTokenizer:
    """A picklable stand-in for ``student.tokenize`` that does not carry the model to DataLoader workers: the
    student class's ``tokenize`` called on a namespace with only ``tokenizer`` and ``max_text_length`` (what the
    ViLT student's tokenize reads). Students whose ``tokenize`` needs more fall back to the bound method."""

    def __init__(self, student):
        if hasattr(student, "tokenizer") and hasattr(student, "max_text_length"):
            self.fn = type(student).tokenize
            self.ns = SimpleNamespace(tokenizer=student.tokenizer, max_text_length=student.max_text_length)
        else:
            self.fn, self.ns = None, student

    def __call__(self, texts: list[str]) -> TextInput:
        return self.fn(self.ns, texts) if self.fn is not None else self.ns.tokenize(texts)


class Collate:
    """Stacks items into a :class:`Batch`; tokenises the student texts (in the worker) and builds the
    :class:`TeacherBatch` from store features. ``grid``: the teacher's patch grid (image store manifest)."""

    def __init__(self, task: str, tokenize: Callable[[list[str]], TextInput], grid: tuple[int, int] | None = None,
                 plan: TargetPlan | None = None):
        self.task = task
        self.tokenize = tokenize
        self.grid = tuple(grid) if grid else None
        self.plan = plan

    def __call__(self, items: list[dict[str, Any]]) -> Batch:
        b = len(items)
        texts = [it["texts"] for it in items]
        flat = [t for ts in texts for t in ts]
        text = self.tokenize(flat)
        if self.task == "vcr":
            c = len(texts[0])
            if any(len(ts) != c for ts in texts):
                raise InputError("VCR samples in one batch have different numbers of answer choices")
            text = TextInput(*(x.reshape(b, c, *x.shape[1:]) for x in (text.input_ids, text.attention_mask,
                                                                         text.char_spans)))
        if self.task == "vqa":
            target = torch.from_numpy(np.stack([it["target"] for it in items]))
        else:
            target = torch.tensor([int(it["target"]) for it in items], dtype=torch.long)
        batch = Batch(
            indices=torch.tensor([it["index"] for it in items], dtype=torch.long),
            pixel_values=torch.stack([it["pixels"] for it in items]),
            crop_boxes=torch.from_numpy(np.stack([it["box"] for it in items])),
            text=text, target=target, texts=texts, teacher_texts=[it["teacher_text"] for it in items],
            pair=torch.tensor([it["pair"] for it in items], dtype=torch.long) if self.task == "vcr" else None,
        )
        first = items[0]
        if "t_pixels" in first:
            batch.teacher_pixels = torch.stack([it["t_pixels"] for it in items])
            batch.teacher_crop_box = torch.from_numpy(np.stack([it["t_box"] for it in items]))
        parts: dict[str, Any] = {}
        if "t_tokens" in first:
            parts.update(image_tokens=_stack(items, "t_tokens"), image_pooled=_stack(items, "t_pooled"),
                         crop_box=_stack(items, "t_box"), image_valid=torch.ones(b, dtype=torch.bool),
                         image_grid=self.grid)
        elif "t_targets" in first:  # aligned and selected by the dataset (TargetPlan); no raw tokens carried
            parts.update(image_targets=TokenTargets.stack([it["t_targets"] for it in items]),
                         image_pooled=_stack(items, "t_pooled"), image_valid=torch.ones(b, dtype=torch.bool),
                         image_grid=self.grid)
        if "x_tokens" in first:
            length = torch.tensor([it["x_length"] for it in items], dtype=torch.long)
            tokens, spans = _stack(items, "x_tokens"), _stack(items, "x_spans")
            parts.update(text_pooled=_stack(items, "x_pooled"), text_length=length)
            plan = self.plan
            if plan is not None and plan.select_t is not None:
                upto = max(1, int(length.max()))  # past every row's length there is only padding
                tokens, spans = tokens[:, :upto], spans[:, :upto]
                student_spans = text.char_spans
                if self.task == "vcr":
                    student_spans = student_spans[torch.arange(b), batch.pair]
                ref = None
                if plan.select_t == "teacher-saliency":
                    ref = text_reference(tokens, length, parts["text_pooled"])
                targets = text_targets(plan.select_t, plan.k_t, tokens, spans, ref, student_spans)
                parts.update(text_targets=replace(targets, tokens=targets.tokens.to(tokens.dtype)))
            else:
                parts.update(text_tokens=tokens, text_spans=spans)
        if "zs" in first:
            parts.update(zs_logits=_stack(items, "zs"),
                         zs_mask=torch.tensor([it["zs_ok"] for it in items], dtype=torch.bool))
        if parts:
            batch.teacher = TeacherBatch(**parts)
        return batch


def _stack(items: list[dict[str, Any]], key: str) -> torch.Tensor:
    return torch.from_numpy(np.stack([it[key] for it in items]))


# ----------------------------------------------------------------------------------------------------------------------
# Small helpers used by the stage


def fit_snli_calibration(zeroshot_store: str, samples: Sequence[Sample]) -> Calibration:
    """SNLI-VE: fit the 1-D calibration (similarity -> 3 labels) on the training split's zero-shot store."""
    from ..losses import fit_calibration
    from ..store.reader import open_store

    zs = open_store(zeroshot_store)
    ids = np.asarray(zs["sample_id"][:], dtype=object).astype(str)
    logits = np.asarray(zs["logits"][:, 0], np.float64)
    gold = {s.id: s.meta.get("gold_label") for s in samples}
    sims, labels = [], []
    for sid, z in zip(ids.tolist(), logits.tolist(), strict=True):
        if gold.get(sid) is not None and np.isfinite(z):
            sims.append(z)
            labels.append(label_index(gold[sid]))
    if len(sims) < 2:
        raise InputError(f"{zeroshot_store}: too few labelled zero-shot scores to calibrate SNLI-VE confidence")
    return fit_calibration(torch.tensor(sims), torch.tensor(labels), num_classes=NUM_LABELS)


def store_widths(stores: StorePaths) -> dict[str, int | None]:
    """Teacher widths for the MAD projections, from the store manifests."""
    from ..store.reader import open_store

    out: dict[str, int | None] = {"image": None, "image_pooled": None, "text": None, "text_pooled": None}
    if stores.image is not None:
        g = open_store(stores.image).manifest.get("geometry", {})
        out["image"], out["image_pooled"] = int(g["width"]), int(g["embed_dim"])
    if stores.text is not None:
        g = open_store(stores.text).manifest.get("geometry", {})
        out["text"], out["text_pooled"] = int(g["width"]), int(g["embed_dim"])
    return out


def dump_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (tmp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


__all__ = ["DEFAULT_EVAL_SPLITS", "ZS_FILL", "Batch", "Collate", "DistillDataset", "StorePaths", "StudentTokenizer",
           "TargetPlan",
           "dump_json", "fit_snli_calibration", "rationale_texts", "store_widths", "student_texts", "target_of",
           "teacher_text_candidates"]
