"""Training texts for the ``shapes-clip`` teacher.

Two kinds of text:

- **Scene captions** (one per image, objects in random order, the grey box included): ``"a blue square on the
  right, a grey box in the center and a red circle in the top left"``. Used with the usual CLIP loss (InfoNCE over
  the batch); they are nearly unique per scene, so the batch holds few false negatives.
- **Statements** in *groups of hard negatives*: the same statement with one slot varied over all its values —
  colour (``"a red circle"`` vs ``"a blue circle"`` ...), shape, position (nine ``"a red circle <place>"``), count
  (``"no/one/two/three red shapes"``), presence (``"a red circle in the top left"`` vs ``"no red circle in the top
  left"``) and where the grey box is. Partial statements about one object teach colour, shape and location
  separately. For an image, a group counts only when exactly one of its statements is true; the caption-level loss
  is a softmax over the group. Every group is a :data:`~.items.TEMPLATES` question with its answers rendered as
  statements, so these are also the zero-shot prompts (:mod:`.zeroshot`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from . import language as L
from .items import FAMILIES, TEMPLATES
from .world import GRID, Scene

OCCLUDER_FAMILY = "occluder"
MAX_GROUP = 9


@dataclass(frozen=True)
class Group:
    family: str
    template: str  # a TEMPLATES name, or "occluder"
    params: tuple
    texts: tuple[str, ...]


class StatementBank:
    """All statements (unique texts) and all groups over them; labels per scene."""

    @cached_property
    def groups(self) -> list[Group]:
        out = []
        for t in TEMPLATES:
            for p in t.all_params():
                out.append(Group(t.family, t.name, p, tuple(t.prompts(p))))
        out.append(Group(OCCLUDER_FAMILY, "occluder", (), tuple(L.occluder(c) for c in range(GRID * GRID))))
        return out

    @cached_property
    def texts(self) -> list[str]:
        return list(dict.fromkeys(t for g in self.groups for t in g.texts))

    @cached_property
    def index(self) -> np.ndarray:
        """(n_groups, MAX_GROUP) statement indices, -1 padded."""
        pos = {t: i for i, t in enumerate(self.texts)}
        out = np.full((len(self.groups), MAX_GROUP), -1, np.int64)
        for g, grp in enumerate(self.groups):
            out[g, : len(grp.texts)] = [pos[t] for t in grp.texts]
        return out

    @cached_property
    def family_of_group(self) -> np.ndarray:
        fams = list(FAMILIES) + [OCCLUDER_FAMILY]
        return np.array([fams.index(g.family) for g in self.groups], np.int64)

    @cached_property
    def families(self) -> list[str]:
        return list(FAMILIES) + [OCCLUDER_FAMILY]

    def labels(self, scene: Scene) -> np.ndarray:
        """(n_groups,) index of the true statement per group, -1 where the group does not apply to the scene."""
        out = np.full(len(self.groups), -1, np.int64)
        by_name = {t.name: t for t in TEMPLATES}
        for g, grp in enumerate(self.groups):
            if grp.template == "occluder":
                out[g] = scene.occluder
                continue
            t = by_name[grp.template]
            a = t.answer(scene, grp.params)
            if a is not None:
                out[g] = t.answers.index(a)
        return out


BANK = StatementBank()


def scene_caption(scene: Scene, rng: np.random.Generator, with_occluder: bool = True) -> str:
    """All visible objects (and the grey box) in random order: ``"a red circle in the top left, ..."``."""
    parts = [L.obj(o.colour, o.shape, o.cell) for o in scene.objects]
    if with_occluder:
        parts.append(L.occluder(scene.occluder))
    order = rng.permutation(len(parts))
    return L.join([parts[int(i)] for i in order])
