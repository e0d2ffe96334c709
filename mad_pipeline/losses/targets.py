"""MAD's targets: which teacher token each distilled student token is compared with.

Two steps, per modality (this project's own formulation, see docs/method.md):

1. **Alignment** (:mod:`.align`): teacher patches are interpolated at the student patch centres (both grids in
   original-image coordinates through the crop boxes); teacher text tokens are matched to student text tokens by
   character-span overlap.
2. **Adaptive token selection** (:mod:`.selection`): a policy ranks the aligned positions of each sample and the
   top-k are kept (``k`` a fraction or a count). Policies are a registry: a new one is one function.

:class:`TargetBuilder` does both for a batch, in one place, wherever the teacher's features come from: the data
pipeline calls it on store features (in DataLoader workers, with a per-image cache), the trainer on an online
teacher's features, tests on hand-made ones. Policies that rank by teacher data alone (``"side": "teacher"``) select
there; the others (``random``, drawn from the training step's generator, and ``student-gap``, which needs the
projected student tokens) keep every aligned position as a candidate and :class:`~.mad.MADLoss` selects in the step.
Policies that rank by the sample's text (``question-aware``) select per sample, still here: the per-image cache then
holds the image's aligned patches and their joint-space projections, and each sample ranks them against its own
text embedding. The result, :class:`DistillTargets`, is all the objective reads of the teacher.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .align import align_patches, align_text
from .selection import SELECTION_POLICIES, select_tokens

# ----------------------------------------------------------------------------------------------------------------------
# Targets


def _move(obj, device):
    def to(x):
        return x.to(device) if isinstance(x, (Tensor, TokenTargets)) else x

    return dataclasses.replace(obj, **{f.name: to(getattr(obj, f.name)) for f in dataclasses.fields(obj)})


@dataclass(frozen=True)
class TokenTargets:
    """The teacher targets of one modality at student positions.

    ``index (B, K)`` int64 student token positions (padding: 0), ``tokens (B, K, D)`` the aligned teacher tokens
    there (padding: 0), ``mask (B, K)`` bool (False = padding). ``policy`` and ``k`` record the selection (the
    objective refuses targets made for another one). For a step-side policy the K positions are every aligned
    candidate out of ``positions`` student positions, and the step selects among them.
    """

    index: Tensor
    tokens: Tensor
    mask: Tensor
    policy: str
    k: float | int
    positions: int = 0

    def to(self, device) -> TokenTargets:
        return _move(self, device)

    @property
    def nbytes(self) -> int:
        return self.index.nbytes + self.tokens.nbytes + self.mask.nbytes

    @property
    def selected(self) -> bool:
        """True when the selection is already applied (a teacher-side policy)."""
        return SELECTION_POLICIES[self.policy].side == "teacher"

    @classmethod
    def from_selection(cls, selected: Tensor, aligned: Tensor, policy: str, k: float | int) -> TokenTargets:
        """Compact a selection mask ``(B, N)`` over aligned teacher tokens ``(B, N, D)`` to the selected positions, in
        position order, padded to the largest per-sample count."""
        selected = selected.bool()
        kmax = max(1, int(selected.sum(1).max())) if selected.numel() else 1
        index = torch.sort(selected.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :kmax]
        mask = selected.gather(1, index)
        index = index * mask  # padding points at position 0
        tokens = aligned[torch.arange(index.shape[0], device=index.device)[:, None], index] * mask[..., None]
        return cls(index, tokens, mask, policy, k, selected.shape[1])

    def rows(self) -> list[TokenTargets]:
        """One ``TokenTargets`` per sample, without padding (for per-image caching)."""
        out = []
        for i in range(self.index.shape[0]):
            n = int(self.mask[i].sum())
            out.append(dataclasses.replace(self, index=self.index[i : i + 1, :n], tokens=self.tokens[i : i + 1, :n],
                                           mask=self.mask[i : i + 1, :n]))
        return out

    @classmethod
    def stack(cls, rows: Sequence[TokenTargets]) -> TokenTargets:
        """Pad per-sample targets (as from :meth:`rows`) to one batch."""
        if not rows:
            raise ValueError("TokenTargets.stack needs at least one row")
        first = rows[0]
        kmax = max(1, max(r.index.shape[1] for r in rows))
        b, d = len(rows), first.tokens.shape[-1]
        index = torch.zeros(b, kmax, dtype=torch.long)
        tokens = torch.zeros(b, kmax, d, dtype=first.tokens.dtype)
        mask = torch.zeros(b, kmax, dtype=torch.bool)
        for i, r in enumerate(rows):
            if (r.policy, r.k) != (first.policy, first.k):
                raise ValueError("TokenTargets.stack: rows made with different selections")
            n = r.index.shape[1]
            index[i, :n], tokens[i, :n], mask[i, :n] = r.index[0], r.tokens[0], r.mask[0]
        return cls(index, tokens, mask, first.policy, first.k, first.positions)


@dataclass(frozen=True)
class TeacherBatch:
    """A teacher's raw features for one batch (from the stores, or from an online teacher). Any part may be None.

    image_tokens (B, T, Dv), CLS first then the ``image_grid`` patches row-major; image_pooled (B, Ev);
    image_grid (Gh, Gw) (default: square from T - 1); crop_box (B, 4) original-image x0, y0, x1, y1;
    image_valid (B,) bool; text_tokens (B, Lt, Dt); text_pooled (B, Et); text_spans (B, Lt, 2) (-1 = none);
    text_length (B,) real tokens per row; text_ref (B, Dt) saliency reference for text (default: the last real token,
    i.e. CLIP's EOS, ``[SEP]`` or ``</s>``; else text_pooled if its width is Dt); zs_logits (B, K) over the student's
    classes; zs_mask (B,) bool.
    """

    image_tokens: Tensor | None = None
    image_pooled: Tensor | None = None
    image_grid: tuple[int, int] | None = None
    crop_box: Tensor | None = None
    image_valid: Tensor | None = None
    text_tokens: Tensor | None = None
    text_pooled: Tensor | None = None
    text_spans: Tensor | None = None
    text_length: Tensor | None = None
    text_ref: Tensor | None = None
    zs_logits: Tensor | None = None
    zs_mask: Tensor | None = None
    image_dense: Tensor | None = None  # (B, T, E) dense joint-space features, CLS first (a --dense image store)

    def to(self, device) -> TeacherBatch:
        return _move(self, device)


@dataclass(frozen=True)
class DistillTargets:
    """Everything the objective reads of the teacher for one batch: token targets per modality (None: no token term
    for it), pooled embeddings, and zero-shot logits over the student's classes (with ``zs_mask``)."""

    image: TokenTargets | None = None
    text: TokenTargets | None = None
    image_pooled: Tensor | None = None
    image_valid: Tensor | None = None
    text_pooled: Tensor | None = None
    zs_logits: Tensor | None = None
    zs_mask: Tensor | None = None

    def to(self, device) -> DistillTargets:
        return _move(self, device)


def aligned_patches(teacher_tokens: Tensor, grid: tuple[int, int] | None, crop_box: Tensor, student_centers: Tensor,
                    valid: Tensor | None = None, student_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Teacher patches (``teacher_tokens (B, 1 + Gh * Gw, D)``, CLS first; ``grid`` None = square) aligned to the
    student patch centres, with the mask of usable positions (inside the teacher's crop, valid image, real student
    patch)."""
    n = teacher_tokens.shape[1] - 1
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError("teacher image_grid is needed for a non-square patch grid")
        grid = (side, side)
    aligned, mask = align_patches(teacher_tokens[:, 1:].float(), grid, crop_box, student_centers)
    if student_mask is not None:
        mask = mask & student_mask.bool()
    if valid is not None:
        mask = mask & valid.bool()[:, None]
    return aligned, mask


def image_targets(policy: str, k: float | int, teacher_tokens: Tensor, grid: tuple[int, int] | None,
                  crop_box: Tensor, student_centers: Tensor, valid: Tensor | None = None,
                  student_mask: Tensor | None = None) -> TokenTargets:
    """Align teacher patches to the student patches and select with a teacher-side ``policy`` (a step-side policy
    keeps every aligned position as a candidate). Each sample's result depends on that sample only, bit for bit."""
    aligned, mask = aligned_patches(teacher_tokens, grid, crop_box, student_centers, valid, student_mask)
    if SELECTION_POLICIES[policy].side == "teacher":
        mask = select_tokens(policy, k, aligned, teacher_tokens[:, 0].float(), mask)
    return TokenTargets.from_selection(mask, aligned, policy, k)


@dataclass(frozen=True)
class PatchCandidates:
    """One image's teacher patches at the student positions, before a per-sample selection: ``tokens (Ns, D)`` (the
    store's dtype), ``mask (Ns,)`` the usable positions, ``joint (Ns, E)`` float32 the tokens in the teacher's joint
    image-text space (``tokens @ visual_proj``)."""

    tokens: Tensor
    mask: Tensor
    joint: Tensor

    @property
    def nbytes(self) -> int:
        return self.tokens.nbytes + self.mask.nbytes + self.joint.nbytes


def patch_candidates(teacher_tokens: Tensor, grid: tuple[int, int] | None, crop_box: Tensor, student_centers: Tensor,
                     joint_proj: Tensor | None, valid: Tensor | None = None, student_mask: Tensor | None = None,
                     dense: Tensor | None = None) -> list[PatchCandidates]:
    """Per image: the aligned patches and their joint-space features: ``dense (B, T, E)`` (the teacher's dense
    joint-space features, aligned like the patches) when given, else their projection by ``joint_proj (D, E)``
    (one product per image, so each image's result depends on that image only, bit for bit)."""
    aligned, mask = aligned_patches(teacher_tokens, grid, crop_box, student_centers, valid, student_mask)
    if dense is not None:
        joint = aligned_patches(dense, grid, crop_box, student_centers)[0]
        return [PatchCandidates(aligned[i].to(teacher_tokens.dtype), mask[i], joint[i])
                for i in range(aligned.shape[0])]
    proj = joint_proj.float()
    return [PatchCandidates(aligned[i].to(teacher_tokens.dtype), mask[i], aligned[i] @ proj)
            for i in range(aligned.shape[0])]


def per_sample_targets(policy: str, k: float | int, candidates: Sequence[PatchCandidates],
                       text_embedding: Tensor) -> TokenTargets:
    """Select among each sample's image candidates by its own text (``text_embedding (B, E)``, the teacher's pooled
    embedding of the sample's text) with a text policy, compacted like every teacher-side selection."""
    tokens = torch.stack([c.tokens for c in candidates])
    mask = torch.stack([c.mask for c in candidates])
    joint = torch.stack([c.joint for c in candidates])
    selected = select_tokens(policy, k, joint, text_embedding.float(), mask)
    return TokenTargets.from_selection(selected, tokens, policy, k)


def text_targets(policy: str, k: float | int, teacher_tokens: Tensor, teacher_spans: Tensor,
                 teacher_ref: Tensor | None, student_spans: Tensor) -> TokenTargets:
    """Align teacher text tokens to the student's by character-span overlap and select with a teacher-side
    ``policy`` (``teacher-saliency`` against ``teacher_ref``); a step-side policy keeps every aligned position."""
    assign, mask = align_text(teacher_spans, student_spans)
    aligned = assign @ teacher_tokens.float()
    rule = SELECTION_POLICIES[policy]
    if rule.side == "teacher":
        by = "teacher-saliency" if rule.text else policy  # a text's own tokens: ranked against its own EOS
        mask = select_tokens(by, k, aligned, teacher_ref if by == "teacher-saliency" else None, mask)
    return TokenTargets.from_selection(mask, aligned, policy, k)


def text_reference(tokens: Tensor, length: Tensor | None, pooled: Tensor | None, ref: Tensor | None = None) -> Tensor:
    """The saliency reference of teacher text: ``ref`` if given, else the last real token (CLIP's EOS, ``[SEP]``,
    ``</s>``; from ``length``), else the pooled embedding when it has the token width."""
    if ref is not None:
        return ref.float()
    if length is not None:
        last = (length.long() - 1).clamp(0, tokens.shape[1] - 1)
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), last].float()
    if pooled is not None and pooled.shape[-1] == tokens.shape[-1]:
        return pooled.float()
    raise ValueError("text saliency needs the teacher's text_ref or text_length (to find the EOS token)")


