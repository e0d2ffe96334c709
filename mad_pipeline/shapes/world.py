"""The shapes world: scenes of 1-3 coloured shapes on a 3x3 grid with one grey box, sampled per seed and rendered.

A scene is a 64x64 picture divided into a 3x3 grid of cells. One cell is covered by a striped grey box (the
*occluder*: whatever is under it cannot be seen, which is what makes "neutral" entailment hypotheses possible);
1-3 other cells each hold one shape (6 colours x 4 shapes). Everything is a pure function of
``(seed, split, index)``: the same arguments give the same scene and the same JPEG bytes.

Splits: ``train``, ``val``, ``test`` draw colour+shape pairs from the 20 pairs not in :data:`HELD_OUT_PAIRS`;
``shift`` (domain shift) scenes contain at least one held-out pair; ``pretrain`` (the teacher's training stream)
draws from all 24 pairs; ``student-pretrain`` (the student's image-caption pretraining stream, see
:mod:`.pairs`) draws, like the dataset splits, from the 20 pairs only, so the student never sees a ``shift`` pair
before it is tested on one.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
GRID = 3
CELL = IMAGE_SIZE / GRID
SUPERSAMPLE = 4  # drawn at 4x, then box-downsampled: anti-aliased edges, deterministic
JPEG_QUALITY = 95
JPEG_SUBSAMPLING = 0  # 4:4:4, keeps small coloured shapes crisp

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 210),
    "yellow": (235, 200, 20),
    "purple": (148, 52, 196),
    "orange": (250, 127, 14),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
# cell index = row * 3 + column
POSITIONS: tuple[str, ...] = ("top left", "top", "top right", "left", "center", "right",
                              "bottom left", "bottom", "bottom right")
OCCLUDER_RGB = (128, 128, 128)
OCCLUDER_STRIPE_RGB = (170, 170, 170)

# colour+shape pairs never seen in train/val/test, only in the `shift` split (one per shape)
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "triangle"), ("green", "cross"), ("blue", "circle"), ("yellow", "square"),
)
ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOUR_NAMES for s in SHAPES)
SPLITS: tuple[str, ...] = ("train", "val", "test", "shift")
SPLIT_CODES: dict[str, int] = {"train": 1, "val": 2, "test": 3, "shift": 4, "pretrain": 9, "student-pretrain": 10}
MAX_OBJECTS = 3
# scene "styles": with these probabilities all objects share a colour / a shape (so counts of 2-3 are common)
P_SAME_COLOUR = 0.2
P_SAME_SHAPE = 0.2


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    cell: int
    cx: float  # centre, in 64-px image coordinates
    cy: float
    size: float  # half extent in pixels
    rgb: tuple[int, int, int]

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    def box(self) -> tuple[float, float, float, float]:
        """Tight bounding box (x1, y1, x2, y2) in image pixels."""
        return _bbox(self.polygon())

    def polygon(self) -> list[tuple[float, float]]:
        return _polygon(self.shape, self.cx, self.cy, self.size)


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]  # ordered by cell
    occluder: int  # the cell covered by the grey box
    background: tuple[int, int, int]

    def at(self, cell: int) -> Obj | None:
        for o in self.objects:
            if o.cell == cell:
                return o
        return None

    def find(self, colour: str | None = None, shape: str | None = None) -> list[Obj]:
        return [o for o in self.objects
                if (colour is None or o.colour == colour) and (shape is None or o.shape == shape)]

    def count(self, colour: str | None = None, shape: str | None = None) -> int:
        return len(self.find(colour, shape))

    def pairs(self) -> set[tuple[str, str]]:
        return {(o.colour, o.shape) for o in self.objects}

    def to_json(self) -> dict:
        """Ground truth, for debugging and for the ``scenes/`` files the generator writes."""
        return {
            "objects": [{"colour": o.colour, "shape": o.shape, "position": o.position,
                         "box": [round(v, 2) for v in o.box()]} for o in self.objects],
            "occluder": POSITIONS[self.occluder],
        }


def allowed_pairs(split: str) -> tuple[tuple[str, str], ...]:
    if split in ("pretrain", "shift"):
        return ALL_PAIRS
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}")
    return tuple(p for p in ALL_PAIRS if p not in HELD_OUT_PAIRS)


def scene_rng(seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
    """The generator for one scene (stream 0) or for the items asked about it (streams 1+)."""
    return np.random.default_rng([int(seed), SPLIT_CODES[split], int(index), int(stream)])


def sample_scene(rng: np.random.Generator, split: str) -> Scene:
    pairs = allowed_pairs(split)
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    cells = [int(c) for c in rng.permutation(GRID * GRID)[: n + 1]]
    occluder, obj_cells = cells[0], sorted(cells[1:])
    style = float(rng.random())
    chosen: list[tuple[str, str]] = []
    if split == "shift":  # at least one held-out combination
        chosen.append(HELD_OUT_PAIRS[int(rng.integers(len(HELD_OUT_PAIRS)))])
    while len(chosen) < n:
        if chosen and style < P_SAME_COLOUR:
            cands = [p for p in pairs if p[0] == chosen[0][0]]
        elif chosen and style < P_SAME_COLOUR + P_SAME_SHAPE:
            cands = [p for p in pairs if p[1] == chosen[0][1]]
        else:
            cands = list(pairs)
        chosen.append(cands[int(rng.integers(len(cands)))])
    order = rng.permutation(n)  # which pair goes to which cell
    objects = []
    for k, cell in enumerate(obj_cells):
        colour, shape = chosen[int(order[k])]
        row, col = divmod(cell, GRID)
        size = float(rng.uniform(5.5, 8.0))
        cx = (col + 0.5) * CELL + float(rng.uniform(-1.5, 1.5))
        cy = (row + 0.5) * CELL + float(rng.uniform(-1.5, 1.5))
        base = np.array(COLOURS[colour])
        rgb = tuple(int(v) for v in np.clip(base + rng.integers(-12, 13, size=3), 0, 255))
        objects.append(Obj(colour, shape, cell, round(cx, 3), round(cy, 3), round(size, 3), rgb))
    bg = tuple(int(v) for v in np.clip(np.array([242, 242, 236]) + rng.integers(-8, 9, size=3), 0, 255))
    return Scene(tuple(objects), occluder, bg)


# ------------------------------------------------------------------------------------------------ rendering


def _polygon(shape: str, cx: float, cy: float, s: float) -> list[tuple[float, float]]:
    if shape == "circle":
        return [(cx + s * float(np.cos(t)), cy + s * float(np.sin(t)))
                for t in np.linspace(0, 2 * np.pi, 24, endpoint=False)]
    if shape == "square":
        h = 0.85 * s
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - s), (cx + 1.05 * s, cy + 0.85 * s), (cx - 1.05 * s, cy + 0.85 * s)]
    if shape == "cross":
        a, t = s, 0.36 * s
        return [(cx - t, cy - a), (cx + t, cy - a), (cx + t, cy - t), (cx + a, cy - t), (cx + a, cy + t),
                (cx + t, cy + t), (cx + t, cy + a), (cx - t, cy + a), (cx - t, cy + t), (cx - a, cy + t),
                (cx - a, cy - t), (cx - t, cy - t)]
    raise ValueError(shape)


def _bbox(poly: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    return (max(0.0, min(xs)), max(0.0, min(ys)), min(float(IMAGE_SIZE), max(xs)), min(float(IMAGE_SIZE), max(ys)))


def occluder_box(cell: int) -> tuple[float, float, float, float]:
    row, col = divmod(cell, GRID)
    return (col * CELL + 1.0, row * CELL + 1.0, (col + 1) * CELL - 1.0, (row + 1) * CELL - 1.0)


@lru_cache(maxsize=4)
def _stripes(w: int, h: int) -> Image.Image:
    tile = Image.new("RGB", (w, h), OCCLUDER_RGB)
    d = ImageDraw.Draw(tile)
    step = 6 * SUPERSAMPLE
    for k in range(-h, w + h, step):
        d.line([(k, 0), (k + h, h)], fill=OCCLUDER_STRIPE_RGB, width=2 * SUPERSAMPLE)
    return tile


def render(scene: Scene) -> Image.Image:
    """The scene as a 64x64 RGB image (drawn at 4x and box-filtered down)."""
    S = SUPERSAMPLE
    big = Image.new("RGB", (IMAGE_SIZE * S, IMAGE_SIZE * S), scene.background)
    x1, y1, x2, y2 = (round(v * S) for v in occluder_box(scene.occluder))
    big.paste(_stripes(x2 - x1, y2 - y1), (x1, y1))
    draw = ImageDraw.Draw(big)
    for o in scene.objects:
        draw.polygon([(x * S, y * S) for x, y in o.polygon()], fill=o.rgb)
    return big.reduce(S)


def encode_jpeg(image: Image.Image) -> bytes:
    """Baseline JPEG with fixed settings (no EXIF, no timestamps): the same image gives the same bytes."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING, optimize=False,
               progressive=False)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert("RGB"))


def cell_targets(scene: Scene) -> np.ndarray:
    """(9, 2) int64 per cell, in reading order: (shape id, or 4 empty, 5 the grey box; colour id, or 6 none)."""
    out = np.zeros((GRID * GRID, 2), np.int64)
    for c in range(GRID * GRID):
        o = scene.at(c)
        if o is not None:
            out[c] = (SHAPES.index(o.shape), COLOUR_NAMES.index(o.colour))
        else:
            out[c] = (5 if c == scene.occluder else 4, len(COLOUR_NAMES))
    return out


def make_scene(seed: int, split: str, index: int) -> Scene:
    """Scene ``index`` of ``split`` for ``seed``: the same on every machine, whatever the split's size."""
    return sample_scene(scene_rng(seed, split, index), split)
