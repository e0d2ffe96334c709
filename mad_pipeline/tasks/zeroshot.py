"""Zero-shot candidates: for each sample, the labels the teacher chooses between and the texts that state them.

- ``vqa``: prompt ``shapes`` (the shapes world: each answer valid for the question's type rendered as a caption,
  e.g. "a red circle in the top left"), or ``template`` (the answer vocabulary of the training split rendered with a
  template, default ``"question: {q} answer: {a}"``; a template without ``{q}`` shares one text per answer).
  ``auto`` picks ``shapes`` when every question is a shapes-world question.
- ``snli-ve``: one candidate, the hypothesis (its 1-D similarity is calibrated to three labels at training time).
- ``vcr``: Q->A candidates ``a0..a3`` then QA->R candidates ``r0..r3`` (conditioned on the right answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..data.base import Sample
from ..errors import InputError

PROMPTS = ("auto", "shapes", "template")


@dataclass(frozen=True)
class Candidates:
    labels: tuple[str, ...]
    texts: tuple[str, ...]


def vqa_candidates(samples: Sequence[Sample], prompt: str = "auto", template: str | None = None,
                   vocab=None) -> tuple[list[Candidates], str]:
    """Candidates for VQA samples; returns them and the prompt actually used."""
    from ..shapes import zeroshot as shapes_zs
    from . import vqa

    if prompt not in PROMPTS:
        raise InputError(f"--zs-prompt {prompt!r}: expected one of {', '.join(PROMPTS)}")
    if prompt == "auto":
        prompt = "shapes" if samples and all(shapes_zs.candidates(s.texts[0]) for s in samples) else "template"
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
    tmpl = template or vqa.DEFAULT_TEMPLATE
    for s in samples:
        out.append(Candidates(tuple(vocab.answers), tuple(tmpl.format(q=s.texts[0], a=a) for a in vocab.answers)))
    return out, "template"


def snli_ve_candidates(samples: Sequence[Sample]) -> list[Candidates]:
    from . import snli_ve

    return [Candidates(("hypothesis",), tuple(snli_ve.candidate_texts(s))) for s in samples]


def vcr_candidates(samples: Sequence[Sample]) -> list[Candidates]:
    from . import vcr

    out = []
    for s in samples:
        c = vcr.candidate_texts(s)
        labels = tuple(f"a{i}" for i in range(len(c["q2a"]))) + tuple(f"r{i}" for i in range(len(c["qa2r"])))
        out.append(Candidates(labels, tuple(c["q2a"]) + tuple(c["qa2r"])))
    return out
