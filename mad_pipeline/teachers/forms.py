"""Teachers named by their library rather than by a registry alias.

- ``open_clip:MODEL/PRETRAINED``: any pair ``open_clip.list_pretrained()`` knows (LAION, DataComp, DFN, MetaCLIP,
  OpenAI ... weights) whose image tower is open_clip's own ViT and text tower its own transformer;
  ``open_clip:MODEL`` (no tag) with ``--weights`` for a local checkpoint of any model config open_clip knows.
- ``hf:REPO``: a transformers text encoder, by hub id (``hf:FacebookAI/roberta-base``) or ``save_pretrained``
  directory (``hf:/models/my-encoder``).

A form resolves to the fields of the same ``TeacherSpec`` a registry entry has, so identity and cache keys follow
the same rules: the name typed is never part of a key, and the registry's aliases are short names for forms
(``clip-vit-b32`` and ``open_clip:ViT-B-32/openai`` with the same weights give one key: the tag's QuickGELU and
preprocessing are applied, see :func:`.openclip.resolve_source`).
"""

from __future__ import annotations

import difflib
from pathlib import Path

from ..errors import TeacherError

OPEN_CLIP = "open_clip:"
HF = "hf:"
FORMS = (OPEN_CLIP, HF)
LIST_PAIRS = "python -c 'import open_clip; print(open_clip.list_pretrained())' lists every MODEL/PRETRAINED pair"


def is_form(name: str) -> bool:
    return name.startswith(FORMS)


def form_fields(name: str) -> dict:
    """The TeacherSpec fields of ``open_clip:...`` / ``hf:...``; one line when the model or tag is unknown."""
    if name.startswith(OPEN_CLIP):
        return _open_clip_fields(name)
    return _hf_fields(name)


def _open_clip_fields(name: str) -> dict:
    import open_clip

    model, _, tag = name[len(OPEN_CLIP) :].partition("/")
    if not model:
        raise TeacherError(f"teacher {name!r}: expected open_clip:MODEL/PRETRAINED (e.g. open_clip:ViT-B-32/openai); "
                           f"{LIST_PAIRS}")
    if open_clip.get_model_config(model) is None:
        close = difflib.get_close_matches(model, open_clip.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise TeacherError(f"teacher {name}: open_clip has no model {model!r}{hint}; {LIST_PAIRS}")
    if tag and not open_clip.get_pretrained_cfg(model, tag):
        tags = open_clip.list_pretrained_tags_by_model(model)
        known = f"its tags: {', '.join(tags)}" if tags else "it has no pretrained tags (use open_clip:MODEL --weights)"
        raise TeacherError(f"teacher {name}: open_clip has no pretrained tag {tag!r} for {model}; {known}")
    why = unsupported_reason(open_clip.get_model_config(model))
    if why:
        raise TeacherError(f"teacher {name}: {why}; mad reads token-level features from open_clip's own ViT image "
                           "tower and text transformer (the ViT-* configs: OpenAI, LAION, DataComp, DFN, MetaCLIP)")
    desc = f"open_clip {model}" + (f", {tag} weights" if tag else ", weights from --weights")
    return {"name": name, "family": "open_clip", "model": model, "pretrained": tag or None, "description": desc}


def unsupported_reason(cfg: dict) -> str | None:
    """Why mad cannot read tokens from this open_clip model config (None: it can)."""
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if vision.get("timm_model_name"):
        return f"its image tower is the timm model {vision['timm_model_name']}"
    if isinstance(vision.get("layers"), (list, tuple)):
        return "its image tower is a ResNet"
    if text.get("hf_model_name"):
        return f"its text tower is the transformers model {text['hf_model_name']}"
    if "multimodal_cfg" in cfg:
        return "it is a CoCa captioner"
    return None


def _hf_fields(name: str) -> dict:
    repo = name[len(HF) :]
    if not repo:
        raise TeacherError(f"teacher {name!r}: expected hf:REPO (a hub id such as hf:FacebookAI/roberta-base, or a "
                           "save_pretrained directory)")
    p = Path(repo).expanduser()
    looks_local = repo.startswith(("/", ".", "~")) or repo.count("/") > 1
    if p.is_dir() or looks_local:
        if not p.is_dir():
            raise TeacherError(f"teacher {name}: directory {repo} not found")
        if not (p / "config.json").is_file():
            raise TeacherError(f"teacher {name}: {repo} is not a transformers save_pretrained directory "
                               "(no config.json)")
        return {"name": name, "family": "transformers", "model": str(p.resolve()),
                "description": f"transformers text encoder from {repo}", "local_weights": "dir"}
    return {"name": name, "family": "transformers", "model": repo, "description": f"transformers text encoder {repo}"}
