"""Paths inside a data root: a path written in a manifest or an annotation file stays inside the root.

The confinement is of the path as written: no absolute path, no ``~``, no ``..`` that climbs above the root.
Symbolic links that the data root itself contains (``root/images -> /datasets/coco/train2014``, the usual way to
lay out COCO or VCR images) are the user's own layout and are followed. What identifies an image is its content
hash, never its path, so a linked layout and a copied one give the same store keys.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from ..errors import InputError

# a split name outside a dataset's official ones (the shapes world's ``shift``), named like them
CUSTOM_SPLIT = re.compile(r"[a-z][a-z0-9-]*")


# a relative POSIX path already in normal form: no backslash, NUL or empty part, not absolute, no leading ``~``
_NORMAL_PATH = re.compile(r"[^/\\\x00~][^/\\\x00]*(?:/[^/\\\x00]+)*")


def safe_relpath(rel: str, root: Path | None = None) -> str:
    """Normalise ``rel`` (relative to the data root) to a POSIX relative path; ValueError if, as written, it is
    absolute or climbs out of the root. (``root`` is not read: links inside it are followed.)"""
    if (isinstance(rel, str) and _NORMAL_PATH.fullmatch(rel) and not rel.isspace()
            and "/./" not in f"/{rel}/" and "/../" not in f"/{rel}/"):
        return rel  # the common case: what the normalisation below would return
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


def first_file(root: Path, dirs: tuple[str, ...], name: str) -> Path | None:
    """``root/<d>/name`` for the first of ``dirs`` (``""``: the root itself) where it is a file, else None."""
    for d in dirs:
        p = root / d / name if d else root / name
        if p.is_file():
            return p
    return None


def split_file(root: Path, split: str, *, pattern: str, splits: tuple[str, ...], dirs: tuple[str, ...],
               dataset: str, what: str | None = None) -> Path:
    """A dataset's one annotation file of ``split`` (``pattern.format(split=split)``, in the root or one of ``dirs``);
    a split not in ``splits`` (the shapes world's ``shift``) only when its file exists. The errors name the
    ``dataset`` ("VCR splits are ...") and the file, ``what`` ("VCR annotation file not found"; default: the
    dataset's name)."""
    root = Path(root)
    custom = split not in splits
    name = pattern.format(split=split) if not custom or CUSTOM_SPLIT.fullmatch(split) else ""
    if name and (found := first_file(root, dirs, name)):
        return found
    if custom:
        raise InputError(f"--split {split!r}: {dataset} splits are {', '.join(splits)} (or a custom NAME with "
                         f"its {pattern.format(split='NAME')})")
    raise InputError(f"{root / name}: {what or dataset} file not found (also looked in "
                     f"{', '.join(str(root / d) for d in dirs if d)})")
