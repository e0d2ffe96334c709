"""What a benchmark is to mad: the :class:`Task` interface, in one place.

Everything that depends on which benchmark is being trained or scored goes through a ``Task``: its label space and
training target, the texts the student reads and the teacher's text features describe, the teacher's zero-shot
candidates and how their logits line up with the student's classes, the task loss, predictions in the benchmark's
official results format, scoring, the headline metric and the default evaluation split. Code outside
``mad_pipeline/tasks`` never tests a task's name.

A task instance carries the state fitted on a run's training split (VQA: the answer vocabulary; SNLI-VE: the
confidence calibration); :meth:`Task.save` / :meth:`Task.load` keep it in the run directory.

Adding a benchmark = one module with a ``Task`` subclass decorated with :func:`mad_pipeline.tasks.register_task`,
plus a reader registered with :func:`mad_pipeline.data.register_reader` (see docs/architecture.md for plugins).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..data.base import Sample
from ..errors import InputError

ZS_FILL = -1.0e4  # zero-shot logit of an answer class the teacher did not score: probability exactly 0
TEACHER_LINE = "teacher zero-shot"  # the reference line of the teacher's zero-shot accuracy on the plots


@dataclass(frozen=True)
class Candidates:
    """One sample's zero-shot candidates: the labels the teacher chooses between and the texts that state them."""

    labels: tuple[str, ...]
    texts: tuple[str, ...]


@dataclass(frozen=True)
class ZeroShotSetup:
    """How stage 1 writes a task's zero-shot store: the candidates of each sample and the prompt settings (which
    are part of the store's key)."""

    candidates: list[Candidates]
    prompt: dict[str, Any]


