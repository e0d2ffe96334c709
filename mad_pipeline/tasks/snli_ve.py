"""SNLI-VE as a task: three labels; the teacher scores the hypothesis against the image premise.

The teacher gives one image-hypothesis similarity per sample. Turning that 1-D score into the three-way label
(entailment / neutral / contradiction) needs a calibration, a 1-D multinomial logistic regression fitted on the
training split's zero-shot store (:meth:`SnliVeTask.fit_confidence`); its logits serve as the teacher's zero-shot
logits for confidence weighting, and its argmax as the teacher's zero-shot prediction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..data.base import Sample
from ..data.snli_ve import LABELS
from ..errors import InputError
from .base import Candidates, Task, ZeroShotSetup
from .metrics import snli_ve_evaluate
from .registry import register_task

NUM_LABELS = len(LABELS)


def label_index(label: str) -> int:
    """``"entailment"`` -> 0, ``"neutral"`` -> 1, ``"contradiction"`` -> 2."""
    try:
        return LABELS.index(label)
    except ValueError:
        raise ValueError(f"unknown SNLI-VE label {label!r}; labels: {', '.join(LABELS)}") from None


def candidate_texts(sample: Sample) -> list[str]:
    """The teacher scores the image against the hypothesis alone (3-way calibrated later)."""
    return [sample.texts[0]]


def fit_snli_calibration(zeroshot_store: str, samples: Sequence[Sample]):
    """Fit the 1-D calibration (similarity -> 3 labels) on the training split's zero-shot store."""
    from ..losses import fit_calibration
    from ..store.reader import open_store

    zs = open_store(zeroshot_store)
    ids = np.asarray(zs["sample_id"][:], dtype=object).astype(str)
    logits = np.asarray(zs["logits"][:, 0], np.float64)
    score = dict(zip(ids.tolist(), logits.tolist(), strict=True))
    sims, labels = [], []
    for s in samples:  # in the samples' (dataset) order, whichever order the store's rows are in
        z, gold = score.get(s.id), s.meta.get("gold_label")
        if gold is not None and z is not None and np.isfinite(z):
            sims.append(z)
            labels.append(label_index(gold))
    if len(sims) < 2:
        raise InputError(f"{zeroshot_store}: too few labelled zero-shot scores to calibrate SNLI-VE confidence")
    return fit_calibration(torch.tensor(sims), torch.tensor(labels), num_classes=NUM_LABELS)


@register_task
class SnliVeTask(Task):
    name = "snli-ve"
    dataset = "snli-ve"
    order = 1
    default_eval_split = "dev"
    metric = "accuracy"
    metric_key = "accuracy"
    prediction_key = "pairID"
    files = ("calibration.json",)

    def __init__(self, calibration=None, **options):
        super().__init__(**options)
        self.calibration = calibration

    @property
    def num_classes(self) -> int:
        return NUM_LABELS

    def label_names(self) -> list[str] | None:
        return list(LABELS)

    def save(self, run_dir: Path) -> None:
        if self.calibration is not None:
            from ..jsonio import dump_json

            dump_json(Path(run_dir) / "calibration.json", self.calibration.to_dict())

    def load(self, run_dir: Path) -> SnliVeTask:
        path = Path(run_dir) / "calibration.json"
        if path.exists():
            from ..losses import Calibration

            self.calibration = Calibration.from_dict(json.loads(path.read_text()))
        return self

    def target(self, sample: Sample) -> int:
        label = sample.meta.get("gold_label")
        return -1 if label is None else label_index(label)

    def zeroshot_setup(self, samples, data_root: Path, **_: object) -> ZeroShotSetup:
        return ZeroShotSetup([Candidates(("hypothesis",), tuple(candidate_texts(s))) for s in samples],
                             {"prompt": "hypothesis"})

    def fit_confidence(self, zeroshot_store: str, train_samples) -> None:
        self.calibration = fit_snli_calibration(zeroshot_store, train_samples)

    def zeroshot_vector(self, logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, bool]:
        if self.calibration is None or not np.isfinite(logits[0]):
            return np.zeros(NUM_LABELS, np.float32), False
        return self.calibration.logits(torch.tensor([float(logits[0])]))[0].numpy().astype(np.float32), True

    def zeroshot_predictions(self, sample_ids, logits, labels) -> list[dict]:
        if self.calibration is None:
            raise ValueError(f"zero-shot predictions for task {self.name!r} need a calibration (SNLI-VE: fitted on "
                             "the training split at distillation time)")
        pred = self.calibration.logits(torch.tensor(np.asarray(logits[:, 0], np.float32))).argmax(-1).tolist()
        return [{"pairID": str(i), "label": LABELS[k]} for i, k in zip(sample_ids, pred, strict=True)]

    def teacher_zeroshot(self, zeroshot_store: str, samples) -> dict | None:
        if self.calibration is None:
            return None
        res = super().teacher_zeroshot(zeroshot_store, samples)
        return None if res is None else {**res, "note": "calibrated on the training split"}

    def prediction(self, sample: Sample, choice: int) -> dict:
        return {"pairID": sample.id, "label": LABELS[choice]}

    def score(self, samples, records) -> dict | None:
        gold = {s.id: s.meta["gold_label"] for s in samples if s.meta.get("gold_label")}
        if not gold:
            return None
        return snli_ve_evaluate({p["pairID"]: p["label"] for p in records}, gold)

    def report_rows(self, result, detail: bool = False):
        return [("accuracy", result["accuracy"], result["n"])] + [
            (f"  {k}", v, None) for k, v in result["per_label"].items()]

    def read_gold(self, annotations: Path, questions: Path | None) -> list[Sample]:
        from ..data.snli_ve import parse_snli_ve

        return parse_snli_ve(Path(annotations))[0]

    def parse_prediction(self, record: dict) -> dict:
        if "label" not in record:
            raise ValueError("missing field 'label'")
        label = record["label"]
        if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(LABELS):
            return {"label": LABELS[label]}
        if label not in LABELS:
            raise ValueError(f"label {label!r} is not one of {', '.join(LABELS)} (or 0-{len(LABELS) - 1})")
        return {"label": label}


__all__ = ["LABELS", "NUM_LABELS", "SnliVeTask", "candidate_texts", "fit_snli_calibration", "label_index"]
