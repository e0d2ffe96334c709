"""The image store's one constant array: ``visual_proj (D, E)``, the image teacher's visual projection (read from its
weight file, :func:`mad_pipeline.teachers.projection.visual_projection`), written beside the rows so that a reader
can map the stored tokens into the teacher's joint image-text space (question-aware token selection).

It is one float32 chunk with the store's codecs (Blosc/Zstd + crc32c), named in the manifest's ``constants`` (the
arrays without a row dimension) and recorded with the other chunk files, so ``mad store verify`` checks it like the
rest. It is determined by the teacher identity the key already holds, so the key does not change: a store
published before it existed has the same key and no ``visual_proj`` (readers say so and fall back).
"""

from __future__ import annotations

import numpy as np

VISUAL_PROJ = "visual_proj"
CONSTANT_DIMS = {VISUAL_PROJ: ("channel", "embed")}


def write_visual_proj(writer, teacher, geometry: dict | None = None) -> bool:
    """Write ``visual_proj`` into the store ``writer`` is building when ``teacher`` has a usable projection whose
    shape matches the store's geometry (``width``, ``embed_dim``). Returns whether it was written."""
    import zarr

    from ..store.layout import ArraySpec, codecs_for
    from ..teachers.projection import visual_projection

    proj = visual_projection(teacher)
    if proj is None:
        return False
    g = geometry or {}
    if (g.get("width"), g.get("embed_dim")) not in ((None, None), tuple(proj.shape)):
        return False
    spec = ArraySpec(VISUAL_PROJ, tuple(proj.shape), "float32", CONSTANT_DIMS[VISUAL_PROJ])
    group = zarr.open_group(str(writer.path), mode="r+")
    arr = group.create_array(VISUAL_PROJ, shape=proj.shape, chunks=proj.shape, dtype="float32",
                             compressors=codecs_for(spec), fill_value=0.0,
                             dimension_names=list(CONSTANT_DIMS[VISUAL_PROJ]), overwrite=True)
    arr[...] = np.ascontiguousarray(proj, np.float32)
    return True


def constants_manifest(writer) -> dict:
    """The manifest's ``constants`` entry for the constant arrays written into ``writer``'s store (none: empty)."""
    names = [n for n in CONSTANT_DIMS if (writer.path / n / "zarr.json").exists()]
    return {"constants": names} if names else {}


__all__ = ["CONSTANT_DIMS", "VISUAL_PROJ", "constants_manifest", "write_visual_proj"]
