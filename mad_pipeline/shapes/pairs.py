"""Image-caption pairs for the student's pretraining (``mad student pretrain``): scenes of the world's
``student-pretrain`` stream, their captions, and sampled non-matching captions for image-text matching.

Scenes come from the ``student-pretrain`` split: colour+shape pairs from the 20 pairs of ``train`` / ``val`` /
``test`` only, never a :data:`~.world.HELD_OUT_PAIRS` pair (those are the ``shift`` split's domain shift; the
teacher's ``pretrain`` stream has all 24 and stays as it is). A caption names every object and the grey box in a
random order (:func:`~.captions.scene_caption`). A *hard* negative is the caption of the same scene with one
attribute of one part changed (an object's colour, its shape or its place, or the grey box's place) so that it is
false for the scene; a changed colour or shape never makes a held-out pair either. An *easy* negative is the
caption of another scene.
"""

from __future__ import annotations

import numpy as np

from . import language as L
from .world import COLOUR_NAMES, GRID, HELD_OUT_PAIRS, SHAPES, Obj, Scene, make_scene

SPLIT = "student-pretrain"


def pool_scene(seed: int, index: int) -> Scene:
    """Scene ``index`` of the student's pretraining stream (indices past the training pool are held out)."""
    return make_scene(seed, SPLIT, index)


def _parts(scene: Scene) -> list[tuple[str | None, str | None, int]]:
    """The caption's parts: (colour, shape, cell) per object, (None, None, cell) for the grey box."""
    return [(o.colour, o.shape, o.cell) for o in scene.objects] + [(None, None, scene.occluder)]


def _render(parts: list[tuple[str | None, str | None, int]], order: np.ndarray) -> str:
    texts = [L.occluder(c) if col is None else L.obj(col, shp, c) for col, shp, c in parts]
    return L.join([texts[int(i)] for i in order])


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """The scene's caption, parts in a random order (the same draw as :func:`~.captions.scene_caption`)."""
    parts = _parts(scene)
    return _render(parts, rng.permutation(len(parts)))


def hard_negative(scene: Scene, rng: np.random.Generator) -> str:
    """The scene's caption with one attribute of one part changed so that it no longer describes the scene."""
    parts = _parts(scene)
    occupied = {o.cell for o in scene.objects} | {scene.occluder}
    free = [c for c in range(GRID * GRID) if c not in occupied]
    k = int(rng.integers(len(parts)))
    colour, shape, cell = parts[k]
    kinds = ["place"] if colour is None else ["colour", "shape", "place"]
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "place":
        # an object moved onto the grey box's cell (or the box onto an object's) is still false: the caption would
        # place two things in one cell
        cands = free + [c for c in occupied if c != cell]
        parts[k] = (colour, shape, cands[int(rng.integers(len(cands)))])
    elif kind == "colour":
        cands = [c for c in COLOUR_NAMES if c != colour and (c, shape) not in HELD_OUT_PAIRS]
        parts[k] = (cands[int(rng.integers(len(cands)))], shape, cell)
    else:
        cands = [s for s in SHAPES if s != shape and (colour, s) not in HELD_OUT_PAIRS]
        parts[k] = (colour, cands[int(rng.integers(len(cands)))], cell)
    return _render(parts, rng.permutation(len(parts)))


def caption_pairs(text: str) -> set[tuple[str, str]]:
    """The colour+shape pairs a caption names (for checks: none may be held out)."""
    words = text.replace(",", " ").split()
    return {(a, b) for a, b in zip(words, words[1:], strict=False) if a in COLOUR_NAMES and b in SHAPES}


def first_object_labels(scene: Scene) -> tuple[int, int, int]:
    """Probe labels: the first object's (in reading order) colour id and shape id, and the number of objects - 1."""
    first: Obj = scene.objects[0]
    return COLOUR_NAMES.index(first.colour), SHAPES.index(first.shape), len(scene.objects) - 1


__all__ = ["SPLIT", "caption", "caption_pairs", "first_object_labels", "hard_negative", "pool_scene"]
