"""The image teacher's joint image-text space, for selection policies that rank patches by the sample's text
(``question-aware``): the visual projection the image store holds (``visual_proj (D, E)``) and whether the text
store's pooled embeddings live in the same space (the text teacher is the image teacher's own text tower: the same
open_clip architecture and weights).

When they do not, the policy ranks as ``teacher-saliency`` does and :func:`joint_projection` says so in one line (a
log warning, once per process and reason): another text teacher (MiniLM, RoBERTa: another space), an image store
published before extraction wrote the projection, or no text store.
"""

from __future__ import annotations

import logging

import torch

from ..losses import SELECTION_POLICIES

log = logging.getLogger("mad_pipeline")
_said: set[str] = set()
VISUAL_PROJ = "visual_proj"


def _say(line: str) -> None:
    if line not in _said:
        _said.add(line)
        log.warning(line)


def same_clip(image_teacher: dict, text_teacher: dict) -> bool:
    """Whether two store manifests' teachers are one open_clip model's image and text towers."""
    keys = ("family", "arch", "weights_sha256")
    return (image_teacher.get("family") == "open_clip" and image_teacher.get("weights_sha256") != "random-init"
            and all(image_teacher.get(k) == text_teacher.get(k) for k in keys))


def joint_projection(mad, stores) -> torch.Tensor | None:
    """The ``(D, E)`` float32 projection a text-ranking image policy of ``mad`` (a ``MADConfig``) uses with these
    stores (a ``StorePaths``), or None (not needed, or unavailable: then one warning line says why and that the
    policy ranks as ``teacher-saliency``)."""
    policy = mad.select_v
    if not (mad.distill and mad.tokens_v and SELECTION_POLICIES[policy].text and stores.image is not None):
        return None
    from ..store.reader import open_store

    image = open_store(stores.image)
    fallback = f"{policy} selection ranks the patches as teacher-saliency does (against the image's CLS)"
    if stores.text is None:
        _say(f"{policy}: no text features (text store) to rank the patches against; {fallback}")
        return None
    text = open_store(stores.text)
    ti, tt = image.manifest.get("teacher") or {}, text.manifest.get("teacher") or {}
    if not same_clip(ti, tt):
        _say(f"{policy}: the text teacher {tt.get('name', '?')} is not the image teacher {ti.get('name', '?')}'s "
             f"own text tower (another embedding space); {fallback}")
        return None
    if VISUAL_PROJ not in image.array_names():
        _say(f"{policy}: image store {image.manifest.get('cache_key', '?')[:12]} predates the visual projection "
             f"(no {VISUAL_PROJ}; remove it from the cache and extract again to add it); {fallback}")
        return None
    proj = torch.from_numpy(image[VISUAL_PROJ][...].astype("float32"))
    width = (image.manifest.get("geometry") or {}).get("width")
    embed = (text.manifest.get("geometry") or {}).get("embed_dim")
    if proj.dim() != 2 or (width, embed) != tuple(proj.shape):
        _say(f"{policy}: image store {image.manifest.get('cache_key', '?')[:12]}'s {VISUAL_PROJ} has shape "
             f"{tuple(proj.shape)}, not (token width {width}, text embedding {embed}); {fallback}")
        return None
    return proj


__all__ = ["joint_projection", "same_clip"]
