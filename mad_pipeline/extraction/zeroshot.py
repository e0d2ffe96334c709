"""The zero-shot store: the teacher's CLIP logits between each sample's image and each of its candidate texts.

Image embeddings come from the image store's ``pooled`` (no second image forward); candidate texts go through the
teacher's own text tower. logits = logit_scale * cos(image, text), as in CLIP.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..store.layout import HASH_DTYPE, ArraySpec
from ..store.reader import open_store


def zeroshot_arrays(max_candidates: int) -> list[ArraySpec]:
    k = max(max_candidates, 1)
    return [
        ArraySpec("sample_id", (), "str", ("sample",), fill=""),
        ArraySpec("image_hash", (), HASH_DTYPE, ("sample",), fill=""),
        ArraySpec("logits", (k,), "float32", ("sample", "candidate"), fill=float("nan")),
        ArraySpec("candidate_label", (k,), "str", ("sample", "candidate"), fill=""),
        ArraySpec("candidate_text", (k,), "str", ("sample", "candidate"), fill=""),
    ]


@torch.no_grad()
def fill_zeroshot(writer, teacher, image_store_path: str, sample_ids: list[str], image_hashes: list[str],
                  candidates, batch_size: int = 256, progress=None):
    """Compute and write every unfinished shard of a zero-shot store."""
    texts = sorted({t for c in candidates for t in c.texts})
    task = progress.add_task("zero-shot texts", total=len(texts), unit="text") if progress else None
    embs = []
    for i in range(0, len(texts), batch_size):
        batch = teacher.tokenize(texts[i : i + batch_size])
        _, pooled = teacher.encode_text_tokens(batch)
        embs.append(F.normalize(pooled.float(), dim=-1).cpu())
        if progress:
            progress.update(task, advance=len(batch.lengths))
    text_emb = torch.cat(embs) if embs else torch.zeros(0, 1)
    pos = {t: i for i, t in enumerate(texts)}
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
        labels = np.full((n, k), "", dtype=object)
        ctexts = np.full((n, k), "", dtype=object)
        for j, i in enumerate(range(lo, hi)):
            c = candidates[i]
            labels[j, : len(c.labels)] = c.labels
            ctexts[j, : len(c.texts)] = c.texts
            if rows[i] >= 0 and c.texts:
                sims = text_emb[[pos[t] for t in c.texts]] @ img_emb[rows[i]]
                logits[j, : len(c.texts)] = (scale * sims).numpy()
        writer.write_shard(shard, {"sample_id": np.asarray(sample_ids[lo:hi], dtype=object),
                                   "image_hash": np.asarray(image_hashes[lo:hi], dtype=object),
                                   "logits": logits, "candidate_label": labels, "candidate_text": ctexts})
    return None


def zeroshot_results(path: str) -> tuple[str, list[dict]]:
    """The teacher's zero-shot predictions from a zero-shot store, in its task's official results format."""
    from ..tasks import get_task

    st = open_store(path)
    task = str(st.manifest.get("task"))
    records = get_task(task).zeroshot_predictions(st["sample_id"][:], st["logits"][:].astype(np.float64),
                                                  st["candidate_label"][:])
    return task, records
