"""Which weights a student starts from: ``init = pretrained | scratch`` and the explicit ``pretrained`` override.

``pretrained`` (the default of the study's students) is the preset's own pretrained backbone:

- ``vilt-tiny``: ``shapes-vilt-tiny``, shipped with mad (``assets/students/shapes-vilt-tiny``), pretrained on the
  shapes world's image-caption pairs by ``mad student pretrain`` (ITM + MLM, no task labels, no teacher features);
- ``vilt-mini-l3``: ``shapes-vilt-mini-l3``, shipped the same way (``mad student pretrain --student vilt-mini-l3``);
- ``vilt-b32``: ``dandelin/vilt-b32-mlm`` from the Hugging Face hub (ViLT's released pretraining checkpoint).

``scratch``: the preset's config at random initialisation (seeded). An explicit ``pretrained`` directory or hub id
always wins over ``init``.

In a ``mad run`` config, ``init: student-pretrain`` (:data:`PRETRAIN_STAGE`) starts the students from the output of
the config's own ``student-pretrain`` stage (its settings under ``student_pretrain:``); the plan resolves it to that
stage's weights directory.
"""

from __future__ import annotations

from pathlib import Path

from .base import StudentError

INITS = ("pretrained", "scratch")
PRETRAIN_STAGE = "student-pretrain"  # mad run's init: the config's own student-pretrain stage
RUN_INITS = (*INITS, PRETRAIN_STAGE)  # the inits a mad run config may name (its own, or a method's)
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "assets" / "students"
PRESET_WEIGHTS: dict[str, str | Path] = {
    "vilt-tiny": SHIPPED_DIR / "shapes-vilt-tiny",
    "vilt-mini-l3": SHIPPED_DIR / "shapes-vilt-mini-l3",
    "vilt-b32": "dandelin/vilt-b32-mlm",
}


def resolve_init(student: str, init: str, pretrained: str | Path | None = None) -> str | None:
    """The ``pretrained`` argument of :func:`~mad_pipeline.students.build_student`: ``pretrained`` if given, else
    the preset's weights for ``init="pretrained"``, else None (random initialisation)."""
    if init not in INITS:
        raise StudentError(f"--init {init!r}: expected one of {', '.join(INITS)}")
    if pretrained:
        return str(pretrained)
    if init == "scratch":
        return None
    if student not in PRESET_WEIGHTS:
        raise StudentError(f"--init pretrained: student {student!r} has no pretrained weights of its own; pass "
                           "--pretrained DIR|HUB_ID or --init scratch")
    weights = PRESET_WEIGHTS[student]
    if isinstance(weights, Path) and not (weights / "model.safetensors").exists():
        raise StudentError(f"--init pretrained: {weights} is missing (build it with `mad student pretrain --out "
                           f"{weights}`), or pass --init scratch")
    return str(weights)


__all__ = ["INITS", "PRESET_WEIGHTS", "PRETRAIN_STAGE", "RUN_INITS", "SHIPPED_DIR", "resolve_init"]
