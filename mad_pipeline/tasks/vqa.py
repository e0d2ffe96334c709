"""VQA v2 as a task: answer vocabulary, soft scores, zero-shot candidate texts.

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
- **Zero-shot candidates**: the vocabulary rendered as prompts with :data:`DEFAULT_TEMPLATE`
  (``"question: {q} answer: {a}"``). A template without ``{q}`` gives question-independent candidates, shared by
  every sample (one text-store row per answer instead of one per question x answer).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from ..data.base import Sample
from .metrics import normalize_prediction

DEFAULT_MIN_COUNT = 9
DEFAULT_TEMPLATE = "question: {q} answer: {a}"


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


def sample_candidates(sample: Sample, vocab: AnswerVocab, template: str = DEFAULT_TEMPLATE) -> list[str]:
    return candidate_texts(sample.meta.get("question", sample.texts[0]), vocab, template)
