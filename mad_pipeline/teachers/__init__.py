"""Frozen teachers: a registry of names -> open_clip / transformers models, and their token-level forwards."""

from .base import ImageTeacher, TextBatch, TextTeacher
from .registry import (
    TeacherSpec,
    get_teacher_spec,
    list_teachers,
    load_teacher,
    register_open_clip_config,
    register_teacher,
)

__all__ = ["ImageTeacher", "TextBatch", "TextTeacher", "TeacherSpec", "get_teacher_spec", "list_teachers",
           "load_teacher", "register_open_clip_config", "register_teacher"]
