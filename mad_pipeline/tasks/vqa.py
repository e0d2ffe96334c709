"""VQA v2 as a task: answer vocabulary, soft scores, zero-shot candidates, predictions and the official accuracy.

Standard practice (bottom-up attention / UNITER / ViLT lineage):

- **Vocabulary**: every answer is normalised as the official evaluation normalises predictions
  (:func:`~mad_pipeline.tasks.metrics.normalize_prediction`); the vocabulary is the normalised
  ``multiple_choice_answer`` values of the *training* split occurring at least ``min_count`` times (default 9).
  ``count="all"`` counts all ten human answers per question instead. Order: most frequent first, ties
  alphabetical — deterministic.
- **Soft scores**: the score of an answer is the official VQA accuracy a model would get by predicting it, i.e. the
  average over the 10-choose-9 annotator subsets of ``min(1, matches / 3)``. For an answer given (after
  normalisation) by ``c`` of ``n`` annotators that is ``(c * min(1, (c-1)/3) + (n-c) * min(1, c/3)) / n`` — for
  ``n = 10``: 0, 0.3, 0.6, 0.9, then 1.0 from four annotators on.
- **Zero-shot candidates**: prompt ``shapes`` (the shapes world: each answer valid for the question's type rendered
  as a caption, e.g. "a red circle in the top left"), or ``template``: the vocabulary rendered with
  :data:`DEFAULT_TEMPLATE` (``"question: {q} answer: {a}"``); a template without ``{q}`` gives question-independent
  candidates, shared by every sample (one text-store row per answer instead of one per question x answer).
  ``auto`` picks ``shapes`` when every question is a shapes-world question. The teacher's logits are placed in
  answer-vocabulary space (each candidate's logit at its class, :data:`ZS_FILL` elsewhere), so confidence is the
  expectation of the teacher's answer distribution under the soft scores and logit KD lines up with the classes.
- **Scoring**: the official accuracy under the rules of :data:`~mad_pipeline.tasks.metrics.VQA_EVAL_RULES`
  (``vqa_eval``: ``official``, the evaluation code as it is today, by default; ``legacy``, its 2017 Python 3 port;
  see :mod:`~mad_pipeline.tasks.metrics`). The rules change scores only, never the vocabulary or the soft targets
  above; they enter the keys of the stages that score VQA, and no other task's (:attr:`VQATask.keyed_settings`).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.base import Sample
from ..errors import InputError
from ..settings import setting
from .base import ZS_FILL, Candidates, Task, ZeroShotSetup
from .metrics import DEFAULT_VQA_EVAL, VQA_EVAL_RULES, normalize_prediction, vqa_evaluate
from .registry import register_task

DEFAULT_MIN_COUNT = 9
DEFAULT_TEMPLATE = "question: {q} answer: {a}"


def vqa_eval_setting():
    """The ``vqa_eval`` setting of every settings dataclass that scores (``mad distill``, ``mad eval``,
    ``mad score``, the ``mad run`` YAML): one description for all. ``task_setting``: it enters the keys only of the
    tasks that list it in :attr:`Task.keyed_settings` (VQA)."""
    return setting(DEFAULT_VQA_EVAL, "VQA accuracy rules: official (the VQA evaluation code as it is today) or "
                   "legacy (its 2017 Python 3 port, used by older papers); other tasks ignore it",
                   choices=VQA_EVAL_RULES, task_setting=True)


def check_vqa_eval(rules: str) -> str:
    """``rules`` if it names a rule set, else a one-line :class:`InputError`."""
    if rules not in VQA_EVAL_RULES:
        raise InputError(f"--vqa-eval {rules!r}: expected one of {', '.join(VQA_EVAL_RULES)}")
    return rules


@dataclass(frozen=True)
class AnswerVocab:
    """The answer label space: ``answers[i]`` is class ``i``; ``counts[i]`` its training count."""

    answers: tuple[str, ...]
    counts: tuple[int, ...]
    min_count: int = DEFAULT_MIN_COUNT
    count: str = "multiple_choice"

    def __len__(self) -> int:
        return len(self.answers)

    def __contains__(self, answer: object) -> bool:
        return answer in self._index

    @cached_property
    def _index(self) -> dict[str, int]:
        return {a: i for i, a in enumerate(self.answers)}

    def index(self, answer: str) -> int | None:
        """Class index of an answer (normalised first); None when it is outside the vocabulary."""
        return self._index.get(normalize_prediction(answer))

    def to_dict(self) -> dict[str, Any]:
        return {"answers": list(self.answers), "counts": list(self.counts), "min_count": self.min_count,
                "count": self.count}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AnswerVocab:
        return cls(tuple(d["answers"]), tuple(d["counts"]), int(d["min_count"]),
                   str(d.get("count", "multiple_choice")))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=0) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> AnswerVocab:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def build_answer_vocab(train: Iterable[Sample | Mapping[str, Any]], min_count: int = DEFAULT_MIN_COUNT,
                       count: str = "multiple_choice") -> AnswerVocab:
    """Answer vocabulary from training samples (or their ``meta`` dicts); see the module docstring."""
    if count not in ("multiple_choice", "all"):
        raise ValueError(f"count must be 'multiple_choice' or 'all', not {count!r}")
    if min_count < 1:
        raise ValueError("min_count must be at least 1")
    counter: Counter[str] = Counter()
    for s in train:
        meta = s.meta if isinstance(s, Sample) else s
        if count == "multiple_choice":
            if "multiple_choice_answer" not in meta:
                raise ValueError("training sample without 'multiple_choice_answer' (is the split annotated?)")
            counter[normalize_prediction(meta["multiple_choice_answer"])] += 1
        else:
            for a in meta["answers"]:
                counter[normalize_prediction(a)] += 1
    counter.pop("", None)
    kept = sorted(((a, c) for a, c in counter.items() if c >= min_count), key=lambda ac: (-ac[1], ac[0]))
    return AnswerVocab(tuple(a for a, _ in kept), tuple(c for _, c in kept), min_count, count)


def soft_score(matches: int, n_annotators: int = 10) -> float:
    """10-choose-9 averaged ``min(1, matches/3)`` for an answer given by ``matches`` of ``n_annotators``."""
    if not 0 <= matches <= n_annotators or n_annotators < 1:
        raise ValueError("need 0 <= matches <= n_annotators and n_annotators >= 1")
    c, n = matches, n_annotators
    return (c * min(1.0, (c - 1) / 3) + (n - c) * min(1.0, c / 3)) / n


def soft_scores(answers: Sequence[str], vocab: AnswerVocab) -> dict[int, float]:
    """Soft target ``{class index: score}`` for one question's human answers (answers outside the vocabulary
    are dropped; a question may end up with no target at all)."""
    norm = Counter(normalize_prediction(a) for a in answers)
    out: dict[int, float] = {}
    for a, c in norm.items():
        i = vocab._index.get(a)
        if i is not None:
            out[i] = soft_score(c, len(answers))
    return out


def prompt(question: str, answer: str, template: str = DEFAULT_TEMPLATE) -> str:
    """One candidate text: ``template`` with ``{q}`` = the question and ``{a}`` = the answer."""
    return template.format(q=question.strip(), a=answer)


def candidate_texts(question: str, vocab: AnswerVocab, template: str = DEFAULT_TEMPLATE) -> list[str]:
    """The texts the teacher scores zero-shot for one question: one prompt per vocabulary answer, in class order."""
    return [prompt(question, a, template) for a in vocab.answers]


PROMPTS = ("auto", "shapes", "template")


def vqa_candidates(samples: Sequence[Sample], prompt: str = "auto", template: str | None = None,
                   vocab: AnswerVocab | None = None) -> tuple[list[Candidates], str]:
    """Zero-shot candidates of VQA samples (see the module docstring); returns them and the prompt actually used."""
    from ..shapes import zeroshot as shapes_zs

    if prompt not in PROMPTS:
        raise InputError(f"--zs-prompt {prompt!r}: expected one of {', '.join(PROMPTS)}")
    if prompt == "auto":
        prompt = "shapes" if _all_shapes(samples) else "template"
    out = []
    if prompt == "shapes":
        for s in samples:
            c = shapes_zs.candidates(s.texts[0])
            if c is None:
                raise InputError(f"sample {s.id}: {s.texts[0]!r} is not a shapes-world question (--zs-prompt shapes)")
            _, answers, prompts = c
            out.append(Candidates(tuple(answers), tuple(prompts)))
        return out, "shapes"
    if vocab is None:
        raise InputError("zero-shot VQA with a template needs the answer vocabulary of the training split")
    tmpl = template or DEFAULT_TEMPLATE
    labels = tuple(vocab.answers)  # one tuple every sample shares (the zero-shot store keeps it once)
    fields = {re.split(r"[.\[]", f)[0] for _, f, _, _ in string.Formatter().parse(tmpl) if f}
    if "q" not in fields:  # the same texts for every question: one Candidates for all
        shared = Candidates(labels, tuple(tmpl.format(q="", a=a) for a in vocab.answers))
        return [shared] * len(samples), "template"
    for s in samples:
        out.append(Candidates(labels, tuple(tmpl.format(q=s.texts[0], a=a) for a in vocab.answers)))
    return out, "template"


def _all_shapes(samples: Sequence[Sample]) -> bool:
    from ..shapes.zeroshot import candidates

    return bool(samples) and all(candidates(s.texts[0]) for s in samples)


@register_task
class VQATask(Task):
    """VQA v2: a classifier over the answer vocabulary, trained on soft scores, scored by the official accuracy.

    Options: ``vocab_min_count`` (default :data:`DEFAULT_MIN_COUNT`), ``vqa_eval`` (the accuracy's rules, default
    ``official``)."""

    name = "vqa"
    dataset = "vqa"
    order = 0
    default_eval_split = "val"
    metric = "vqa_accuracy"
    metric_key = "overall"
    prediction_key = "question_id"
    files = ("vocab.json",)
    keyed_settings = ("vqa_eval",)

    def __init__(self, vocab_min_count: int = DEFAULT_MIN_COUNT, vocab: AnswerVocab | None = None,
                 vqa_eval: str = DEFAULT_VQA_EVAL, **options):
        super().__init__(**options)
        self.vocab_min_count = vocab_min_count
        self.vqa_eval = check_vqa_eval(vqa_eval)
        self.vocab = vocab
        self._maps: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}

    def fit(self, train_samples: Sequence[Sample], split: str = "train") -> None:
        self.vocab = build_answer_vocab(train_samples, min_count=self.vocab_min_count)
        if len(self.vocab) == 0:
            raise InputError(f"no answer occurs {self.vocab_min_count} times in the {split} split; "
                             "lower --vocab-min-count")

    @property
    def num_classes(self) -> int:
        return len(self.vocab) if self.vocab else 0

    def label_names(self) -> list[str] | None:
        return list(self.vocab.answers) if self.vocab else None

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid()  # each answer's soft score (the loss is BCE per answer)

    def save(self, run_dir: Path) -> None:
        self.vocab.save(Path(run_dir) / "vocab.json")

    def load(self, run_dir: Path) -> VQATask:
        self.vocab = AnswerVocab.load(Path(run_dir) / "vocab.json")
        return self

    # -- training
    def target(self, sample: Sample) -> np.ndarray:
        """Soft scores ``(V,)`` float32 (zeros when unannotated)."""
        out = np.zeros(len(self.vocab), np.float32)
        for i, score in soft_scores(sample.meta.get("answers", ()), self.vocab).items():
            out[i] = score
        return out

    def stack_targets(self, targets) -> torch.Tensor:
        return torch.from_numpy(np.stack(targets))

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """BCE-with-logits on soft answer scores, summed over answers, mean over the batch (as ViLT:
        ``BCE(mean) * num_answers``)."""
        return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), target.float(),
                                                                    reduction="sum") / logits.shape[0]

    # -- zero-shot
    def zeroshot_setup(self, samples, data_root: Path, prompt: str = "auto", template: str | None = None,
                       **_: object) -> ZeroShotSetup:
        vocab = None
        if prompt == "template" or (prompt == "auto" and not _all_shapes(samples)):
            from ..data import load_dataset

            train = load_dataset(self.dataset, data_root, split="train")
            vocab = build_answer_vocab(train.samples, min_count=self.vocab_min_count)
        cands, used = vqa_candidates(samples, prompt, template, vocab)
        return ZeroShotSetup(cands, {"prompt": used, "template": template if used == "template" else None})

    def zeroshot_vector(self, logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, bool]:
        out = np.full(len(self.vocab), ZS_FILL, np.float32)
        cols, where = self._vocab_map(labels if isinstance(labels, tuple) else tuple(str(x) for x in labels))
        vals = logits[where]
        fin = np.isfinite(vals)
        out[cols[fin]] = vals[fin]
        return out, bool(fin.any())

    def _vocab_map(self, labels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Candidate positions whose label is a vocabulary answer, and their vocabulary indices (memoised per label
        set: a template prompt gives one set for every sample, the shapes world a handful)."""
        hit = self._maps.get(labels)
        if hit is None:
            seen: dict[int, int] = {}  # one logit per vocabulary answer: the first candidate that normalises to it
            for k, lab in enumerate(labels):
                c = self.vocab.index(lab) if lab else None
                if c is not None:
                    seen.setdefault(c, k)
            hit = self._maps[labels] = (np.asarray(list(seen), np.int64), np.asarray(list(seen.values()), np.int64))
        return hit

    def zeroshot_predictions(self, sample_ids, logits, labels) -> list[dict]:
        out = []
        for sid, row, lab in zip(sample_ids, logits, labels, strict=True):
            if not np.all(np.isnan(row)):
                out.append({"question_id": int(sid), "answer": str(lab[int(np.nanargmax(row))])})
        return out

    def references(self, train_samples: Sequence[Sample], eval_samples: Sequence[Sample]) -> dict[str, float]:
        """The majority answer and chance levels, and the **answer prior per question type** (VQA's "per Q-type
        prior" baseline: each question answered with its type's most frequent ``multiple_choice_answer`` in the
        training split, the overall most frequent one for a type never seen there)."""
        out = super().references(train_samples, eval_samples)
        res = self._answer_prior(train_samples, eval_samples) if "majority" in out else None
        if res is not None:
            out["answer prior per type"] = float(res["value"])
        return out

    def reference_breakdown(self, train_samples: Sequence[Sample], eval_samples: Sequence[Sample]) -> dict:
        """The answer prior (:meth:`references`) per question type, beside its overall figure."""
        res = self._answer_prior(train_samples, eval_samples)
        if res is None:
            return {}
        return {"answer prior": {**{k: float(v) for k, v in res["per_question_type"].items()},
                                 "overall": float(res["value"])}}

    def _answer_prior(self, train_samples: Sequence[Sample], eval_samples: Sequence[Sample]) -> dict | None:
        """The answer prior per question type scored on ``eval_samples``; None without training answers or
        labelled evaluation samples."""
        by_type: dict[str, Counter] = {}
        for s in train_samples:
            answer, qtype = s.meta.get("multiple_choice_answer"), s.meta.get("question_type")
            if answer is not None:
                by_type.setdefault(str(qtype), Counter())[normalize_prediction(answer)] += 1
        if not by_type or not eval_samples:
            return None
        overall = sum(by_type.values(), Counter()).most_common(1)[0][0]
        prior = {t: c.most_common(1)[0][0] for t, c in by_type.items()}
        records = [{"question_id": self.record_id(s), "answer": prior.get(str(s.meta.get("question_type")), overall)}
                   for s in eval_samples]
        return self.headline(self.score(eval_samples, records))

    # -- predictions and scoring
    def record_id(self, sample: Sample) -> int:
        return int(sample.meta["question_id"])

    def prediction(self, sample: Sample, choice: int) -> dict:
        return {"question_id": int(sample.meta["question_id"]), "answer": self.vocab.answers[choice]}

    def score(self, samples, records) -> dict | None:
        anns = {int(s.meta["question_id"]): s.meta for s in samples if s.meta.get("answers")}
        if not anns:
            return None
        res = vqa_evaluate({p["question_id"]: p["answer"] for p in records}, anns, self.vqa_eval)
        res.pop("per_question", None)
        return res

    def report_rows(self, result, detail: bool = False):
        rows = [("overall", result["overall"], result["n"])]
        rows += [(k, result["per_answer_type"][k], result["n_per_answer_type"][k])
                 for k in sorted(result["per_answer_type"])]
        if detail:
            rows += [(f"  {k}", result["per_question_type"][k], None) for k in sorted(result["per_question_type"])]
        return rows

    def read_gold(self, annotations: Path, questions: Path | None) -> list[Sample]:
        from ..data.vqa import parse_vqa

        if questions is None:
            raise InputError("--questions is required with --task vqa (the v2_OpenEnded_mscoco_*_questions.json "
                             "file that goes with --annotations)")
        return parse_vqa(Path(questions), Path(annotations))[0]

    def parse_prediction(self, record: dict) -> dict:
        answer = record.get("answer")
        if not isinstance(answer, str):
            raise ValueError("field 'answer' must be a string" if "answer" in record else "missing field 'answer'")
        return {"answer": answer}
