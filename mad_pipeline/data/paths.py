"""Paths inside a data root: a manifest may never point outside it."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath


def safe_relpath(rel: str, root: Path) -> str:
    """Normalise ``rel`` (relative to ``root``) to a POSIX relative path; ValueError if it escapes the root."""
    if not isinstance(rel, str) or not rel.strip():
        raise ValueError("empty image path")
    if "\x00" in rel:
        raise ValueError("image path contains a NUL byte")
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or rel.startswith("~"):
        raise ValueError(f"image path {rel!r} is absolute; paths must be relative to the data root")
    parts: list[str] = []
    for part in p.parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise ValueError(f"image path {rel!r} escapes the data root")
            parts.pop()
        else:
            parts.append(part)
    if not parts:
        raise ValueError(f"image path {rel!r} is empty")
    norm = "/".join(parts)
    # symlinks inside the root that lead outside it escape too
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, norm))
    if os.path.commonpath([real_root, real]) != real_root:
        raise ValueError(f"image path {rel!r} escapes the data root (through a link)")
    return norm
