"""What is asked about a scene: VQA questions and SNLI-VE hypotheses (VCR items: :mod:`.vcr_items`).

Every question/hypothesis is a *template* with parameters, a text, and a function of the scene giving its answer
(None where the question does not apply to that scene, e.g. "the circle" when there are two). The generator picks
which question to ask of each scene with a :class:`Balancer`, so that for every question text the answers come out
(nearly) uniform over that template's answer space: the text alone tells no more than the label prior, the answer
needs the picture.

VQA families (the five question types reported everywhere): ``color``, ``shape``, ``count``, ``where``, ``yes/no``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from itertools import product

import numpy as np

from . import language as L
from .world import COLOUR_NAMES, GRID, POSITIONS, SHAPES, Scene

FAMILIES = ("color", "shape", "count", "where", "yes/no")
QUESTION_TYPES = {"color": "what color is the", "shape": "what shape is", "count": "how many",
                  "where": "where is the", "yes/no": "is there a"}
ANSWER_TYPES = {"color": "other", "shape": "other", "count": "number", "where": "other", "yes/no": "yes/no"}
COUNT_ANSWERS = ("0", "1", "2", "3")
YES_NO = ("yes", "no")
CELLS = tuple(range(GRID * GRID))


@dataclass(frozen=True)
class Template:
    """A VQA question template. ``params`` are tuples over (colour | shape | cell) slots named by ``slots``."""

    name: str
    family: str
    slots: tuple[str, ...]
    question: Callable[..., str]
    answer_fn: Callable[..., str | None]  # (scene, *params) -> answer or None (not applicable)
    prompt_fn: Callable[..., str]  # (answer, *params) -> caption stating that answer
    answers: tuple[str, ...]

    def all_params(self) -> list[tuple]:
        domains = {"colour": COLOUR_NAMES, "shape": SHAPES, "cell": CELLS}
        return list(product(*(domains[s] for s in self.slots)))

    def text(self, params: tuple) -> str:
        return self.question(*params)

    def answer(self, scene: Scene, params: tuple) -> str | None:
        return self.answer_fn(scene, *params)

    def prompt(self, params: tuple, answer: str) -> str:
        return self.prompt_fn(answer, *params)

    def prompts(self, params: tuple) -> list[str]:
        return [self.prompt(params, a) for a in self.answers]


def _unique(scene: Scene, colour=None, shape=None):
    found = scene.find(colour, shape)
    return found[0] if len(found) == 1 else None


def _attr_at(scene: Scene, cell: int, attr: str) -> str | None:
    o = scene.at(cell)
    return getattr(o, attr) if o is not None else None


def _where(scene: Scene, colour=None, shape=None) -> str | None:
    o = _unique(scene, colour, shape)
    return POSITIONS[o.cell] if o is not None else None


def _is_there(scene: Scene, colour, shape, cell) -> str | None:
    if cell == scene.occluder:
        return None  # cannot be told
    o = scene.at(cell)
    ok = o is not None and (colour is None or o.colour == colour) and (shape is None or o.shape == shape)
    return "yes" if ok else "no"


def _yes_no_prompt(a, colour, shape, cell):
    return L.obj(colour, shape, cell) if a == "yes" else L.no_obj(colour, shape, cell)


def _cell(position: str) -> int:
    return POSITIONS.index(position)


def _an(word: str) -> str:
    return L.article(word)


TEMPLATES: tuple[Template, ...] = (
    Template("color_of_shape", "color", ("shape",),
             lambda s: f"What color is the {s}?",
             lambda sc, s: getattr(_unique(sc, shape=s), "colour", None),
             lambda a, s: L.obj(a, s), COLOUR_NAMES),
    Template("color_at", "color", ("cell",),
             lambda p: f"What color is the shape {L.pos_phrase(p)}?",
             lambda sc, p: _attr_at(sc, p, "colour"),
             lambda a, p: L.obj(a, None, p), COLOUR_NAMES),
    Template("shape_of_color", "shape", ("colour",),
             lambda c: f"What shape is the {c} object?",
             lambda sc, c: getattr(_unique(sc, colour=c), "shape", None),
             lambda a, c: L.obj(c, a), SHAPES),
    Template("shape_at", "shape", ("cell",),
             lambda p: f"What shape is {L.pos_phrase(p)}?",
             lambda sc, p: _attr_at(sc, p, "shape"),
             lambda a, p: L.obj(None, a, p), SHAPES),
    Template("count_color", "count", ("colour",),
             lambda c: f"How many {c} shapes can you see?",
             lambda sc, c: str(sc.count(colour=c)),
             lambda a, c: L.count(int(a), colour=c), COUNT_ANSWERS),
    Template("count_shape", "count", ("shape",),
             lambda s: f"How many {L.PLURAL[s]} can you see?",
             lambda sc, s: str(sc.count(shape=s)),
             lambda a, s: L.count(int(a), shape=s), COUNT_ANSWERS),
    Template("where_color_shape", "where", ("colour", "shape"),
             lambda c, s: f"Where is the {c} {s}?",
             lambda sc, c, s: _where(sc, c, s),
             lambda a, c, s: L.obj(c, s, _cell(a)), POSITIONS),
    Template("where_color", "where", ("colour",),
             lambda c: f"Where is the {c} shape?",
             lambda sc, c: _where(sc, colour=c),
             lambda a, c: L.obj(c, None, _cell(a)), POSITIONS),
    Template("where_shape", "where", ("shape",),
             lambda s: f"Where is the {s}?",
             lambda sc, s: _where(sc, shape=s),
             lambda a, s: L.obj(None, s, _cell(a)), POSITIONS),
    Template("is_there_color_shape_at", "yes/no", ("colour", "shape", "cell"),
             lambda c, s, p: f"Is there {_an(c)} {c} {s} {L.pos_phrase(p)}?",
             lambda sc, c, s, p: _is_there(sc, c, s, p),
             lambda a, c, s, p: _yes_no_prompt(a, c, s, p), YES_NO),
    Template("is_there_color_at", "yes/no", ("colour", "cell"),
             lambda c, p: f"Is there {_an(c)} {c} shape {L.pos_phrase(p)}?",
             lambda sc, c, p: _is_there(sc, c, None, p),
             lambda a, c, p: _yes_no_prompt(a, c, None, p), YES_NO),
    Template("is_there_shape_at", "yes/no", ("shape", "cell"),
             lambda s, p: f"Is there {_an(s)} {s} {L.pos_phrase(p)}?",
             lambda sc, s, p: _is_there(sc, None, s, p),
             lambda a, s, p: _yes_no_prompt(a, None, s, p), YES_NO),
)


class QuestionIndex:
    """question text -> (template, params): every question the world can ask, for parsing official files back."""

    @cached_property
    def by_text(self) -> dict[str, tuple[Template, tuple]]:
        out = {}
        for t in TEMPLATES:
            for p in t.all_params():
                out[t.text(p)] = (t, p)
        return out

    def parse(self, question: str) -> tuple[Template, tuple] | None:
        return self.by_text.get(question.strip())


QUESTIONS = QuestionIndex()


# ------------------------------------------------------------------------------------------------ SNLI-VE

LABELS = ("entailment", "neutral", "contradiction")


@dataclass(frozen=True)
class Hypothesis:
    name: str
    slots: tuple[str, ...]
    text_fn: Callable[..., str]
    label_fn: Callable[..., str]

    def all_params(self) -> list[tuple]:
        domains = {"colour": COLOUR_NAMES, "shape": SHAPES, "cell": CELLS, "k": (2, 3)}
        return list(product(*(domains[s] for s in self.slots)))

    def text(self, params: tuple) -> str:
        return self.text_fn(*params)

    def label(self, scene: Scene, params: tuple) -> str:
        return self.label_fn(scene, *params)


def _located_label(scene: Scene, colour, shape, cell) -> str:
    if cell == scene.occluder:
        return "neutral"  # the grey box hides that cell: the picture cannot tell
    o = scene.at(cell)
    ok = o is not None and (colour is None or o.colour == colour) and (shape is None or o.shape == shape)
    return "entailment" if ok else "contradiction"


def _empty_label(scene: Scene, cell) -> str:
    if cell == scene.occluder:
        return "neutral"
    return "entailment" if scene.at(cell) is None else "contradiction"


def _at_least_label(scene: Scene, k, colour=None, shape=None) -> str:
    v = scene.count(colour, shape)
    if v >= k:
        return "entailment"
    return "neutral" if v + 1 >= k else "contradiction"  # one more could hide under the grey box


_NUM = {2: "two", 3: "three"}
HYPOTHESES: tuple[Hypothesis, ...] = (
    Hypothesis("color_shape_at", ("colour", "shape", "cell"),
               lambda c, s, p: L.sentence(f"there is {L.obj(c, s, p)}"),
               lambda sc, c, s, p: _located_label(sc, c, s, p)),
    Hypothesis("color_at", ("colour", "cell"),
               lambda c, p: L.sentence(f"there is {L.obj(c, None, p)}"),
               lambda sc, c, p: _located_label(sc, c, None, p)),
    Hypothesis("shape_at", ("shape", "cell"),
               lambda s, p: L.sentence(f"there is {L.obj(None, s, p)}"),
               lambda sc, s, p: _located_label(sc, None, s, p)),
    Hypothesis("empty_at", ("cell",),
               lambda p: L.sentence(f"there is nothing {L.pos_phrase(p)}"),
               lambda sc, p: _empty_label(sc, p)),
    Hypothesis("at_least_color", ("k", "colour"),
               lambda k, c: L.sentence(f"there are at least {_NUM[k]} {c} shapes"),
               lambda sc, k, c: _at_least_label(sc, k, colour=c)),
    Hypothesis("at_least_shape", ("k", "shape"),
               lambda k, s: L.sentence(f"there are at least {_NUM[k]} {L.PLURAL[s]}"),
               lambda sc, k, s: _at_least_label(sc, k, shape=s)),
    Hypothesis("at_least", ("k",),
               lambda k: L.sentence(f"there are at least {_NUM[k]} shapes"),
               lambda sc, k: _at_least_label(sc, k)),
)


# ------------------------------------------------------------------------------------------------ balancing


class Balancer:
    """Greedy answer balancing per text: of the candidates a scene allows, ask the one whose answer is most
    under-represented *for its own text* (count - total/|answer space|), ties broken by the rng."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter] = defaultdict(Counter)

    def pick(self, cands: list[tuple[str, str, int, object]], rng: np.random.Generator):
        """``cands``: (text, answer, answer-space size, payload). Returns the chosen tuple."""
        scores = []
        for text, ans, n_ans, _ in cands:
            c = self.counts[text]
            scores.append(c[ans] - sum(c.values()) / n_ans)
        best = min(scores)
        idx = [k for k, s in enumerate(scores) if s <= best + 1e-9]
        choice = cands[idx[int(rng.integers(len(idx)))]]
        self.counts[choice[0]][choice[1]] += 1
        return choice


