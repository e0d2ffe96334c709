"""The image teacher's joint image-text space, for selection policies that rank patches by the sample's text
(``question-aware``): the visual projection the image store holds (``visual_proj (D, E)``) and whether the text
store's pooled embeddings live in the same space (the text teacher is the image teacher's own text tower: the same
open_clip architecture and weights).

When they do not, the policy ranks as ``teacher-saliency`` does and :func:`joint_space` says so in one line (a
log warning, once per process and reason): another text teacher (MiniLM, RoBERTa: another space), an image store
published before extraction wrote the projection, or no text store. When they do, one line says which features rank
the patches: the image store's dense joint-space features (``dense``, from ``mad extract --dense``: MaskCLIP's value
path, which localises) when it has them, else the stored tokens times ``visual_proj``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..losses import SELECTION_POLICIES
from ..store.layout import DENSE

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


@dataclass(frozen=True)
class JointSpace:
    """How a text-ranking image policy maps the patches into the text's space: ``dense`` (the image store's dense
    joint-space features, ``mad extract --dense``) or ``tokens @ proj`` (``proj (D, E)`` float32; None when the
    store has only the dense features)."""

    proj: torch.Tensor | None
    dense: bool


def joint_projection(mad, stores) -> torch.Tensor | None:
    """The ``(D, E)`` float32 projection a text-ranking image policy of ``mad`` (a ``MADConfig``) uses with these
    stores (a ``StorePaths``), or None (not needed, or unavailable: then one warning line says why and that the
    policy ranks as ``teacher-saliency``)."""
    space = joint_space(mad, stores)
    return None if space is None else space.proj


def joint_space(mad, stores) -> JointSpace | None:
    """The joint space a text-ranking image policy of ``mad`` uses with these stores, or None (not needed, or
    unavailable: one warning line says why). When it is available, one line says which features rank the patches:
    the store's dense joint-space features when it has them, else ``tokens @ visual_proj``."""
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
    key = image.manifest.get("cache_key", "?")[:12]
    width = (image.manifest.get("geometry") or {}).get("width")
    embed = (text.manifest.get("geometry") or {}).get("embed_dim")
    dense = DENSE in image.array_names() and image[DENSE].shape[-1] == embed
    proj = None
    if VISUAL_PROJ in image.array_names():
        proj = torch.from_numpy(image[VISUAL_PROJ][...].astype("float32"))
        if proj.dim() != 2 or (width, embed) != tuple(proj.shape):
            if not dense:
                _say(f"{policy}: image store {key}'s {VISUAL_PROJ} has shape {tuple(proj.shape)}, not (token width "
                     f"{width}, text embedding {embed}); {fallback}")
                return None
            proj = None
    elif not dense:
        _say(f"{policy}: image store {key} predates the visual projection (no {VISUAL_PROJ}; remove it from the "
             f"cache and extract again to add it); {fallback}")
        return None
    if dense:
        _say(f"{policy}: ranking the patches by image store {key}'s dense joint-space features ({DENSE}: MaskCLIP's "
             "value path of the last block)")
    else:
        _say(f"{policy}: ranking the patches by tokens @ {VISUAL_PROJ} (image store {key} has no dense "
             "joint-space features; mad extract --dense adds them)")
    return JointSpace(proj, dense)


__all__ = ["JointSpace", "joint_projection", "joint_space", "same_clip"]
