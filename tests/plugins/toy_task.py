"""A fourth benchmark defined entirely outside mad, loaded as a plugin (``MAD_PLUGINS=toy_task``).

"toy-colour": does the caption name the colour of the photo's dominant channel? Two classes (no / yes). Its files:
``<root>/<split>.jsonl`` with ``{"id", "image", "text", "label"}`` per line. The module registers a reader and a
task with the public registries and touches no library code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mad_pipeline.data import Dataset, Sample, register_reader
from mad_pipeline.tasks import Candidates, Task, ZeroShotSetup, register_task

NAME = "toy-colour"
LABELS = ("no", "yes")


@register_reader(NAME)
def read_toy(root: Path, split: str, on_error: str = "fail") -> Dataset:
    path = Path(root) / f"{split}.jsonl"
    samples = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        samples.append(Sample(id=str(rec["id"]), image=rec["image"], texts=(rec["text"],),
                              meta={"label": rec.get("label")}))
    return Dataset(name=NAME, root=Path(root), split=split, samples=samples, sources=[path])


@register_task
class ToyColourTask(Task):
    name = NAME
    dataset = NAME
    default_eval_split = "val"
    metric = "accuracy"
    metric_key = "accuracy"
    prediction_key = "id"

    @property
    def num_classes(self) -> int:
        return len(LABELS)

    def target(self, sample: Sample) -> int:
        label = sample.meta.get("label")
        return -1 if label is None else int(label)

    def zeroshot_setup(self, samples, data_root, **_) -> ZeroShotSetup:
        return ZeroShotSetup([Candidates(LABELS, (f"not {s.texts[0]}", s.texts[0])) for s in samples],
                             {"prompt": "caption / not caption"})

    def zeroshot_vector(self, logits, labels):
        z = np.asarray(logits[: len(LABELS)], np.float32)
        return z, bool(np.isfinite(z).all())

    def zeroshot_predictions(self, sample_ids, logits, labels) -> list[dict]:
        return [{"id": str(i), "label": int(np.nanargmax(row[: len(LABELS)]))} for i, row in zip(sample_ids, logits,
                                                                                                   strict=True)]

    def prediction(self, sample: Sample, choice: int) -> dict:
        return {"id": sample.id, "label": int(choice)}

    def score(self, samples, records) -> dict | None:
        gold = {s.id: int(s.meta["label"]) for s in samples if s.meta.get("label") is not None}
        if not gold:
            return None
        hits = sum(int(r["label"]) == gold[r["id"]] for r in records if r["id"] in gold)
        return {"n": len(gold), "accuracy": 100.0 * hits / len(gold)}
