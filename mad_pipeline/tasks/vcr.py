"""VCR as a task: four choices for Q->A and for QA->R, scored Q->A, QA->R and Q->AR.

- The student scores the C texts ``"{question} {answer_c}"`` of a sample (one logit each) for Q->A, and the C texts
  ``"{question} {answer} {rationale_j}"`` for QA->R with the same head, conditioned on the right answer as the
  official protocol does (on an unlabelled split: on its own answer).
- Training asks both questions: every training sample is visited twice an epoch, once as Q->A (target: the answer)
  and once as QA->R (target: the rationale, its texts conditioned on the right answer) -- one student for both
  sub-tasks, at the cost of a Q->A step per item. Early stopping selects on Q->A (the headline).
- Predictions: ``[{"annot_id", "answer", "rationale"}]`` (JSON). On a split without labels (the leaderboard's test
  split), or when asked (``leaderboard=True``: ``mad eval --leaderboard``), also the leaderboard's CSV beside them
  (:mod:`.vcr_leaderboard`): the softmax of the four answers' logits and, for each of the four answers, of the four
  rationales conditioned on it -- four QA->R passes. On a labelled split otherwise one QA->R pass, under the right
  answer, which is all the official QA->R and Q->AR scores read. ``mad score`` reads both files.
- Teacher text features: the right answer's pair text when the text store holds it, else the question, whose
  characters are the prefix of every pair text (and of every QA->R text) -- so character-span alignment stays exact
  and the tokens after that prefix simply have no teacher counterpart. The teacher's zero-shot logits of a QA->R
  item are its rationale scores ``r0..r3``.
- Zero-shot candidates: Q->A ``a0..a3`` then QA->R ``r0..r3`` (conditioned on the right answer).

Texts are the reader's renderings (object references as ``person0``; see :mod:`mad_pipeline.data.vcr`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..data.base import Sample
from ..data.vcr import NUM_CHOICES
from . import vcr_leaderboard as leaderboard
from .base import TEACHER_LINE, Candidates, Task, ZeroShotSetup, choice_field
from .metrics import vcr_evaluate, vcr_evaluate_probabilities
from .registry import register_task

SUBTASKS = ("q2a", "qa2r")
SUBTASK = "subtask"  # a training sample's meta key: which sub-task it asks (absent: q2a)
PROBABILITIES = "_leaderboard"  # a record's per-choice probabilities (written to the CSV, not to the JSON)


def q2a_candidates(sample: Sample) -> list[str]:
    q = sample.meta["question"]
    return [f"{q} {a}" for a in sample.meta["answer_choices"]]


def qa2r_candidates(sample: Sample, answer: int | None = None) -> list[str]:
    """Rationale candidates given the answer (default: the sample's right answer)."""
    if answer is None:
        answer = sample.meta.get("answer_label")
        if answer is None:
            raise ValueError(f"VCR sample {sample.id}: no answer_label; pass the answer to condition on")
    if not 0 <= answer < NUM_CHOICES:
        raise ValueError(f"answer index must be 0-{NUM_CHOICES - 1}")
    q = sample.meta["question"]
    a = sample.meta["answer_choices"][answer]
    return [f"{q} {a} {r}" for r in sample.meta["rationale_choices"]]


def candidate_texts(sample: Sample) -> dict[str, list[str]]:
    """Both sub-tasks' candidates; ``qa2r`` is empty when the right answer is unknown (test split)."""
    out = {"q2a": q2a_candidates(sample), "qa2r": []}
    if sample.meta.get("answer_label") is not None:
        out["qa2r"] = qa2r_candidates(sample)
    return out


def _columns(labels, prefix: str) -> list[int]:
    return [k for k, lab in enumerate(labels) if str(lab).startswith(prefix)]


def _asks_rationale(sample: Sample) -> bool:
    return sample.meta.get(SUBTASK) == "qa2r"


@register_task
class VcrTask(Task):
    name = "vcr"
    dataset = "vcr"
    order = 2
    default_eval_split = "val"
    metric = "q2a"
    metric_key = "q2a"
    study_metrics = (("qa2r", "QA->R"), ("q2ar", "Q->AR"))
    multiple_choice = True
    prediction_key = "annot_id"
    training_revision = 1  # 1: trained on Q->A and QA->R (0: Q->A only)

    def __init__(self, leaderboard: bool = False, **options):
        """``leaderboard``: the leaderboard's CSV on labelled splits too (it is always written without labels)."""
        super().__init__(**options)
        self.leaderboard = bool(leaderboard)

    @property
    def num_classes(self) -> int:
        return NUM_CHOICES

    def training_samples(self, samples) -> list[Sample]:
        """Each sample as Q->A, then (when its answer and rationale are labelled) a copy that asks QA->R."""
        out = list(samples)
        out += [dataclasses.replace(s, meta={**s.meta, SUBTASK: "qa2r"}) for s in samples
                if s.meta.get("answer_label") is not None and s.meta.get("rationale_label") is not None]
        return out

    def target(self, sample: Sample) -> int:
        label = sample.meta.get("rationale_label" if _asks_rationale(sample) else "answer_label")
        return -1 if label is None else int(label)

    def student_texts(self, sample: Sample) -> list[str]:
        return qa2r_candidates(sample) if _asks_rationale(sample) else q2a_candidates(sample)

    def teacher_texts(self, sample: Sample) -> list[str]:
        y = sample.meta.get("answer_label")
        first = [q2a_candidates(sample)[y]] if y is not None else []
        return [*first, sample.meta["question"]]

    def distilled_choice(self, sample: Sample, target) -> int:
        return max(int(target), 0)

    def zeroshot_setup(self, samples, data_root: Path, **_: object) -> ZeroShotSetup:
        out = []
        for s in samples:
            c = candidate_texts(s)
            labels = tuple(f"a{i}" for i in range(len(c["q2a"]))) + tuple(f"r{i}" for i in range(len(c["qa2r"])))
            out.append(Candidates(labels, tuple(c["q2a"]) + tuple(c["qa2r"])))
        return ZeroShotSetup(out, {"prompt": "question+choice"})

    def zeroshot_vector(self, logits: np.ndarray, labels: np.ndarray, prefix: str = "a") -> tuple[np.ndarray, bool]:
        """The teacher's logits over the four answers (``prefix`` ``r``: over the four rationales)."""
        cols = _columns(labels, prefix)
        if len(cols) != NUM_CHOICES:  # not scored (QA->R: its answer was unknown at extraction)
            return np.zeros(NUM_CHOICES, np.float32), False
        z = logits[cols].astype(np.float32)
        return z, bool(np.isfinite(z).all())

    def sample_zeroshot_vector(self, sample: Sample, logits: np.ndarray, labels: np.ndarray):
        """A QA->R item's zero-shot logits are the teacher's rationale scores (given the right answer)."""
        return self.zeroshot_vector(logits, labels, "r" if _asks_rationale(sample) else "a")

    def zeroshot_predictions(self, sample_ids, logits, labels) -> list[dict]:
        out = []
        for sid, row, lab in zip(sample_ids, logits, labels, strict=True):
            a = _columns(lab, "a")
            r = _columns(lab, "r")
            out.append({"annot_id": str(sid), "answer": int(np.nanargmax(row[a])),
                        "rationale": int(np.nanargmax(row[r])) if r else 0})
        return out

    def prediction(self, sample: Sample, choice: int) -> dict:
        return {"annot_id": sample.id, "answer": int(choice), "rationale": 0}

    def follow_up(self, samples, records, scores, logits) -> None:
        """QA->R. The rationale recorded is the one chosen given the right answer (else given the predicted one), as
        the official protocol scores it. With every answer known and no leaderboard CSV asked for, one pass under the
        right answer; otherwise a pass under each of the four answers (the CSV's 4x4 probabilities)."""
        gold = [s.meta.get("answer_label") for s in samples]
        if not self.leaderboard and all(y is not None for y in gold):
            rationale = np.asarray(scores([qa2r_candidates(s, int(y)) for s, y in zip(samples, gold, strict=True)]))
            for p, r in zip(records, rationale, strict=True):
                p["rationale"] = int(r.argmax())
            return
        by_answer = [np.asarray(scores([qa2r_candidates(s, a) for s in samples]), dtype=np.float64)
                     for a in range(NUM_CHOICES)]
        rationale = np.stack(by_answer, axis=1)  # (B, answer, rationale)
        for i, (y, p) in enumerate(zip(gold, records, strict=True)):
            given = p["answer"] if y is None else int(y)
            p["rationale"] = int(rationale[i, given].argmax())
            p[PROBABILITIES] = {"answer": leaderboard.softmax(logits[i]).tolist(),
                                "rationale": leaderboard.softmax(rationale[i]).tolist()}

    def write_predictions(self, records, path: Path) -> dict[str, str]:
        """The JSON records and, when every record has its probabilities, the leaderboard CSV beside them
        (``<name>.leaderboard.csv``)."""
        files = super().write_predictions([{k: v for k, v in r.items() if k != PROBABILITIES} for r in records],
                                          Path(path))
        if records and all(PROBABILITIES in r for r in records):
            csv_path = Path(path).with_suffix(".leaderboard.csv")
            files["leaderboard"] = str(leaderboard.write_csv(csv_path, leaderboard.rows_of(records, PROBABILITIES)))
        return files

    def score(self, samples, records) -> dict | None:
        gold = {s.id: (s.meta["answer_label"], s.meta["rationale_label"]) for s in samples
                if s.meta.get("answer_label") is not None and s.meta.get("rationale_label") is not None}
        if not gold:
            return None
        return vcr_evaluate({p["annot_id"]: (p["answer"], p["rationale"]) for p in records}, gold)

    def study_references(self, train_samples, eval_samples, teacher_zs):
        """QA->R's and Q->AR's lines: the teacher's zero-shot figure, the majority (the training split's most frequent
        answer and rationale positions, always chosen) and chance (1/4 and 1/16)."""
        def most(field: str) -> int:
            return int(np.bincount([s.meta[field] for s in train_samples if s.meta.get(field) is not None],
                                   minlength=NUM_CHOICES).argmax())

        out = {key: {TEACHER_LINE: float(teacher_zs[key])} if teacher_zs and key in teacher_zs else {}
               for key, _ in self.study_metrics}
        if train_samples and eval_samples:
            a, r = most("answer_label"), most("rationale_label")
            res = self.score(eval_samples, [{"annot_id": s.id, "answer": a, "rationale": r} for s in eval_samples])
            for key in out:
                out[key].update({"majority": float(res[key])} if res else {})
        for key, chance in (("qa2r", 100.0 / NUM_CHOICES), ("q2ar", 100.0 / NUM_CHOICES ** 2)):
            out[key]["chance"] = chance
        return out

    def report_rows(self, result, detail: bool = False):
        return [(name, result[k], result["n"]) for k, name in (("q2a", "Q->A"), ("qa2r", "QA->R"), ("q2ar", "Q->AR"))]

    def read_gold(self, annotations: Path, questions: Path | None) -> list[Sample]:
        from ..data.vcr import parse_vcr

        return parse_vcr(Path(annotations), require_labels=True)[0]

    def parse_prediction(self, record: dict) -> dict:
        return {"answer": choice_field(record, "answer", NUM_CHOICES),
                "rationale": choice_field(record, "rationale", NUM_CHOICES)}

    def score_file(self, predictions: Path, annotations: Path, questions: Path | None = None) -> dict:
        """The JSON records, or the leaderboard CSV (scored as the leaderboard does)."""
        if not leaderboard.is_csv(Path(predictions)):
            return super().score_file(predictions, annotations, questions)
        samples = self.read_gold(annotations, questions)
        probs = leaderboard.read_csv(Path(predictions), {s.id for s in samples}, Path(annotations))
        gold = {s.id: (int(s.meta["answer_label"]), int(s.meta["rationale_label"])) for s in samples}
        return vcr_evaluate_probabilities(probs, gold)


__all__ = ["NUM_CHOICES", "SUBTASKS", "VcrTask", "candidate_texts", "q2a_candidates", "qa2r_candidates"]
