"""The zero-shot store: the teacher's CLIP logits between each sample's image and each of its candidate texts.

Image embeddings come from the image store's ``pooled`` (no second image forward); candidate texts go through the
teacher's own text tower. logits = logit_scale * cos(image, text), as in CLIP. The layout (rows by image, ``logits``
in ~1 MB chunks, candidates every row shares stored once) is :mod:`mad_pipeline.store.zeroshot`'s.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..store.reader import open_store
from ..store.zeroshot import PER_ROW, zeroshot_arrays, zeroshot_blocks
from .batch_shape import encode_texts

__all__ = ["fill_zeroshot", "zeroshot_arrays", "zeroshot_results"]


def _text_embeddings(teacher, texts: list[str], batch_size: int, progress) -> torch.Tensor:
    task = progress.add_task("zero-shot texts", total=len(texts), unit="text") if progress else None
    embs = []
    for i in range(0, len(texts), batch_size):
        _, _, pooled = encode_texts(teacher, texts[i : i + batch_size], batch_size)  # a fixed shape, the last padded
        embs.append(F.normalize(pooled.float(), dim=-1).cpu())
        if progress:
            progress.update(task, advance=len(pooled))
    return torch.cat(embs) if embs else torch.zeros(0, 1)


@torch.no_grad()
def fill_zeroshot(writer, teacher, image_store_path: str, sample_ids: list[str], image_hashes: list[str],
                  candidates, batch_size: int = 256, progress=None):
    """Compute and write every unfinished shard of a zero-shot store (rows in the order given). A column the writer
    has no per-row array for (``candidate_label`` / ``candidate_text``) is shared by every row and was written once
    (:func:`mad_pipeline.store.zeroshot.write_shared`); shared texts are embedded once, and their embeddings gathered
    once, not per row."""
    per_row = {c: PER_ROW[c] in writer.specs for c in ("label", "text")}
    if per_row["text"]:
        texts = sorted({t for c in candidates for t in c.texts})
    else:
        texts = sorted(set(candidates[0].texts)) if candidates else []
    text_emb = _text_embeddings(teacher, texts, batch_size, progress)
    pos = {t: i for i, t in enumerate(texts)}
    shared = None if per_row["text"] or not candidates else text_emb[[pos[t] for t in candidates[0].texts]]
    store = open_store(image_store_path)
    rows = store.rows_for(image_hashes)
    pooled = torch.from_numpy(store["pooled"][:].astype(np.float32))
    img_emb = F.normalize(pooled, dim=-1)
    scale = teacher.logit_scale()
    k = writer.specs["logits"].row_shape[0]
    for shard in sorted(set(range(writer.n_shards)) - writer.done_shards()):
        lo, hi = writer.shard_range(shard)
        n = hi - lo
        logits = np.full((n, k), np.nan, np.float32)
        data = {"sample_id": np.asarray(sample_ids[lo:hi], dtype=object),
                "image_hash": np.asarray(image_hashes[lo:hi], dtype=object), "logits": logits}
        for col, name in PER_ROW.items():
            if per_row[col]:
                data[name] = np.full((n, k), "", dtype=object)
        for j, i in enumerate(range(lo, hi)):
            c = candidates[i]
            if per_row["label"]:
                data[PER_ROW["label"]][j, : len(c.labels)] = c.labels
            if per_row["text"]:
                data[PER_ROW["text"]][j, : len(c.texts)] = c.texts
            if rows[i] >= 0 and c.texts:
                mat = shared if shared is not None else text_emb[[pos[t] for t in c.texts]]
                logits[j, : len(c.texts)] = (scale * (mat @ img_emb[rows[i]])).numpy()
        writer.write_shard(shard, data)
    return None


def zeroshot_results(path: str) -> tuple[str, list[dict]]:
    """The teacher's zero-shot predictions from a zero-shot store, in its task's official results format (read a
    block of rows at a time)."""
    from ..tasks import get_task

    st = open_store(path)
    task = str(st.manifest.get("task"))
    t = get_task(task)
    records: list[dict] = []
    for ids, logits, labels in zeroshot_blocks(st):
        records += t.zeroshot_predictions(ids, logits, labels)
    return task, records
