"""An image teacher's visual projection (open_clip's ``visual.proj``), read from its weight file without building
the model: the ``(D, E)`` matrix that maps the stored image tokens (after ``ln_post``) into the joint image-text
space, where ``tokens[0] @ proj`` is the pooled image embedding. Question-aware token selection ranks the patches
projected with it against the text embedding of each sample.

open_clip's ``VisionTransformer`` applies ``ln_post`` to every token (or, with ``final_ln_after_pool``, to the pooled
one; the stored tokens are normalised either way) and then ``pooled @ proj``; with an attentional pool the tokens
are not in the space the projection maps from, so such a teacher has no usable projection (None).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .digest import SAFETENSORS, _name, _torch_state_dict

PROJ_NAME = "visual.proj"


def _read_tensor(path: Path, name: str):
    if path.suffix == SAFETENSORS:
        import safetensors

        with safetensors.safe_open(str(path), framework="pt") as f:
            for k in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if _name(k) == name:
                    return f.get_tensor(k)
        return None
    return _torch_state_dict(path).get(name)


def visual_projection(teacher) -> np.ndarray | None:
    """``(D, E)`` float32 visual projection of ``teacher`` (a ``LazyTeacher``: its spec and weights), or None when it
    has none usable (a text-only teacher, an attentional pool, a randomly initialised local directory, no
    ``visual.proj`` in the file)."""
    spec = getattr(teacher, "spec", None)
    if spec is None or spec.family != "open_clip":
        return None
    from .openclip import resolve_source

    source = resolve_source(spec.name, spec.model, spec.pretrained, teacher.weights, getattr(teacher, "flag",
                                                                                              "--weights"))
    vision = source.model_cfg.get("vision_cfg") or {}
    if vision.get("attentional_pool") or not source.checkpoint:
        return None
    proj = _read_tensor(Path(source.checkpoint), PROJ_NAME)
    if proj is None or proj.dim() != 2:
        return None
    return proj.detach().float().numpy().copy()


__all__ = ["visual_projection"]
