"""Paths inside a data root: a path written in a manifest or an annotation file stays inside the root.

The confinement is of the path as written: no absolute path, no ``~``, no ``..`` that climbs above the root.
Symbolic links that the data root itself contains (``root/images -> /datasets/coco/train2014``, the usual way to
lay out COCO or VCR images) are the user's own layout and are followed. What identifies an image is its content
hash, never its path, so a linked layout and a copied one give the same store keys.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath


def safe_relpath(rel: str, root: Path | None = None) -> str:
    """Normalise ``rel`` (relative to the data root) to a POSIX relative path; ValueError if, as written, it is
    absolute or climbs out of the root. (``root`` is not read: links inside it are followed.)"""
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
    return "/".join(parts)
