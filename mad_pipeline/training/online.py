"""The online teacher: the teacher run inside the training loop on the batch's own images and texts.

It gives the same raw features the stores give (CLS + patch tokens after the final norm, pooled embeddings, crop
box; text tokens zeroed past their length, pooled, character spans); the trainer turns them into targets with the
same :func:`~mad_pipeline.losses.build_targets` as the data pipeline. Zero-shot logits still come from the batch
(the zero-shot store). Many times slower than the stores: it exists to check that they give the same objective.
"""

from __future__ import annotations

import numpy as np
import torch

from ..losses import TeacherBatch
from .batch import Batch


class OnlineTeacher:
    def __init__(self, image_teacher, text_teacher=None):
        self.image = image_teacher
        self.text = text_teacher

    @torch.no_grad()
    def __call__(self, batch: Batch) -> TeacherBatch:
        if batch.online is None:
            raise ValueError("online teacher mode needs a dataset built with an OnlineTeacherInput")
        device = batch.pixel_values.device
        parts = {}
        if batch.targets is not None:
            parts.update(zs_logits=batch.targets.zs_logits, zs_mask=batch.targets.zs_mask)
        tokens, pooled = self.image.encode_image_tokens(batch.online.pixels)
        parts.update(image_tokens=tokens.to(device), image_pooled=pooled.to(device), image_grid=tuple(self.image.grid),
                     crop_box=batch.online.boxes.to(device),
                     image_valid=torch.ones(len(batch), dtype=torch.bool, device=device))
        if self.text is not None:
            tb = self.text.tokenize(list(batch.online.texts))
            xt, xp = self.text.encode_text_tokens(tb)
            xt = xt.to(device) * tb.mask.to(device)[..., None]
            parts.update(text_tokens=xt, text_pooled=xp.to(device),
                         text_spans=torch.from_numpy(tb.spans.astype(np.int64)).to(device),
                         text_length=torch.from_numpy(tb.lengths.astype(np.int64)).to(device))
        return TeacherBatch(**parts)


__all__ = ["OnlineTeacher"]
