"""Students: cross-modal models fine-tuned (and distilled) on a task. The interface is documented in :mod:`.base`.

``STUDENTS`` maps a registry name to a builder ``(name, task, num_classes, pretrained) -> Student``;
``STUDENT_FAMILIES`` maps the ``family`` written in a saved student's ``student.json`` to its class (for loading).
:func:`register_student` adds to both (a new student is one module that calls it; plugins: see
:mod:`mad_pipeline.plugins`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Student, StudentError, StudentOutput, TextInput, center_crop_box
from .vilt import VILT_CONFIGS, ViltStudent, build_vilt, read_student_json
from .weights import INITS, resolve_init

STUDENTS = dict.fromkeys(VILT_CONFIGS, build_vilt)  # every ViLT preset of vilt.py
STUDENT_FAMILIES = {"vilt": ViltStudent}


def register_student(names: tuple[str, ...], builder, family_class=None) -> None:
    """Make ``builder`` the student of each registry name in ``names``; ``family_class`` (with a ``family``
    attribute and a ``load`` classmethod) loads saved students of its family."""
    for name in names:
        STUDENTS[name] = builder
    if family_class is not None:
        STUDENT_FAMILIES[family_class.family] = family_class


def image_preprocess(student):
    """The student's picklable image preprocessing (for DataLoader workers), else its bound method."""
    return getattr(student, "image_preprocess", None) or student.preprocess_image


def build_student(name: str, task: str, num_classes: int, pretrained: str | Path | None = None) -> Student:
    """A new student. Random init is seeded by the caller (``torch.manual_seed``); ``pretrained`` is a local
    ``save_pretrained`` directory or a hub id of backbone weights."""
    from ..plugins import load_plugins

    load_plugins()
    if name not in STUDENTS:
        raise StudentError(f"unknown student {name!r}; expected one of {', '.join(STUDENTS)}")
    return STUDENTS[name](name, task, num_classes, pretrained)


def load_student(directory: str | Path, map_location: Any = "cpu") -> Student:
    """A student written by ``Student.save``, in eval mode."""
    family = read_student_json(Path(directory)).get("family")
    if family not in STUDENT_FAMILIES:
        raise StudentError(f"{directory}: unknown student family {family!r}")
    return STUDENT_FAMILIES[family].load(directory, map_location=map_location)


__all__ = ["INITS", "STUDENTS", "STUDENT_FAMILIES", "Student", "StudentError", "StudentOutput", "TextInput",
           "ViltStudent", "build_student", "center_crop_box", "image_preprocess", "load_student", "register_student",
           "resolve_init"]