@dataclass(frozen=True)
class Question:
    template: Template
    params: tuple
    text: str
    answer: str

    @property
    def family(self) -> str:
        return self.template.family


def vqa_candidates(scene: Scene, family: str) -> list[tuple[str, str, int, object]]:
    out = []
    for t in TEMPLATES:
        if t.family != family:
            continue
        for p in t.all_params():
            a = t.answer(scene, p)
            if a is not None:
                out.append((t.text(p), a, len(t.answers), (t, p)))
    return out


def ask_vqa(scene: Scene, balancer: Balancer, rng: np.random.Generator,
            families: Iterable[str] = FAMILIES) -> list[Question]:
    out = []
    for fam in families:
        cands = vqa_candidates(scene, fam)
        if not cands:
            continue
        text, ans, _, (t, p) = balancer.pick(cands, rng)
        out.append(Question(t, p, text, ans))
    return out


@dataclass(frozen=True)
class Statement:
    form: Hypothesis
    params: tuple
    text: str
    label: str


def ask_snli(scene: Scene, balancer: Balancer, rng: np.random.Generator) -> list[Statement]:
    """One hypothesis per label (entailment, neutral, contradiction), like SNLI's three per caption."""
    by_label: dict[str, list] = {lab: [] for lab in LABELS}
    for h in HYPOTHESES:
        for p in h.all_params():
            lab = h.label(scene, p)
            by_label[lab].append((h.text(p), lab, len(LABELS), (h, p)))
    out = []
    for lab in LABELS:
        if by_label[lab]:
            text, _, _, (h, p) = balancer.pick(by_label[lab], rng)
            out.append(Statement(h, p, text, lab))
    return out