class TargetBuilder:
    """Builds a batch's :class:`DistillTargets` from a teacher's raw features and the student's positions (patch
    centres in original-image pixels, text character spans), as the objective ``config`` (a ``MADConfig``) asks.

    ``cache_mb`` > 0 keeps each image's targets (keyed by the caller's ``image_keys``, e.g. the image-store row) up
    to that many MB in this process: the questions of one image come close together under chunk-aware shuffling,
    and a cached image's targets equal recomputed ones bit for bit. With a policy that ranks by the sample's text
    (``question-aware``) the cache holds each image's :class:`PatchCandidates` and every sample selects by its own
    text embedding (the teacher's ``text_pooled``); ``joint_proj (D, E)`` is the image teacher's visual projection
    into the space of that embedding. Without it (or without text embeddings) such a policy ranks as
    ``teacher-saliency`` does (the caller says so once, see ``mad_pipeline.training.joint``) and its targets keep
    the policy's name. ``dense``: such a policy ranks by the teacher's dense joint-space features
    (``TeacherBatch.image_dense``, from a ``mad extract --dense`` store) instead of ``tokens @ joint_proj``.
    """

    def __init__(self, config, cache_mb: float = 0.0, joint_proj: Tensor | None = None, dense: bool = False):
        self.config = config
        self.cache_mb = cache_mb
        self.joint_proj = joint_proj
        self.dense = dense
        self._cache: OrderedDict[int, TokenTargets] = OrderedDict()
        self._cache_bytes = 0

    def __getstate__(self):  # a worker starts with an empty cache
        return {**self.__dict__, "_cache": OrderedDict(), "_cache_bytes": 0}

    def cached(self, key: int) -> bool:
        return key in self._cache

    def build(self, teacher: TeacherBatch, centers: Tensor | None, spans: Tensor | None,
              visual_mask: Tensor | None = None, image_keys: Sequence[int] | None = None) -> DistillTargets:
        cfg = self.config
        if not cfg.distill:
            return DistillTargets(zs_logits=teacher.zs_logits, zs_mask=teacher.zs_mask)
        image = text = None
        if cfg.tokens_v and teacher.image_tokens is not None:
            if centers is None or teacher.crop_box is None:
                raise ValueError("image token distillation needs student visual_centers and the teacher crop_box")
            image = self._image(teacher, centers, visual_mask, image_keys)
        if cfg.tokens_t and teacher.text_tokens is not None and spans is not None and teacher.text_spans is not None:
            text = self._text(teacher, spans)
        return DistillTargets(image=image, text=text, image_pooled=teacher.image_pooled,
                              image_valid=teacher.image_valid, text_pooled=teacher.text_pooled,
                              zs_logits=teacher.zs_logits, zs_mask=teacher.zs_mask)

    def _image(self, t: TeacherBatch, centers, visual_mask, keys) -> TokenTargets:
        cfg = self.config
        policy = cfg.select_v
        per_sample = SELECTION_POLICIES[policy].text
        dense = self.dense and t.image_dense is not None
        if per_sample and (t.text_pooled is None or (self.joint_proj is None and not dense)):
            policy, per_sample = "teacher-saliency", False  # no joint space: rank as teacher-saliency does

        def compute(rows: list[int] | None) -> TokenTargets | list[PatchCandidates]:
            sel = slice(None) if rows is None else torch.as_tensor(rows)
            valid = None if t.image_valid is None else t.image_valid[sel]
            vmask = None if visual_mask is None else visual_mask[sel]
            if per_sample:
                return patch_candidates(t.image_tokens[sel], t.image_grid, t.crop_box[sel], centers[sel],
                                        self.joint_proj, valid, vmask, t.image_dense[sel] if dense else None)
            return image_targets(policy, cfg.k_v, t.image_tokens[sel], t.image_grid, t.crop_box[sel], centers[sel],
                                 valid, vmask)

        def rows(todo: list[int]) -> list:
            if per_sample:
                return compute(todo)
            dtype = t.image_tokens.dtype if SELECTION_POLICIES[policy].side == "teacher" else torch.float32
            # selected targets: the store's dtype
            return [dataclasses.replace(row, tokens=row.tokens.to(dtype)) for row in compute(todo).rows()]

        cached = keys is not None and self.cache_mb > 0
        if per_sample:
            cands = self._through_cache(keys, rows) if cached else compute(None)
            return per_sample_targets(cfg.select_v, cfg.k_v, cands, t.text_pooled)
        out = TokenTargets.stack(self._through_cache(keys, rows)) if cached else compute(None)
        return out if out.policy == cfg.select_v else dataclasses.replace(out, policy=cfg.select_v)

    def _through_cache(self, keys: Sequence[int], rows) -> list:
        """Each key's cached entry, the missing ones made by ``rows(batch rows of their first occurrence)``."""
        cache, first = self._cache, {}
        for j, key in enumerate(keys):
            if key in cache:
                cache.move_to_end(key)  # this batch's keys are the most recent: never evicted below
            else:
                first.setdefault(key, j)
        if first:
            todo = sorted(first)
            for key, entry in zip(todo, rows([first[key] for key in todo]), strict=True):
                cache[key] = entry
                self._cache_bytes += entry.nbytes
            while self._cache_bytes > self.cache_mb * 2**20 and len(cache) > len(set(keys)):
                self._cache_bytes -= cache.popitem(last=False)[1].nbytes
        return [cache[key] for key in keys]

    def _text(self, t: TeacherBatch, spans: Tensor) -> TokenTargets:
        cfg = self.config
        tokens, tspans = t.text_tokens, t.text_spans
        if t.text_length is not None:
            upto = max(1, int(t.text_length.max()))  # past every row's length there is only padding
            tokens, tspans = tokens[:, :upto], tspans[:, :upto]
        ref = None
        if cfg.select_t == "teacher-saliency" or SELECTION_POLICIES[cfg.select_t].text:
            ref = text_reference(tokens, t.text_length, t.text_pooled, t.text_ref)
        out = text_targets(cfg.select_t, cfg.k_t, tokens, tspans, ref, spans)
        if not out.selected:  # candidates for the step's selection stay in float32
            return out
        return dataclasses.replace(out, tokens=out.tokens.to(tokens.dtype))


def build_targets(config, teacher: TeacherBatch, student) -> DistillTargets:
    """:class:`TargetBuilder` without a cache, at a :class:`~.mad.StudentBatch`'s positions."""
    return TargetBuilder(config).build(teacher, student.visual_centers, student.text_spans, student.visual_mask)


__all__ = ["DistillTargets", "PatchCandidates", "TargetBuilder", "TeacherBatch", "TokenTargets", "aligned_patches",
           "build_targets", "image_targets", "patch_candidates", "per_sample_targets", "text_reference",
           "text_targets"]
