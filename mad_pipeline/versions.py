"""Library versions recorded in every manifest."""

from __future__ import annotations

import contextlib
import platform
from importlib import metadata

_PACKAGES = ("mad-pipeline", "torch", "open_clip_torch", "transformers", "zarr", "numcodecs", "numpy", "pillow")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[p] = metadata.version(p)
    return out
