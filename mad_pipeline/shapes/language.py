"""The shapes world's phrases, shared by questions, hypotheses, training captions and zero-shot prompts.

One small grammar everywhere: an object is ``"a red circle"`` (or ``"a red shape"``, ``"a circle"``), a place is
one of nine position phrases (``"in the top left"``, ``"at the top"``, ``"on the left"``, ``"in the center"``...),
counts are words (``"no red shapes"``, ``"two circles"``), a negated located statement is
``"no red circle in the top left"``.
"""

from __future__ import annotations

from .world import POSITIONS

POS_PHRASE: dict[str, str] = {
    "top left": "in the top left", "top": "at the top", "top right": "in the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left", "bottom": "at the bottom", "bottom right": "in the bottom right",
}
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
NUMBER_WORDS = ("no", "one", "two", "three")
OCCLUDER = "grey box"


def pos_phrase(cell: int) -> str:
    return POS_PHRASE[POSITIONS[cell]]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun(colour: str | None, shape: str | None) -> str:
    """``red circle`` / ``red shape`` / ``circle``."""
    if colour and shape:
        return f"{colour} {shape}"
    if colour:
        return f"{colour} shape"
    if shape:
        return shape
    return "shape"


def obj(colour: str | None = None, shape: str | None = None, cell: int | None = None) -> str:
    """``a red circle``, ``an orange shape in the top left``, ``a cross on the right``."""
    n = noun(colour, shape)
    s = f"{article(n)} {n}"
    return s if cell is None else f"{s} {pos_phrase(cell)}"


def no_obj(colour: str | None = None, shape: str | None = None, cell: int | None = None) -> str:
    """The negation: ``no red circle in the top left``."""
    s = f"no {noun(colour, shape)}"
    return s if cell is None else f"{s} {pos_phrase(cell)}"


def count(n: int, colour: str | None = None, shape: str | None = None) -> str:
    """``no red shapes``, ``one circle``, ``three shapes``."""
    if shape:
        word = shape if n == 1 else PLURAL[shape]
        return f"{NUMBER_WORDS[n]} {colour + ' ' if colour else ''}{word}"
    return f"{NUMBER_WORDS[n]} {colour + ' ' if colour else ''}{'shape' if n == 1 else 'shapes'}"


def occluder(cell: int) -> str:
    return f"a {OCCLUDER} {pos_phrase(cell)}"


def join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."