class Task:
    """A benchmark. Subclasses set the class attributes and implement the methods that raise
    ``NotImplementedError``; the rest have defaults that fit a single-text classifier."""

    name: ClassVar[str]  # registry name (``--task``)
    dataset: ClassVar[str]  # the reader that reads its official files (``--dataset`` default)
    default_eval_split: ClassVar[str] = "val"
    metric: ClassVar[str]  # the headline metric's name in results (``metrics["metric"]``)
    metric_key: ClassVar[str]  # the key of :meth:`score`'s result that holds the headline value
    multiple_choice: ClassVar[bool] = False  # the student scores C texts per sample; logits are (B, C)
    prediction_key: ClassVar[str]  # the id field of a record in the official results format
    files: ClassVar[tuple[str, ...]] = ()  # files :meth:`save` writes into a run directory
    order: ClassVar[int] = 100  # position in listings (the paper's three benchmarks first)
    # More keys of :meth:`score`'s result that a study reports beside the headline, each with its own table:
    # ``(key, title)`` (VCR: QA->R and Q->AR beside Q->A)
    study_metrics: ClassVar[tuple[tuple[str, str], ...]] = ()
    # Settings that only some tasks read (marked ``task_setting=True`` where declared, e.g. ``vqa_eval``): a task
    # lists those it reads, and only those enter the keys of its stages, so a setting that means nothing to a task
    # never changes that task's keys (its cached results stay valid).
    keyed_settings: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def settings_in_key(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """Of ``values`` (settings by name), the task settings this task reads (:attr:`keyed_settings`)."""
        return {k: values[k] for k in cls.keyed_settings if k in values}

    def __init__(self, **options: Any):
        """``options``: task settings by name (e.g. VQA's ``vocab_min_count``); a task ignores the ones it does not
        use, so callers can pass the same settings to any task."""

    # -- label space -------------------------------------------------------------------------------------------
    def fit(self, train_samples: Sequence[Sample], split: str = "train") -> None:
        """Fit the label space on the whole training split ``split`` (before any low-shot subset is taken)."""

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def label_names(self) -> list[str] | None:
        """The name of each class, index ``i`` = class ``i`` (a saved student's ``id2label``); None when the classes
        have no names (a multiple-choice task's are the sample's own choices)."""
        return None

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The student's logits as the probabilities its loss trains (default: softmax over the classes)."""
        return logits.float().softmax(-1)

    def save(self, run_dir: Path) -> None:
        """Write the fitted state into ``run_dir`` (:attr:`files`)."""

    def load(self, run_dir: Path) -> Task:
        """Read the state :meth:`save` wrote; returns ``self``."""
        return self

    # -- training -------------------------------------------------------------------------------------------------
    # Bumped when a task changes what its students are trained on (not a setting: the same data, a new meaning); it
    # enters the keys of the task's training runs when non-zero, so runs trained the old way are never reused.
    training_revision: ClassVar[int] = 0

    @classmethod
    def training_key(cls) -> dict[str, int]:
        """What the task adds to the keys of its training runs: its :attr:`training_revision` when non-zero."""
        return {"training_revision": cls.training_revision} if cls.training_revision else {}

    def training_samples(self, samples: Sequence[Sample]) -> list[Sample]:
        """What a training epoch visits: by default the samples themselves. A task that asks a second question of
        the same sample (VCR's QA->R) adds a copy of the sample that asks it (its ``meta`` says which)."""
        return list(samples)

    def target(self, sample: Sample) -> Any:
        """The training target of one sample (a class index, -1 when unknown, unless the task says otherwise)."""
        raise NotImplementedError

    def stack_targets(self, targets: Sequence[Any]) -> torch.Tensor:
        return torch.tensor([int(t) for t in targets], dtype=torch.long)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the classes (or choices); ``target (B,)`` indices."""
        return F.cross_entropy(logits.float(), target.long())

    def student_texts(self, sample: Sample) -> list[str]:
        """What the student reads: one text, or the C choice texts of a multiple-choice task."""
        return [sample.texts[0]]

    def teacher_texts(self, sample: Sample) -> list[str]:
        """Texts whose teacher features are distilled, in order of preference: the first the text store holds is
        used. The student-side counterpart is :meth:`distilled_choice`."""
        return [sample.texts[0]]

    def distilled_choice(self, sample: Sample, target: Any) -> int:
        """Multiple choice: which of the student's C texts the teacher text describes."""
        return 0

    # -- the teacher's zero-shot scores -------------------------------------------------------------------------
    def zeroshot_setup(self, samples: Sequence[Sample], data_root: Path, **options: Any) -> ZeroShotSetup:
        raise NotImplementedError

    def fit_confidence(self, zeroshot_store: str, train_samples: Sequence[Sample]) -> None:
        """Fit whatever turns zero-shot scores into the task's classes (default: nothing to fit)."""

    def zeroshot_vector(self, logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, bool]:
        """One sample's zero-shot logits as the objective reads them (over the student's classes, so confidence
        and logit distillation line up), and whether they are usable."""
        raise NotImplementedError

    def sample_zeroshot_vector(self, sample: Sample, logits: np.ndarray,
                               labels: np.ndarray) -> tuple[np.ndarray, bool]:
        """:meth:`zeroshot_vector` for one training sample (of :meth:`training_samples`): a task whose training
        samples ask different questions of one zero-shot row picks that question's columns. Default: the same."""
        return self.zeroshot_vector(logits, labels)

    def zeroshot_predictions(self, sample_ids: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> list[dict]:
        """The teacher's zero-shot choices in the official results format."""
        raise NotImplementedError

    def teacher_zeroshot(self, zeroshot_store: str, samples: Sequence[Sample]) -> dict[str, Any] | None:
        """The teacher's zero-shot accuracy on ``samples`` (those it scored), on the student's official scale."""
        from ..store.reader import open_store
        from ..store.zeroshot import zeroshot_blocks

        records: list[dict] = []
        try:
            for ids, logits, labels in zeroshot_blocks(open_store(zeroshot_store)):  # a block of rows at a time
                records += self.zeroshot_predictions(ids, logits, labels)
        except ValueError:
            return None
        by_id = {r[self.prediction_key]: r for r in records}
        keep = [s for s in samples if self.record_id(s) in by_id]
        return self.headline(self.score(keep, [by_id[self.record_id(s)] for s in keep]))

    # -- predictions and scoring --------------------------------------------------------------------------------
    def record_id(self, sample: Sample) -> Any:
        """The id of ``sample`` in the official results format (the value of :attr:`prediction_key`)."""
        return sample.id

    def prediction(self, sample: Sample, choice: int) -> dict[str, Any]:
        """One prediction record in the official results format."""
        raise NotImplementedError

    def follow_up(self, samples: Sequence[Sample], records: list[dict[str, Any]],
                  scores: Callable[[list[list[str]]], np.ndarray], logits: np.ndarray) -> None:
        """A second question on the same images (VCR's QA->R): ``scores(texts)`` runs the student on the batch's
        images with other candidate texts and returns its ``(B, C)`` logits; ``logits`` are the batch's own
        (those ``records`` were made from). Default: none."""

    def write_predictions(self, records: list[dict[str, Any]], path: Path) -> dict[str, str]:
        """Write ``records`` in the official results format at ``path`` (and any other format the task has beside
        it); returns ``{format: path}``, ``predictions`` first."""
        from ..jsonio import dump_json

        path.parent.mkdir(parents=True, exist_ok=True)
        dump_json(path, records)
        return {"predictions": str(path)}

    def score(self, samples: Sequence[Sample], records: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Official metrics of ``records`` against the labelled ``samples``; None when none is labelled."""
        raise NotImplementedError

    def references(self, train_samples: Sequence[Sample], eval_samples: Sequence[Sample]) -> dict[str, float]:
        """Reference levels of the headline metric on ``eval_samples`` (percent), drawn on the plots: ``majority``
        (always predicting the training split's most frequent target) and ``chance`` (a uniform guess,
        ``100 / num_classes``; only for tasks with at most 10 classes, since over a large answer vocabulary it is
        about 0). Empty when ``eval_samples`` have no labels."""
        out: dict[str, float] = {}
        counts = None
        for s in train_samples:
            t = np.asarray(self.target(s), dtype=np.float64)
            if t.ndim == 0:  # a class index (-1: unknown)
                if t < 0:
                    continue
                t = np.bincount([int(t)], minlength=self.num_classes).astype(np.float64)
            counts = t if counts is None else counts + t
        if counts is not None and eval_samples:
            k = int(np.argmax(counts))
            res = self.headline(self.score(eval_samples, [self.prediction(s, k) for s in eval_samples]))
            if res is not None:
                out["majority"] = float(res["value"])
                if 0 < self.num_classes <= 10:
                    out["chance"] = 100.0 / self.num_classes
        return out

    def reference_breakdown(self, train_samples: Sequence[Sample], eval_samples: Sequence[Sample]
                            ) -> dict[str, dict[str, float]]:
        """Reference levels broken down as the task breaks down its results (VQA: the answer prior per question
        type), for tables beside the students' own breakdown: ``{level: {part: percent}}``. Empty by default."""
        return {}

    def reference_lines(self, references: dict[str, float], teacher_zs: dict[str, Any] | None) -> dict[str, float]:
        """The plots' reference lines on an evaluated split: the teacher's zero-shot accuracy (``teacher_zs``: a
        :meth:`teacher_zeroshot` result, None: no line), then ``references`` (:meth:`references`)."""
        return {**({TEACHER_LINE: float(teacher_zs["value"])} if teacher_zs else {}), **references}

    def study_references(self, train_samples: Sequence[Sample], eval_samples: Sequence[Sample],
                         teacher_zs: dict[str, Any] | None) -> dict[str, dict[str, float]]:
        """The reference lines of each of :attr:`study_metrics` (key -> label -> level), as :meth:`reference_lines`
        gives the headline's. Empty by default."""
        return {}

    def headline(self, result: dict[str, Any] | None) -> dict[str, Any] | None:
        """A :meth:`score` result with ``metric`` and ``value`` (the headline) in front."""
        if result is None:
            return None
        return {"metric": self.metric, "value": result[self.metric_key], **result}

    @classmethod
    def dev_metric(cls, name: str, option: str = "--dev-metric") -> str:
        """The key of :meth:`score`'s result that the dev split selects on: ``name``, or the headline's when empty.
        One :class:`InputError` line, naming ``option`` and the task's metrics, for another name."""
        known = (cls.metric_key, *(key for key, _ in cls.study_metrics))
        if name and name not in known:
            raise InputError(f"{option} {name!r}: {cls.name} selects on one of {', '.join(known)}")
        return name or cls.metric_key

    def report_rows(self, result: dict[str, Any], detail: bool = False) -> list[tuple[str, float, int | None]]:
        """Rows ``(name, percent, n)`` of a results table."""
        return [(self.metric_key, result[self.metric_key], result.get("n"))]

    # -- prediction files (mad score) ---------------------------------------------------------------------------
    def read_gold(self, annotations: Path, questions: Path | None) -> list[Sample]:
        """The labelled samples of an official annotation file."""
        raise NotImplementedError

    def parse_prediction(self, record: dict[str, Any]) -> dict[str, Any]:
        """Validate one record of a predictions file (raise ValueError with the reason); returns it normalised."""
        return record

    def score_file(self, predictions: Path, annotations: Path, questions: Path | None = None) -> dict[str, Any]:
        """Score an official-format predictions file: exactly one prediction per annotated record."""
        samples = self.read_gold(annotations, questions)
        records = load_predictions(predictions, self.prediction_key, {self.record_id(s): s for s in samples},
                                   annotations, self.parse_prediction)
        result = self.score(samples, records)
        if result is None:
            raise InputError(f"{annotations}: no labelled records to score")
        result.pop("per_question", None)
        return result


def load_predictions(path: Path, key: str, expected: Mapping[Any, Any], annotations: Path,
                     parse: Callable[[dict[str, Any]], dict[str, Any]]) -> list[dict[str, Any]]:
    """A JSON array of prediction objects keyed by ``key``; exactly one per record of ``expected``. Any mistake is
    one :class:`InputError` naming the file and the record."""
    from ..data.jsonio import load_json

    doc = load_json(path, "predictions file")
    if not isinstance(doc, list):
        raise InputError(f"{path}: expected a JSON array of prediction objects")
    key_type = type(next(iter(expected))) if expected else str
    seen: dict[Any, dict[str, Any]] = {}
    for i, rec in enumerate(doc):
        where = f"{path}:[{i}]"
        if not isinstance(rec, dict):
            raise InputError(f"{where}: expected a JSON object")
        if key not in rec:
            raise InputError(f"{where}: missing field {key!r}")
        k = rec[key]
        if not isinstance(k, key_type) or isinstance(k, bool):
            raise InputError(f"{where}: field {key!r} must be {'an integer' if key_type is int else 'a string'}")
        where = f"{path}:{key}={k}"
        if k in seen:
            raise InputError(f"{where}: duplicate prediction")
        if k not in expected:
            raise InputError(f"{where}: not in {annotations}")
        try:
            seen[k] = {**parse(rec), key: k}
        except ValueError as e:
            raise InputError(f"{where}: {e}") from None
    missing = [k for k in expected if k not in seen]
    if missing:
        raise InputError(f"{path}: no prediction for {key}={missing[0]} ({len(missing)} of {len(expected)} "
                         f"annotated records have none; every one needs a prediction)")
    return list(seen.values())


def choice_field(record: dict[str, Any], field: str, n: int) -> int:
    """A choice index ``0..n-1`` from a prediction record (ValueError otherwise)."""
    if field not in record:
        raise ValueError(f"missing field {field!r}")
    v = record[field]
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < n:
        raise ValueError(f"field {field!r} must be a choice index 0-{n - 1}")
    return v


__all__ = ["TEACHER_LINE", "ZS_FILL", "Candidates", "Task", "ZeroShotSetup", "choice_field", "load_predictions"]
