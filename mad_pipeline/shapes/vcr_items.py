"""VCR multiple-choice items about a scene: a question, four answers (Q->A) and four rationales (QA->R), in the
release's token format (words and lists of object indices: ``[i]`` refers to ``objects[i]``).

Two kinds: where one object is compared to another (the rationales state both cells; only the true pair matches
the picture), and what colour an object is (the rationales state its colour, shape and cell).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import language as L
from .items import CELLS
from .world import COLOUR_NAMES, GRID, Scene


def _relation(a: int, b: int) -> str:
    """Where cell ``a`` is compared to cell ``b``: 'above', 'to the left of', 'below and to the right of'..."""
    ra, ca = divmod(a, GRID)
    rb, cb = divmod(b, GRID)
    vert = "above" if ra < rb else "below" if ra > rb else ""
    horiz = "to the left of" if ca < cb else "to the right of" if ca > cb else ""
    return " and ".join(x for x in (vert, horiz) if x)


RELATIONS = ("above", "below", "to the left of", "to the right of", "above and to the left of",
             "above and to the right of", "below and to the left of", "below and to the right of")


@dataclass(frozen=True)
class VCRItem:
    question: list
    answer_choices: list[list]
    answer_label: int
    rationale_choices: list[list]
    rationale_label: int
    answer_match_iter: list[int]
    rationale_match_iter: list[int]
    kind: str


def _words(text: str) -> list[str]:
    return text.split()


def _shuffle(correct: list, wrong: list[list], rng: np.random.Generator) -> tuple[list[list], int, list[int]]:
    items = [correct] + wrong
    order = [int(i) for i in rng.permutation(len(items))]
    choices = [items[i] for i in order]
    return choices, order.index(0), order  # match_iter: 0 = ground truth, 1..3 = distractor order


def make_vcr(scene: Scene, rng: np.random.Generator) -> VCRItem:
    """One four-way item (Q->A, then QA->R) about the scene's objects; ``[i]`` refers to ``objects[i]``."""
    objs = scene.objects
    if len(objs) >= 2 and rng.random() < 0.5:
        i, j = (int(x) for x in rng.choice(len(objs), size=2, replace=False))
        a, b = objs[i].cell, objs[j].cell
        rel = _relation(a, b)
        question = ["Where", "is", [i], "compared", "to", [j], "?"]
        wrong_rels = [r for r in RELATIONS if r != rel]
        picks = rng.choice(len(wrong_rels), size=3, replace=False)
        answers = [[[i], "is", *_words(r), [j], "."] for r in [rel] + [wrong_rels[int(k)] for k in picks]]
        # rationales all support the right answer; only the true cell pair matches the picture
        pairs = [(x, y) for x in CELLS for y in CELLS if x != y and _relation(x, y) == rel and (x, y) != (a, b)]
        picks = rng.choice(len(pairs), size=3, replace=False)

        def why(x, y):
            return [[i], "is", *_words(L.pos_phrase(x)), "and", [j], "is", *_words(L.pos_phrase(y)), "."]

        rationales = [why(a, b)] + [why(*pairs[int(k)]) for k in picks]
        kind = "relation"
    else:
        i = int(rng.integers(len(objs)))
        o = objs[i]
        question = ["What", "color", "is", [i], "?"]
        others = [c for c in COLOUR_NAMES if c != o.colour]
        picks = rng.choice(len(others), size=3, replace=False)
        answers = [[[i], "is", c, "."] for c in [o.colour] + [others[int(k)] for k in picks]]
        cells = [c for c in CELLS if c != o.cell]
        picks = rng.choice(len(cells), size=3, replace=False)

        def why(cell):
            return [[i], "is", "the", o.colour, o.shape, *_words(L.pos_phrase(cell)), "."]

        rationales = [why(o.cell)] + [why(cells[int(k)]) for k in picks]
        kind = "color"
    a_choices, a_label, a_iter = _shuffle(answers[0], answers[1:], rng)
    r_choices, r_label, r_iter = _shuffle(rationales[0], rationales[1:], rng)
    return VCRItem(question, a_choices, a_label, r_choices, r_label, a_iter, r_iter, kind)


def render_orig(tokens: list) -> str:
    """VCR's ``*_orig`` strings: object tags as their numbers ("Where is 0 compared to 1?")."""
    out = ""
    for tok in tokens:
        piece = " and ".join(str(i) for i in tok) if isinstance(tok, list) else tok
        if out and piece not in (".", ",", "?", "!"):
            out += " "
        out += piece
    return out
